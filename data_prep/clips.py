"""Cutting a shot into consecutive clips of one model section at the target fps and resolution.

A clip is `clip_frames` = 4k+1 frames (33 for 9 latent frames with the 4× temporal VAE). Frames are
resampled to the target fps by nearest source frame on the timeline, resized to cover the bucket
and centre-cropped. A shot yields floor(frames at target fps / clip_frames) clips; the remainder at
the end is dropped so every clip is a full section.
"""

from __future__ import annotations

import numpy as np


def resample_indices(start: int, end: int, src_fps: float, target_fps: float) -> np.ndarray:
    """Source frame indices in [start, end) on a `target_fps` grid starting at `start`."""
    if target_fps <= 0 or target_fps >= src_fps:
        return np.arange(start, end)
    step = src_fps / target_fps
    count = int(np.floor((end - start - 1) / step + 1e-9)) + 1 if end > start else 0
    return start + np.floor(np.arange(count) * step + 1e-9).astype(np.int64)


def plan_clips(start: int, end: int, src_fps: float, target_fps: float, clip_frames: int) -> list[np.ndarray]:
    """Source indices of each clip of the shot [start, end), chronological."""
    idx = resample_indices(start, end, src_fps, target_fps)
    return [idx[k * clip_frames: (k + 1) * clip_frames] for k in range(len(idx) // clip_frames)]

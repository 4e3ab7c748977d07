"""A shot → the frames of its training video on the one clock, and their resolution bucket.

FramePack-F1's latent contract (mempack.presets): a training video is one causal VAE stream of
1 + 36·n frames at 30 fps, the first frame alone as the start latent and n sections of 36 frames
(9 latents) after it. A shot is resampled to 30 fps on its own timeline (the nearest source frame to
each 1/30-s tick, so a 60-fps source drops every other frame and a 24-fps one repeats every
fourth: a second of training video is a second of the world, as it is in generation), then trimmed to
the most whole sections it holds: a shot spanning 1.2 s (37 frames at 30 fps) is one section. The
remainder at the end is dropped. Frames keep their aspect ratio: they are resized to cover the bucket
nearest the source's shape and cropped to it (mempack.presets.nearest_bucket).
"""

from __future__ import annotations

import numpy as np

from mempack.presets import SECTION_LATENT_FRAMES, VAE_TEMPORAL, frames_for_sections, get_preset, whole_sections


def resample_indices(start: int, end: int, src_fps: float, target_fps: float) -> np.ndarray:
    """Source frame indices in [start, end) on a `target_fps` grid starting at `start` (up or down)."""
    if end <= start:
        return np.arange(0, dtype=np.int64)
    if target_fps <= 0 or target_fps == src_fps:
        return np.arange(start, end, dtype=np.int64)
    # tick k uses frame round(k·step); the last usable tick is the last one rounding inside the shot
    count = int(np.ceil((end - start - 0.5) * target_fps / src_fps - 1e-9))
    return start + source_offsets(count, src_fps, target_fps)


def source_offsets(count: int, src_fps: float, target_fps: float) -> np.ndarray:
    """Offsets, in source frames, of the first `count` ticks of a `target_fps` grid (the nearest frame).

    Nearest, not at-or-before: a 29.97-fps source then maps 1:1 for its first 16 s instead of repeating
    its very first frame.
    """
    if target_fps <= 0 or target_fps == src_fps:
        return np.arange(count, dtype=np.int64)
    return np.floor(np.arange(count) * (src_fps / target_fps) + 0.5).astype(np.int64)


def min_source_frames(src_fps: float, preset: str) -> int:
    """Fewest source frames that hold one section: 1.2 s between the first and the last frame."""
    clock = get_preset(preset)
    return 1 + int(np.floor(clock.section_frames * src_fps / clock.fps + 0.5))


def plan_stream(num_frames: int, src_fps: float, preset: str) -> np.ndarray:
    """Source indices (into a shot of `num_frames`) of its training video: 1 + 36·n frames, or none."""
    clock = get_preset(preset)
    idx = resample_indices(0, num_frames, src_fps, clock.fps)
    sections = whole_sections(len(idx), temporal=clock.vae_temporal)
    return idx[: frames_for_sections(sections, temporal=clock.vae_temporal)] if sections else idx[:0]


def section_starts(sections: int, temporal: int = VAE_TEMPORAL) -> list[int]:
    """Index, in the stream, of each section's first frame: 1, 37, 73, … (frame 0 is the start latent)."""
    return [1 + s * temporal * SECTION_LATENT_FRAMES for s in range(sections)]

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
from mempack.video_io import resample_indices, source_offsets  # noqa: F401 (the clock rule, shared with inference)


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

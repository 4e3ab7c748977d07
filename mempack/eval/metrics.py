"""`evaluate_video`: every evaluation metric of one video in a flat dict, ready for JSON and MLflow."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..video_io import read_video
from .consistency import consistency_to_first, vbench_consistency
from .drift import brightness, drift, sharpness
from .features import FeatureExtractor, PixelFeatures, check_frames
from .motion import flow_stats, motion_smoothness

log = logging.getLogger(__name__)


def load_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode a video, turning any decoder failure into one ValueError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        frames, fps = read_video(path)
    except Exception as err:  # decord/PyAV raise many unrelated error types for a bad file
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot decode video {path}: not a readable video ({reason})") from err
    if len(frames) == 0:
        raise ValueError(f"no decodable frames in {path}")
    return check_frames(frames), fps


def evaluate_video(
    video: str | os.PathLike | np.ndarray,
    fps: float | None = None,
    dino: FeatureExtractor | None = None,
    clip: FeatureExtractor | None = None,
    drift_fraction: float = 0.15,
) -> dict[str, float]:
    """All metrics of one video (a path or uint8 frames (T, H, W, 3)).

    Subject consistency uses `dino`, background consistency `clip`; either falls back to PixelFeatures.
    `fps` overrides the file's rate (and is 0.0, i.e. unknown, for raw frames without one).
    """
    if isinstance(video, np.ndarray):
        frames, file_fps = check_frames(video), 0.0
    else:
        frames, file_fps = load_frames(video)
    pixel: np.ndarray | None = None if (dino and clip) else PixelFeatures()(frames)
    subject = dino(frames) if dino is not None else pixel
    background = clip(frames) if clip is not None else pixel
    flow = flow_stats(frames, fps or file_fps or None)
    result = {
        "frames": float(len(frames)),
        "fps": float(fps if fps is not None else file_fps),
        "subject_consistency": vbench_consistency(subject),
        "background_consistency": vbench_consistency(background),
        "dynamic_degree": flow.dynamic_degree,
        "moving_pairs": flow.moving_pairs,
        "flow_magnitude": flow.flow_magnitude,
        "flow_top5": flow.flow_top5,
        "motion_smoothness": motion_smoothness(frames),
        "drift_subject_consistency": drift(consistency_to_first(subject), drift_fraction),
        "drift_background_consistency": drift(consistency_to_first(background), drift_fraction),
        "drift_brightness": drift(brightness(frames), drift_fraction),
        "drift_sharpness": drift(sharpness(frames), drift_fraction),
    }
    log.debug("evaluated %s frames: %s", len(frames), result)
    return result

"""Drift (paper eq. 8): how far a per-frame metric moves between the start and the end of a video.

Long-video generators degrade over time; comparing the first and last 15% of frames isolates that
slow degradation from per-frame quality.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .features import check_frames


def edge_count(n: int, fraction: float) -> int:
    """ceil(fraction * n) frames, at least 1 and at most n; tolerant of float error (0.15 * 20 → 3)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def drift(values: np.ndarray, fraction: float = 0.15) -> float:
    """|mean(M[first ceil(f*T)]) - mean(M[last ceil(f*T)])| for any per-frame metric M."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("drift of an empty series")
    k = edge_count(v.size, fraction)
    return float(abs(v[:k].mean() - v[-k:].mean()))


def brightness(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean pixel value / 255, in [0, 1]: catches exposure/colour drift."""
    frames = check_frames(frames)
    return frames.reshape(len(frames), -1).mean(axis=1) / 255.0


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Per-frame variance of the Laplacian of the grayscale frame scaled to [0, 1]: catches blur creep."""
    frames = check_frames(frames)
    out = []
    for f in frames:
        gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
        out.append(cv2.Laplacian(gray, cv2.CV_64F).var())
    return np.asarray(out)

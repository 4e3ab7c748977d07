"""Temporal consistency of per-frame features, computed the way VBench does.

VBench's subject/background consistency scores frame i >= 1 by the mean of its (clamped) cosine to the
first frame and to the previous frame, then averages over frames: it penalises both slow drift away
from the start and frame-to-frame flicker.
"""

from __future__ import annotations

import numpy as np


def vbench_consistency(features: np.ndarray) -> float:
    """mean_{i>=1} (max(0, cos(f_i, f_0)) + max(0, cos(f_i, f_{i-1}))) / 2; 1.0 for a single frame.

    `features` must be L2-normalised rows (T, D), so dot products are cosines.
    """
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 2:
        return 1.0
    to_first = np.maximum(0.0, f[1:] @ f[0])
    to_prev = np.maximum(0.0, np.sum(f[1:] * f[:-1], axis=1))
    return float(np.mean((to_first + to_prev) / 2.0))


def consistency_to_first(features: np.ndarray) -> np.ndarray:
    """Per-frame cosine to frame 0 (frame 0 scores 1): the per-frame series used for drift."""
    f = np.asarray(features, dtype=np.float64)
    return np.clip(f @ f[0], -1.0, 1.0)

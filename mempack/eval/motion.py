"""Weights-free motion metrics: dynamic degree from Farneback optical flow, and motion smoothness.

VBench uses RAFT and a frame-interpolation network; these are cheap OpenCV/numpy stand-ins with the
same sampling, thresholds and aggregation, so they run anywhere (CPU, no weights) and give exact
answers on synthetic videos. Dynamic degree is VBench's per-video verdict (0 or 1): its mean over a
set of videos is the percentage the paper's tables report; `moving_pairs` is the continuous signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .features import check_frames

MAX_SHORT_SIDE = 128
"""Flow is computed with the short side downscaled to at most this many pixels (speed; flow is smooth)."""
THRESHOLD_PX_AT_256 = 6.0
"""VBench's dynamic threshold: 6 px of top-5% flow at a 256-px short side, scaled linearly with it."""
TOP_FRACTION = 0.05


VBENCH_FLOW_FPS = 8.0
"""VBench measures flow between frames sampled at about 8 fps."""


@dataclass(frozen=True)
class FlowStats:
    """Flow summary of a video; magnitudes are in original-resolution pixels, divided by the frame diagonal."""

    flow_magnitude: float  # mean over pairs of (mean flow magnitude / frame diagonal)
    flow_top5: float  # mean over pairs of (mean of the top 5% magnitudes / frame diagonal)
    moving_pairs: float  # fraction of pairs whose top-5% mean exceeds dynamic_threshold(short side)
    dynamic_degree: float  # VBench's verdict for the video: 1.0 if >= round(4n/16) pairs move, else 0.0


def dynamic_threshold(short_side: int) -> float:
    """Top-5% flow magnitude (px) above which a frame pair counts as moving: 6 px * short_side / 256."""
    return THRESHOLD_PX_AT_256 * short_side / 256.0


def moving_pairs_needed(sampled_frames: int) -> int:
    """VBench: a video is dynamic when at least round(4 * n / 16) of its sampled pairs move (at least 1)."""
    return max(1, round(4 * sampled_frames / 16))


def flow_stride(fps: float | None) -> int:
    """Frame stride that samples a video at about VBENCH_FLOW_FPS (every frame when fps is unknown or low)."""
    return max(1, round(fps / VBENCH_FLOW_FPS)) if fps else 1


def _gray_small(frame: np.ndarray, scale: float) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        h, w = gray.shape
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return gray


def pair_flow_magnitude(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """Per-pixel Farneback flow magnitude a→b in original-resolution pixels; exactly 0 for identical frames."""
    ga, gb = _gray_small(a, scale), _gray_small(b, scale)
    if np.array_equal(ga, gb):
        return np.zeros(ga.shape, dtype=np.float64)
    flow = cv2.calcOpticalFlowFarneback(
        ga, gb, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
    )
    return np.linalg.norm(flow.astype(np.float64), axis=-1) / scale


def flow_stats(frames: np.ndarray, fps: float | None = None) -> FlowStats:
    """Flow magnitude and VBench's dynamic degree over consecutive sampled pairs; all 0 for < 2 frames.

    With `fps` the frames are first sampled at about 8 fps, as VBench does, so the verdict does not
    depend on the frame rate a video was written at.
    """
    frames = check_frames(frames)[:: flow_stride(fps)]
    if len(frames) < 2:
        return FlowStats(0.0, 0.0, 0.0, 0.0)
    h, w = frames.shape[1:3]
    short, diag = min(h, w), float(np.hypot(h, w))
    scale = min(1.0, MAX_SHORT_SIDE / short)
    means, tops = [], []
    for a, b in zip(frames[:-1], frames[1:], strict=True):
        mag = np.sort(pair_flow_magnitude(a, b, scale).ravel())
        k = max(1, int(np.ceil(TOP_FRACTION * mag.size)))
        means.append(float(mag.mean()))
        tops.append(float(mag[-k:].mean()))
    moving = np.asarray(tops) > dynamic_threshold(short)
    return FlowStats(
        flow_magnitude=float(np.mean(means)) / diag,
        flow_top5=float(np.mean(tops)) / diag,
        moving_pairs=float(moving.mean()),
        dynamic_degree=float(moving.sum() >= moving_pairs_needed(len(frames))),
    )


def motion_smoothness(frames: np.ndarray) -> float:
    """1 - mean_i mean|(x_{i-1} + x_{i+1})/2 - x_i| / 255 over the odd frames i; 1.0 for < 3 frames.

    As VBench: drop the odd frames, interpolate them back from their even neighbours, and score the
    error (VBench interpolates with a network; linear interpolation is its weights-free stand-in). It
    predicts a static or steadily fading video exactly, so jitter and flicker show up as error.
    """
    frames = check_frames(frames)
    if len(frames) < 3:
        return 1.0
    errors = []
    for i in range(1, len(frames) - 1, 2):
        pred = (frames[i - 1].astype(np.float64) + frames[i + 1]) / 2.0
        errors.append(np.mean(np.abs(pred - frames[i])) / 255.0)
    return float(1.0 - np.mean(errors))

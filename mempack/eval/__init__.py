"""Video evaluation: VBench-style consistency, motion metrics and start-to-end drift (paper eq. 8)."""

from .consistency import consistency_to_first, vbench_consistency
from .drift import brightness, drift, sharpness
from .features import ClipFeatures, DinoFeatures, FeatureExtractor, PixelFeatures, l2_normalize
from .metrics import evaluate_video, load_frames
from .motion import FlowStats, dynamic_threshold, flow_stats, motion_smoothness

__all__ = [
    "ClipFeatures",
    "DinoFeatures",
    "FeatureExtractor",
    "FlowStats",
    "PixelFeatures",
    "brightness",
    "consistency_to_first",
    "drift",
    "dynamic_threshold",
    "evaluate_video",
    "flow_stats",
    "l2_normalize",
    "load_frames",
    "motion_smoothness",
    "sharpness",
    "vbench_consistency",
]

"""Shot cuts with PySceneDetect's ContentDetector, run on frames already decoded in memory."""

from __future__ import annotations

import numpy as np


def detect_shots(frames: np.ndarray, fps: float, threshold: float = 27.0, min_shot_frames: int = 15) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots in uint8 RGB frames [T, H, W, 3].

    Frames go to the detector one by one (BGR, as its OpenCV backend would deliver them), so shot
    detection costs no decode of its own.
    """
    from scenedetect import ContentDetector, FrameTimecode

    detector = ContentDetector(threshold=threshold, min_scene_len=min_shot_frames)
    cuts: list[int] = []
    for i, frame in enumerate(frames):
        found = detector.process_frame(FrameTimecode(i, fps), np.ascontiguousarray(frame[..., ::-1]))
        cuts.extend(int(c.frame_num) if hasattr(c, "frame_num") else int(c) for c in found)
    if len(frames):
        end = detector.post_process(FrameTimecode(len(frames) - 1, fps)) if hasattr(detector, "post_process") else []
        cuts.extend(int(c.frame_num) if hasattr(c, "frame_num") else int(c) for c in (end or []))
    bounds = [0] + sorted(c for c in set(cuts) if 0 < c < len(frames)) + [len(frames)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

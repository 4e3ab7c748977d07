"""Shot cuts with PySceneDetect's ContentDetector, fed frames already decoded in memory.

`ShotSplitter` runs online: windows of decoded frames go in, finished shots come out, and only the
frames of the shot in progress are kept, so prep's memory is bounded by the longest shot and not by
the file. A shot longer than `max_shot_frames`, or whose frames pass `max_shot_bytes`, is closed there
and the next frames start a new one (a training video needs contiguous clips, not the whole of a
ten-minute take). The byte cap is what bounds memory: a frame cap alone grows with the source's fps
and resolution.

Frames reach the detector shrunk by the integer factor width // DETECT_WIDTH, as PySceneDetect's own
SceneManager does before detecting: hard cuts survive it and the detector costs a fraction of a decode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

DETECT_WIDTH = 256


@dataclass
class Shot:
    """One shot: its first frame's index in the decoded video and its frames [T, H, W, 3]."""

    start: int
    frames: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.frames)


class _ContentCuts:
    """ContentDetector over a frame sequence: frame indices where a new shot starts."""

    def __init__(self, fps: float, threshold: float, min_shot_frames: int):
        from scenedetect import ContentDetector

        self.fps = fps
        self.detector = ContentDetector(threshold=threshold, min_scene_len=min_shot_frames)
        self.seen = 0

    @staticmethod
    def _small_bgr(frame: np.ndarray) -> np.ndarray:
        """BGR (as its OpenCV backend delivers frames), shrunk by an integer factor as SceneManager does."""
        h, w = frame.shape[:2]
        factor = w // DETECT_WIDTH
        if factor > 1:
            frame = cv2.resize(frame, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)

    def push(self, frames: np.ndarray) -> list[int]:
        from scenedetect import FrameTimecode

        cuts = []
        for frame in frames:
            found = self.detector.process_frame(FrameTimecode(self.seen, self.fps), self._small_bgr(frame))
            cuts.extend(_frame_numbers(found))
            self.seen += 1
        return cuts

    def finish(self) -> list[int]:
        from scenedetect import FrameTimecode

        if not self.seen or not hasattr(self.detector, "post_process"):
            return []
        return _frame_numbers(self.detector.post_process(FrameTimecode(self.seen - 1, self.fps)) or [])


def _frame_numbers(timecodes) -> list[int]:
    return [int(c.frame_num) if hasattr(c, "frame_num") else int(c) for c in timecodes]


class ShotSplitter:
    """Online shot detection: `push` windows of frames, get back the shots that ended; then `finish`."""

    def __init__(
        self,
        fps: float,
        threshold: float = 27.0,
        min_shot_frames: int = 15,
        max_shot_frames: int | None = None,
        max_shot_bytes: int | None = None,
    ):
        self.cuts = _ContentCuts(fps, threshold, min_shot_frames)
        self.max_shot_frames = max_shot_frames
        self.max_shot_bytes = max_shot_bytes
        self.start = 0  # first frame of the shot in progress
        self.buffer: list[np.ndarray] = []  # its frames, as windows

    def _buffered(self) -> int:
        return sum(len(b) for b in self.buffer)

    def _close_at(self, end: int) -> Shot:
        """Close the shot in progress at frame `end` (exclusive); later frames stay buffered."""
        frames = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        shot, rest = Shot(self.start, frames[: end - self.start]), frames[end - self.start :]
        self.buffer = [rest] if len(rest) else []
        self.start = end
        return shot

    def _cap(self) -> int | None:
        """Frames a shot may hold: the frame cap and the byte cap (at this video's frame size)."""
        caps = [self.max_shot_frames] if self.max_shot_frames else []
        if self.max_shot_bytes and self.buffer:
            caps.append(max(1, self.max_shot_bytes // self.buffer[0][0].nbytes))
        return min(caps) if caps else None

    def _drain(self, cuts: list[int]) -> Iterator[Shot]:
        for cut in sorted(cuts):
            if cut > self.start:
                yield self._close_at(cut)
        cap = self._cap()
        while cap and self._buffered() >= cap:
            yield self._close_at(self.start + cap)

    def push(self, frames: np.ndarray) -> list[Shot]:
        """Add the next window of frames; returns the shots that are now complete, in order."""
        if len(frames):
            self.buffer.append(frames)
        return list(self._drain(self.cuts.push(frames)))

    def finish(self) -> list[Shot]:
        """The end of the video: every remaining shot, the last one included."""
        shots = list(self._drain(self.cuts.finish()))
        if self.buffer:
            shots.append(self._close_at(self.start + self._buffered()))
        return shots


def detect_shots(
    frames: np.ndarray,
    fps: float,
    threshold: float = 27.0,
    min_shot_frames: int = 15,
    max_shot_frames: int | None = None,
) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots in uint8 RGB frames [T, H, W, 3] (all in memory)."""
    splitter = ShotSplitter(fps, threshold, min_shot_frames, max_shot_frames)
    shots = splitter.push(frames) + splitter.finish()
    return [(s.start, s.end) for s in shots]

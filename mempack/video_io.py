"""Reading and writing video files: the one place that touches codecs outside data prep.

Writing uses a real h264 encoder (PyAV, libx264, yuv420p) so the mp4 plays everywhere; reading
uses decord (the project's decoder) with a PyAV fallback for files decord cannot open. The clock rule
prep trains with lives here too (`source_offsets`: the nearest source frame to each tick of the
model's 30 fps), so a video continued at inference plays at the speed prep would have given it.
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class Mp4Writer:
    """Encode uint8 frames [T, H, W, 3] to an h264 mp4 chunk by chunk, atomically (tmp file + rename).

    Frames go to the encoder as they arrive, so a minutes-long video never has to exist in memory;
    the file appears under its name only when `close()` succeeds (a failed or abandoned run leaves
    nothing half-written). Odd sizes are padded by one edge pixel (yuv420p needs even sides).
    Use as a context manager: an exception inside the block removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18):
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a finite number > 0, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, height: int, width: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._size = (height, width)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = stream

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames [T, H, W, 3] (T may be 0); every chunk must have the first chunk's size."""
        import av

        # contiguous: PyAV reads the rows of a strided view (e.g. a permuted tensor's .numpy()) wrongly
        frames = np.ascontiguousarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
        if len(frames) == 0:
            return
        if self._container is None:
            self._open(*frames.shape[1:3])
        if frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed from {self._size} to {frames.shape[1:3]}")
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.frames += len(frames)

    def close(self) -> Path:
        """Flush the encoder and move the file into place."""
        if self._container is None:
            raise ValueError("no frames to write")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop the partial file (idempotent)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-written container may fail; the file goes anyway
                log.debug("closing an aborted mp4 failed", exc_info=True)
            self._container = None
        self._tmp.unlink(missing_ok=True)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float, crf: int = 18) -> Path:
    """Encode uint8 frames [T, H, W, 3] to an h264 mp4 at `fps`, atomically (see `Mp4Writer`)."""
    frames = np.asarray(frames)
    if frames.ndim == 4 and len(frames) == 0:
        raise ValueError("no frames to write")
    with Mp4Writer(path, fps, crf) as writer:
        writer.write(frames)
    return Path(path)


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole (short) video to uint8 [T, H, W, 3] and its fps; decord first, PyAV fallback."""
    path = str(path)
    try:
        import decord

        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr) if max_frames is None else min(len(vr), max_frames)
        fps = float(vr.get_avg_fps())
        frames = vr.get_batch(list(range(n))).asnumpy()
        return frames, fps
    except Exception:  # decord raises its own DECORDError and RuntimeError
        log.debug("decord could not read %s; trying PyAV", path, exc_info=True)
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        out = []
        for frame in container.decode(stream):
            out.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(out) >= max_frames:
                break
    if not out:
        raise ValueError(f"no decodable frames in {path}")
    return np.stack(out), fps


def source_offsets(count: int, src_fps: float, target_fps: float) -> np.ndarray:
    """Offsets, in source frames, of the first `count` ticks of a `target_fps` grid (the nearest frame).

    Nearest, not at-or-before: a 29.97-fps source then maps 1:1 for its first 16 s instead of repeating
    its very first frame. Prep's clips (data_prep.clips) and inference's continued videos both use it.
    """
    if target_fps <= 0 or target_fps == src_fps:
        return np.arange(count, dtype=np.int64)
    return np.floor(np.arange(count) * (src_fps / target_fps) + 0.5).astype(np.int64)


def resample_indices(start: int, end: int, src_fps: float, target_fps: float) -> np.ndarray:
    """Source frame indices in [start, end) on a `target_fps` grid starting at `start` (up or down)."""
    if end <= start:
        return np.arange(0, dtype=np.int64)
    if target_fps <= 0 or target_fps == src_fps:
        return np.arange(start, end, dtype=np.int64)
    # tick k uses frame round(k·step); the last usable tick is the last one rounding inside the shot
    count = int(np.ceil((end - start - 0.5) * target_fps / src_fps - 1e-9))
    return start + source_offsets(count, src_fps, target_fps)


def on_clock(frames: np.ndarray, src_fps: float | None, fps: float) -> np.ndarray:
    """Frames recorded at `src_fps` → the frames of the same seconds at `fps` (prep's nearest-frame rule).

    A 60 fps clip keeps every other frame on the 30 fps clock, a 24 fps one repeats every fourth, so a
    second of the file is a second of the video. An unknown rate (None or 0) leaves the frames as they are.
    """
    if not src_fps or not math.isfinite(src_fps) or src_fps <= 0 or abs(src_fps - fps) < 1e-6:
        return frames
    return frames[resample_indices(0, len(frames), src_fps, fps)]

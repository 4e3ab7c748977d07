"""Decoding a video once, streamed and guarded: decord first (num_threads=1, contiguous windows, a
timeout per window and a retry), PyAV as the fallback for files decord cannot read.

`stream_frames` yields the video as windows of frames, so a caller holds only what it still needs
(prep keeps one shot at a time: memory is bounded by the longest shot, not by the file). The
decoder is chosen on the first window: a decoder that fails or hangs before it is replaced by the
next one. After the first window the stream is committed to its decoder, so a failure later on ends
the video there (logged) instead of starting over and duplicating what was already used.

decord is unmaintained: it can hang when the container reports more frames than it can decode
(its issue #373), so `len(vr)` is never trusted near the end — windows that fail past the last
decodable frame simply end the video. A hung decord call is abandoned after `timeout_s` (the thread
cannot be killed, but the job goes on).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


class DecodeError(Exception):
    """A file that no decoder can read; the message is the reject reason."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _decord_windows(path: str, window: int) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    import decord

    vr = decord.VideoReader(path, num_threads=1)
    fps, reported = float(vr.get_avg_fps()), len(vr)

    def windows() -> Iterator[np.ndarray]:
        for start in range(0, reported, window):
            try:
                yield vr.get_batch(list(range(start, min(start + window, reported)))).asnumpy()
            except Exception as err:  # noqa: BLE001 — past the last decodable frame: the video ends here
                log.warning("%s: decord stopped at frame %d (%s)", path, start, err)
                return

    return VideoInfo(reported, fps, 0, 0), windows()


def _pyav_windows(path: str, window: int) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    import av

    container = av.open(path)
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0)

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:  # a truncated or damaged stream: the video ends here
            log.warning("%s: PyAV stopped (%s)", path, err)
        finally:
            container.close()

    def windows() -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        for frame in frames():
            batch.append(frame)
            if len(batch) == window:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    return VideoInfo(int(stream.frames or 0), fps, stream.height, stream.width), windows()


_IMAGE_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
                b"MM\x00*": "TIFF"}


def sniff_not_video(path: str) -> str | None:
    """'PNG image' etc. when the file is a still image or plain text (ffmpeg would call an image a
    one-frame video, which hides the real problem); None when it may be a video."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            return f"{kind} image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP image"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text file"
    return None


def _call_with_timeout(fn: Callable, timeout_s: float):
    pool = cf.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _shrink(chunk: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale a window of frames so its longer side is at most `max_side` (bounds memory)."""
    import cv2

    h, w = chunk.shape[1:3]
    if not max_side or max(h, w) <= max_side:
        return chunk
    scale = max_side / max(h, w)
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in chunk])


def _check_file(path: str) -> None:
    """Reasons no decoder needs to be tried for: missing, empty, an image or text named like a video."""
    if not os.path.exists(path):
        raise DecodeError("missing_file: no such file")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty_file: 0 bytes")
    kind = sniff_not_video(path)
    if kind:
        raise DecodeError(f"not_a_video: {kind}")


def _trimmed(info: VideoInfo, windows: Iterator[np.ndarray], start_seconds: float | None,
             end_seconds: float | None, max_side: int | None) -> Iterator[np.ndarray]:
    """The windows cut to [start, end) seconds and downscaled; empty windows are skipped."""
    first = int(round((start_seconds or 0) * info.fps))
    last = int(round(end_seconds * info.fps)) if end_seconds is not None else None
    seen = 0
    for chunk in windows:
        lo, hi = max(first - seen, 0), len(chunk) if last is None else max(min(last - seen, len(chunk)), 0)
        seen += len(chunk)
        if hi > lo:
            yield _shrink(chunk[lo:hi], max_side)
        if last is not None and seen >= last:
            return


def _guarded(path: str, windows: Iterator[np.ndarray], timeout_s: float) -> Iterator[np.ndarray]:
    """Each window within `timeout_s`; a window that fails or hangs ends the video (logged)."""
    while True:
        try:
            chunk = _call_with_timeout(lambda: next(windows, None), timeout_s)
        except cf.TimeoutError:
            log.warning("%s: decoding timed out after %.0fs; the video ends here", path, timeout_s)
            return
        except Exception as err:  # noqa: BLE001 — decoders raise many kinds
            log.warning("%s: decoding stopped (%s: %s); the video ends here", path, type(err).__name__, err)
            return
        if chunk is None:
            return
        yield chunk


def stream_frames(path: str, start_seconds: float | None = None, end_seconds: float | None = None,
                  window: int = 64, timeout_s: float = 120.0, retries: int = 1,
                  max_side: int | None = 640) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """The frames of [start, end) as uint8 windows [t, H, W, 3] (longer side <= max_side), and the info.

    `info.num_frames` is what the container reports; the windows hold what really decodes.
    Raises DecodeError with a specific reason (missing_file, empty_file, not_a_video, unreadable,
    no_frames) when no decoder yields a first frame.
    """
    _check_file(path)
    errors = []
    for name, opener in [("decord", _decord_windows)] * (1 + retries) + [("pyav", _pyav_windows)]:
        def first_window():
            info, windows = opener(path, window)
            if not info.fps or info.fps <= 0:
                raise DecodeError("no frame rate")
            frames = _trimmed(info, windows, start_seconds, end_seconds, max_side)
            return info, frames, next(frames, None)

        try:
            info, frames, first = _call_with_timeout(first_window, timeout_s)
        except cf.TimeoutError:
            errors.append(f"{name}: timed out after {timeout_s:.0f}s")
            continue
        except Exception as err:  # noqa: BLE001 — decoders raise many kinds
            errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}")
            continue
        if first is None:
            errors.append(f"{name}: no decodable frames")
            continue
        info = VideoInfo(info.num_frames, info.fps, first.shape[1], first.shape[2])

        def chained(first=first, rest=_guarded(path, frames, timeout_s)) -> Iterator[np.ndarray]:
            yield first
            yield from rest

        return info, chained()
    if all("no decodable frames" in e for e in errors):
        raise DecodeError("no_frames: container holds no decodable video frames")
    raise DecodeError("unreadable: " + "; ".join(dict.fromkeys(errors)))


def decode_frames(path: str, start_seconds: float | None = None, end_seconds: float | None = None,
                  window: int = 64, timeout_s: float = 120.0, retries: int = 1,
                  max_side: int | None = 640) -> tuple[VideoInfo, np.ndarray]:
    """All frames of [start, end) as one uint8 array [T, H, W, 3] (for short videos, tests and benchmarks;
    prep itself streams with `stream_frames`). `info.num_frames` is the number of frames returned."""
    info, windows = stream_frames(path, start_seconds, end_seconds, window, timeout_s, retries, max_side)
    frames = np.concatenate(list(windows))
    return VideoInfo(len(frames), info.fps, info.height, info.width), frames

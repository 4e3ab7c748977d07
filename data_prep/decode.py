"""Decoding a video once, guarded: decord first (num_threads=1, contiguous windows, a timeout and a
retry), PyAV as the fallback for files decord cannot read.

decord is unmaintained: it can hang when the container reports more frames than it can decode
(its issue #373), so `len(vr)` is never trusted near the end — windows that fail past the last
decodable frame simply end the video. A hung decord call is abandoned after `timeout_s` (the thread
cannot be killed, but the job goes on) and the file is retried with PyAV.
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


def _decord_windows(path: str, first: int, last: int | None, window: int) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    import decord

    vr = decord.VideoReader(path, num_threads=1)
    fps = float(vr.get_avg_fps())
    reported = len(vr)
    h, w = vr[0].shape[:2] if reported else (0, 0)
    stop = reported if last is None else min(last, reported)

    def windows() -> Iterator[np.ndarray]:
        for start in range(first, stop, window):
            try:
                yield vr.get_batch(list(range(start, min(start + window, stop)))).asnumpy()
            except Exception as err:  # past the last decodable frame: the video ends here
                log.warning("%s: decord stopped at frame %d (%s)", path, start, err)
                return

    return VideoInfo(reported, fps, h, w), windows()


def _pyav_windows(path: str, first: int, last: int | None, window: int) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    import av

    container = av.open(path)
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    info = VideoInfo(int(stream.frames or 0), fps, stream.height, stream.width)

    def windows() -> Iterator[np.ndarray]:
        batch = []
        try:
            for i, frame in enumerate(container.decode(stream)):
                if last is not None and i >= last:
                    break
                if i >= first:
                    batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == window:
                    yield np.stack(batch)
                    batch = []
        except av.error.FFmpegError as err:
            log.warning("%s: PyAV stopped (%s)", path, err)
        finally:
            if batch:
                yield np.stack(batch)
            container.close()

    return info, windows()


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


def decode_frames(path: str, start_seconds: float | None = None, end_seconds: float | None = None,
                  window: int = 64, timeout_s: float = 120.0, retries: int = 1,
                  max_side: int | None = 640) -> tuple[VideoInfo, np.ndarray]:
    """All frames of [start, end) as uint8 [T, H, W, 3] (longer side ≤ max_side) and the video's info.

    This is the only decode of a file: shots, dynamism and clips all read these frames.

    Raises DecodeError with a specific reason (missing_file, empty_file, unreadable, no_frames).
    """
    if not os.path.exists(path):
        raise DecodeError("missing_file: no such file")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty_file: 0 bytes")
    kind = sniff_not_video(path)
    if kind:
        raise DecodeError(f"not_a_video: {kind}")
    errors = []
    for name, opener in [("decord", _decord_windows)] * (1 + retries) + [("pyav", _pyav_windows)]:
        def run():
            info, windows = opener(path, 0, None, window)
            first = int(round((start_seconds or 0) * info.fps)) if info.fps else 0
            last = int(round(end_seconds * info.fps)) if end_seconds is not None and info.fps else None
            chunks, seen = [], 0
            for chunk in windows:
                lo, hi = max(first - seen, 0), len(chunk) if last is None else max(min(last - seen, len(chunk)), 0)
                if hi > lo:
                    chunks.append(_shrink(chunk[lo:hi], max_side))
                seen += len(chunk)
                if last is not None and seen >= last:
                    break
            return info, chunks
        try:
            info, chunks = _call_with_timeout(run, timeout_s)
        except cf.TimeoutError:
            errors.append(f"{name}: timed out after {timeout_s:.0f}s")
            continue
        except Exception as err:
            errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}")
            continue
        if not chunks:
            errors.append(f"{name}: no decodable frames")
            continue
        frames = np.concatenate(chunks)
        if not info.fps or info.fps <= 0:
            errors.append(f"{name}: no frame rate")
            continue
        info = VideoInfo(len(frames), info.fps, frames.shape[1], frames.shape[2])
        return info, frames
    if all("no decodable frames" in e for e in errors):
        raise DecodeError("no_frames: container holds no decodable video frames")
    raise DecodeError("unreadable: " + "; ".join(dict.fromkeys(errors)))

"""Reading and writing video files: the one place that touches codecs outside data prep.

Writing uses a real h264 encoder (PyAV, libx264, yuv420p) so the mp4 plays everywhere; reading
uses decord (the project's decoder) with a PyAV fallback for files decord cannot open.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float, crf: int = 18) -> Path:
    """Encode uint8 frames [T, H, W, 3] to an h264 mp4 at `fps`, atomically (tmp file + rename).

    Odd sizes are padded by one edge pixel because yuv420p needs even width and height.
    """
    import av

    # contiguous: PyAV reads the rows of a strided view (e.g. a permuted tensor's .numpy()) wrongly
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("no frames to write")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
    except Exception as err:  # decord raises its own DECORDError and RuntimeError
        log.debug("decord could not read %s (%s); trying PyAV", path, err)
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

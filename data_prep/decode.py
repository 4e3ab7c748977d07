"""Decoding one video, bounded in time and memory: a separate decoder process that can be killed.

A decoder can hang (decord's issue #373, a network mount, a FIFO whose writer stalls) or crash inside
C code. A thread cannot be stopped, so every decode runs in a child process (`DecodeWorker`, one per
Python process, reused across inputs). The parent waits at most `timeout_s` for each message; a child
that stays silent longer is killed (SIGKILL) and replaced, and the input ends where it stopped:
rejected if nothing decoded, else kept as far as it decoded with a warning. A crashed child is the same.

What the child does (`_decode`): decord decodes, PyAV checks and takes over where decord is not right.
- PyAV reads the container header first (no decode), so an audio-only file, a NaN/absurd frame rate, an
  extreme aspect ratio or a window that starts past the end is a specific reject before any frame is
  decoded; it then decodes the first frame only, for its rotation metadata (PyAV has no stream-level
  getter for the display matrix): a multiple of 90 degrees, another angle is a reject;
- decord (the user's choice; `num_threads=1`) decodes a regular file whose frames lie on a constant grid
  at the stream's average rate (its index's timestamps within a quarter frame of start + i/fps): then
  frame i *is* grid time i and decoding by index is exact. It reads contiguous windows (seeking only to a
  window's first frame), scales in its ffmpeg filter graph and applies the rotation itself (0.6.0: frames
  identical to PyAV's for 90, 180 and 270 degrees). It never reads the last second of frames its index
  lists (`TAIL_SECONDS`): decord hangs when its count exceeds the decodable frames (its issue #373), so
  PyAV decodes that tail, seeking to it; decord failing mid-file hands over to PyAV the same way;
- PyAV decodes everything else: variable frame rates and broken timestamps (frames placed by their
  timestamps on a constant grid at the stream's average rate, nearest frame per grid time, so real time
  is kept: decord decodes by index only), a file decord cannot open, a FIFO or other non-regular file (it
  can be read once only), files too short to have more than a tail. It seeks to a window's start (to the
  keyframe before it), converts only the frames it emits, scales in swscale (so a 4K source never exists
  as full-size RGB) and applies rotation metadata; a resolution change mid-stream, timestamps that jump
  back or far ahead, a decode error or a stream that ends before the container's reported duration ends
  the video there with a warning;
- a file PyAV cannot open at all is given to decord alone (frames by index at its average rate).
Both give the same frames where both apply: bit-identical at the source size; when scaling down, decord's
filter and PyAV's area filter differ by about one grey level on average. `VideoInfo.decoder` says which
decoded ("decord": all but the tail PyAV adds; "pyav").
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_FPS = 240.0  # a container claiming more is broken (timebases of 90000 "fps" are common)
MIN_FPS = 1.0
MAX_ASPECT_RATIO = 3.0  # wider than 3:1 (or taller) cannot fill a training bucket without losing most of it
MAX_TIMESTAMP_GAP_S = 10.0  # a longer pause between two frames is a broken stream, not a slow frame rate
WINDOW_BYTES = 16 << 20  # frames travel from the decoder in messages of about this size
STARTUP_TIMEOUT_S = 120.0  # the decoder process's own start (imports), not counted against a file
TAIL_SECONDS = 1.0  # decord never decodes the last second of frames its index lists: PyAV does (decord's #373)
MIN_TAIL_FRAMES = 16  # at least this many (a decoder's reorder delay)
DECODERS = ("auto", "pyav")
CFR_TOLERANCE = 0.25  # frames within this fraction of a frame of start + i/fps count as a constant frame rate


class DecodeError(Exception):
    """A file no decoder can read (or that hung before a frame); the message is the reject reason."""


@dataclass
class VideoInfo:
    """What the container says (`num_frames`, `duration`) and what prep gets: `fps` (the grid rate of the
    emitted frames), `height` x `width` (after rotation and scaling), `rotation` applied (degrees)."""

    num_frames: int
    fps: float
    height: int
    width: int
    rotation: int = 0
    duration: float | None = None
    decoder: str = "pyav"


@dataclass
class DecodeRequest:
    path: str
    start_seconds: float | None = None
    end_seconds: float | None = None
    max_side: int | None = 640
    threads: int = 1
    window_bytes: int = WINDOW_BYTES
    max_aspect_ratio: float = MAX_ASPECT_RATIO
    decoder: str = "auto"  # "auto": decord where it is right, else PyAV (module docstring); "pyav": PyAV only


# ---------------------------------------------------------------------------------------------------
# The child: PyAV checks, decord decodes where it is right, PyAV elsewhere; messages are plain tuples
# ---------------------------------------------------------------------------------------------------

_IMAGE_MAGIC = {
    b"\x89PNG": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


class _Reject(Exception):
    """Raised in the child: the input is rejected with this reason."""


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


def _check_file(path: str) -> None:
    """Reasons no decoder needs to be tried for: missing, empty, an image or text named like a video.
    Runs in the child: opening a FIFO blocks until a writer appears, and that must be killable."""
    if not os.path.exists(path):
        raise _Reject("missing_file: no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise _Reject("empty_file: 0 bytes")
    kind = sniff_not_video(path) if os.path.isfile(path) else None  # a FIFO's bytes are the decoder's
    if kind:
        raise _Reject(f"not_a_video: {kind}")


def _frame_rate(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            value = float(rate)
            if math.isfinite(value) and value > 0:
                return value
    return None


def _output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Decoded (before rotation) width, height with the longer side at most `max_side`, even sides."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class _Batcher:
    """Collects emitted frames and sends them in messages of about `window_bytes`, or sooner when the
    oldest is `max_age_s` old (frames must be with the parent before a read that may hang: what a killed
    child still held is lost); the first message is preceded by `header()` (the info message)."""

    def __init__(self, send, window_bytes: int, header, max_age_s: float = 0.02):
        self.send, self.window_bytes, self.header, self.max_age_s = send, window_bytes, header, max_age_s
        self.frames, self.count, self.since = [], 0, 0.0

    def add(self, frame: np.ndarray) -> None:
        if not self.frames:
            self.since = time.monotonic()
        self.frames.append(frame)
        self.count += 1
        if len(self.frames) * frame.nbytes >= self.window_bytes or time.monotonic() - self.since >= self.max_age_s:
            self.flush()

    def flush(self) -> None:
        if self.frames:
            if self.header is not None:
                self.send(self.header())
                self.header = None
            self.send(("frames", np.stack(self.frames)))
            self.frames = []


def _open_pyav(path: str):
    import av

    try:
        return av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise _Reject(
            f"unreadable: pyav: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        ) from err


def _open_checked(req: DecodeRequest):
    """PyAV's container, after the header checks (no frame decoded): (container, stream, fps, duration, t0)."""
    container = _open_pyav(req.path)
    try:
        if not container.streams.video:
            audio = len(container.streams.audio)
            raise _Reject(
                f"no_video_stream: {audio} audio and 0 video streams"
                if audio
                else "no_video_stream: the container holds no video stream"
            )
        stream = container.streams.video[0]
        stream.codec_context.thread_count = max(1, req.threads)  # before the codec opens
        fps = _frame_rate(stream)
        if fps is None or not MIN_FPS <= fps <= MAX_FPS:
            raise _Reject(
                f"bad_frame_rate: {stream.average_rate} (average) / {stream.guessed_rate} (guessed); "
                f"expected {MIN_FPS:g}-{MAX_FPS:g} fps"
            )
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height and max(width, height) / min(width, height) > req.max_aspect_ratio:
            raise _Reject(f"extreme_aspect_ratio: {width}x{height} is wider than {req.max_aspect_ratio:g}:1")
        t0 = stream.start_time if stream.start_time is not None else 0
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration
            else (container.duration / 1e6 if container.duration else None)
        )
        start = float(req.start_seconds or 0.0)
        if duration is not None and start >= duration:
            raise _Reject(f"window_past_end: the window starts at {start:g} s, the file ends at {duration:.2f} s")
    except BaseException:
        container.close()
        raise
    return container, stream, fps, duration, t0


def _decode_pyav(req: DecodeRequest, send, batch: _Batcher | None = None) -> None:
    """PyAV decodes [start, end); `batch`: frames go on into a decode decord began (its header sent)."""
    container, stream, fps, duration, t0 = _open_checked(req)
    try:
        start = float(req.start_seconds or 0.0)
        end = float(req.end_seconds) if req.end_seconds is not None else math.inf
        frames = _seek(container, stream, start, fps, t0) if start > 0 else None
        if frames is None and start > 0:  # the container cannot seek there: decode from the beginning
            container.close()
            container = _open_pyav(req.path)
            stream = container.streams.video[0]
            stream.codec_context.thread_count = max(1, req.threads)
        _emit_on_grid(frames or container.decode(stream), stream, req, send, fps, start, end, duration, t0, batch)
    finally:
        container.close()


def _seek(container, stream, start: float, fps: float, t0: int):
    """Frames from the keyframe at or before `start`, or None when seeking fails or overshoots (some
    MPEG-TS files have no index to seek by)."""
    import av

    try:
        container.seek(int(start / stream.time_base) + t0, stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
        first = next(frames, None)
    except av.error.FFmpegError:
        return None
    if first is None or first.pts is None or float((first.pts - t0) * stream.time_base) > start + 0.5 / fps:
        return None
    return itertools.chain([first], frames)


def _emit_on_grid(frames, stream, req, send, fps, start, end, duration, t0, batch: _Batcher | None = None) -> None:
    """Decode and emit frames at grid times start + k/fps (< end): each grid time gets the decoded frame
    nearest to it, so variable frame rates keep real time and a seek's extra frames are skipped."""
    import av

    first_size, rotation, size = None, 0, None

    def header() -> tuple:
        width, height = size if rotation in (0, 180) else size[::-1]
        return "info", asdict(VideoInfo(int(stream.frames or 0), fps, height, width, rotation, duration, "pyav"))

    tb, batch = stream.time_base, batch or _Batcher(send, req.window_bytes, header)
    prev, prev_t, prev_array = None, None, None
    k, count, stop = 0, 0, None

    def grid(i: int) -> float:
        return start + i / fps

    def array(frame) -> np.ndarray:
        rgb = frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
        return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb

    def emit_until(limit: float) -> None:
        nonlocal k, prev_array
        while grid(k) < limit and grid(k) < end - 1e-9:
            if prev_array is None:
                prev_array = array(prev)
            batch.add(prev_array)
            k += 1

    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except av.error.FFmpegError as err:
            stop = f"truncated: decoding stopped at {prev_t or 0:.2f} s ({type(err).__name__}: {err})"
            break
        count += 1
        t = float((frame.pts - t0) * tb) if frame.pts is not None else (prev_t + 1 / fps if prev_t is not None else 0.0)
        if first_size is None:
            first_size = (frame.width, frame.height)
            rotation = int(round(frame.rotation or 0)) % 360
            if rotation % 90:
                raise _Reject(f"rotation: {rotation} degrees is not a multiple of 90")
            size = _output_size(frame.width, frame.height, req.max_side)
        elif (frame.width, frame.height) != first_size:
            stop = (
                f"resolution_change: {first_size[0]}x{first_size[1]} -> {frame.width}x{frame.height} "
                f"at decoded frame {count - 1}; the video ends there"
            )
            break
        if prev is not None and not -0.5 < t - prev_t < MAX_TIMESTAMP_GAP_S:
            stop = (
                f"broken_timestamps: {prev_t:.2f} s -> {t:.2f} s at decoded frame {count - 1}; "
                "the video ends there"
            )  # a reset would hide the rest, a huge gap repeat one frame for it
            break
        if prev is not None:
            emit_until((prev_t + t) / 2)  # grid times nearer to prev than to this frame
        prev, prev_t, prev_array = frame, t, None
        if t >= end:
            break
    if prev is not None:
        last = prev_t + (float(prev.duration * tb) if prev.duration else 1 / fps)
        emit_until((prev_t + last) / 2)
        if stop is None and duration is not None and req.end_seconds is None and duration - last > max(0.5, 2 / fps):
            stop = f"truncated: decoded {last:.2f} s of the {duration:.2f} s the container reports"
        if stop is None and req.end_seconds is not None and end - last > max(0.5, 2 / fps):
            stop = f"window_past_end: the window ends at {end:g} s, the video at {last:.2f} s"
    if batch.count == 0:
        if stop and stop.startswith("truncated"):
            raise _Reject(f"unreadable: {stop}")
        if count and start > 0:
            raise _Reject(f"window_past_end: no frame at or after {start:g} s")
        raise _Reject("no_frames: container holds no decodable video frames")
    batch.flush()
    if stop:
        send(("warning", stop))


def _decode_decord_only(req: DecodeRequest, send) -> None:
    """For a file PyAV cannot open: decord alone, frames by index at its average rate (no timestamps)."""
    import decord

    probe = decord.VideoReader(req.path, num_threads=1)
    fps, total = float(probe.get_avg_fps()), len(probe)
    h, w = probe[0].shape[:2]
    del probe
    if not math.isfinite(fps) or not MIN_FPS <= fps <= MAX_FPS:
        raise _Reject(f"bad_frame_rate: {fps} (decord average)")
    ow, oh = _output_size(w, h, req.max_side)
    vr = decord.VideoReader(req.path, num_threads=1, width=ow, height=oh)
    first = int(round((req.start_seconds or 0) * fps))
    last = min(total, int(round(req.end_seconds * fps)) if req.end_seconds is not None else total)
    per = max(1, req.window_bytes // (ow * oh * 3))
    sent = 0
    for lo in range(first, last, per):
        try:
            chunk = vr.get_batch(list(range(lo, min(lo + per, last)))).asnumpy()
        except Exception as err:  # noqa: BLE001 — past the last decodable frame (decord's #373)
            if not sent:
                raise _Reject(f"unreadable: decord: {err}") from None
            send(("warning", f"truncated: decord stopped at frame {lo} ({err})"))
            return
        if not sent:
            send(("info", asdict(VideoInfo(total, fps, oh, ow, 0, total / fps, "decord"))))
        send(("frames", chunk))
        sent += len(chunk)
    if not sent:
        raise _Reject("no_frames: decord decoded no frame in the window")


@dataclass
class _Probe:
    """PyAV's look at a file before decord decodes it: the header's rate and duration, the first frame's
    size (before rotation) and rotation (a multiple of 90 degrees)."""

    fps: float
    duration: float | None
    width: int
    height: int
    rotation: int


def _probe(req: DecodeRequest) -> _Probe | None:
    """Header checks (rejects, as PyAV's decode would make them), then the first frame's rotation and size;
    None when the first frame does not decode (PyAV's decode then says why)."""
    import av

    container, stream, fps, duration, _ = _open_checked(req)
    try:
        first = next(container.decode(stream), None)
    except av.error.FFmpegError:
        first = None
    finally:
        container.close()
    if first is None:
        return None
    rotation = int(round(first.rotation or 0)) % 360
    if rotation % 90:
        raise _Reject(f"rotation: {rotation} degrees is not a multiple of 90")
    return _Probe(fps, duration, first.width, first.height, rotation)


def _decode_decord(req: DecodeRequest, send, probe: _Probe) -> bool:
    """Decode with decord when the file lies on a constant frame grid (module docstring); False, having sent
    nothing, when decord cannot open it or its timestamps are not a constant grid at `probe.fps`."""
    import decord

    fps = probe.fps
    ow, oh = _output_size(probe.width, probe.height, req.max_side)
    if probe.rotation in (90, 270):  # decord applies the display matrix itself; it takes the size after it
        ow, oh = oh, ow
    try:
        vr = decord.VideoReader(req.path, num_threads=1, width=ow, height=oh)
        n = len(vr)
        ts = np.asarray(vr.get_frame_timestamp(list(range(n)))[:, 0], np.float64) if n else np.zeros(0)
    except Exception:  # noqa: BLE001 — decord raises its own kinds; PyAV decodes the file instead
        return False
    if n < 2 or np.abs(ts - (ts[0] + np.arange(n) / fps)).max() > CFR_TOLERANCE / fps:
        return False  # variable frame rate, timestamps that jump or repeat: PyAV places frames by time
    start = float(req.start_seconds or 0.0)
    end = float(req.end_seconds) if req.end_seconds is not None else math.inf
    safe = n - min(n, max(MIN_TAIL_FRAMES, math.ceil(TAIL_SECONDS * fps)))  # decord reads frames [.., safe)

    base = int(math.floor((start - ts[0]) * fps + 0.5))  # the frame nearest the window's start

    def index(k: int) -> int:  # the source frame of grid time start + k/fps: on a constant grid, base + k
        return min(n - 1, max(0, base + k))

    last_time = ts[-1] + 0.5 / fps  # grid times up to half a frame past the last listed frame have a frame
    k_end = math.ceil(min(end - start, last_time - start) * fps - 1e-6)  # grid times [0, k_end) to emit
    if k_end <= 0 or index(0) >= safe:
        return False  # the window lies in the tail: PyAV decodes it all
    info = ("info", asdict(VideoInfo(n, fps, oh, ow, probe.rotation, probe.duration, "decord")))
    batch = _Batcher(send, req.window_bytes, lambda: info)
    per = max(1, req.window_bytes // (ow * oh * 3))
    k = 0
    while k < k_end and index(k) < safe:
        ks = [k]
        while len(ks) < per and ks[-1] + 1 < k_end and index(ks[-1] + 1) < safe:
            ks.append(ks[-1] + 1)
        wanted = [index(j) for j in ks]
        try:  # one contiguous window, so decord seeks at most once, to its first frame
            chunk = vr.get_batch(list(range(wanted[0], wanted[-1] + 1))).asnumpy()
        except Exception:  # noqa: BLE001 — PyAV goes on from here (or decodes it all, if nothing was sent)
            break
        for i in wanted:
            batch.add(chunk[i - wanted[0]])
        batch.flush()  # frames reach the parent before the next read, which may hang
        k = ks[-1] + 1
    del vr
    if batch.count == 0:
        return False
    if k < k_end:
        # the tail (or the rest, after a decord error): PyAV from the next grid time, into the same stream;
        # it also says whether the file ends early (truncated) or before the window does (window_past_end)
        _decode_pyav(DecodeRequest(**{**asdict(req), "start_seconds": start + k / fps}), send, batch)
    return True


def _decode(req: DecodeRequest, send) -> None:
    _check_file(req.path)
    if req.decoder == "pyav" or not os.path.isfile(req.path):  # a FIFO can be read once only: PyAV alone
        _decode_pyav(req, send)
        return
    try:
        probe = _probe(req)
    except _Reject as err:
        if not str(err).startswith("unreadable: pyav"):
            raise
        try:
            _decode_decord_only(req, send)
        except _Reject:
            raise
        except Exception as fallback:  # noqa: BLE001 — decord raises its own kinds
            raise _Reject(f"{err}; decord: {type(fallback).__name__}: {str(fallback).splitlines()[0][:120]}") from None
        return
    if probe is not None and _decode_decord(req, send, probe):
        return
    _decode_pyav(req, send)


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, because ru_maxrss survives exec on Linux: a process started by a
    big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _exit_with_parent(parent: int) -> None:
    """A thread that ends this process when its parent dies (e.g. a Ray worker killed mid-task), even while
    the main thread is blocked in a read that will never return."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def serve(read_fd: int, write_fd: int) -> None:
    """The decoder process's loop: one DecodeRequest in, its messages out, until the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle
    _exit_with_parent(os.getppid())
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            req = DecodeRequest(**inbox.recv())
        except EOFError:
            return
        try:
            _decode(req, outbox.send)
        except _Reject as err:
            outbox.send(("reject", str(err)))
        except Exception as err:  # noqa: BLE001 — a decoder's own error is this input's reject, not the worker's end
            outbox.send(
                ("reject", f"unreadable: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}")
            )
        outbox.send(("done", peak_rss_bytes()))


# ---------------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------------


class _Silent(Exception):
    """The decoder sent nothing within the timeout, or died."""


class DecodeWorker:
    """A decoder child process reused across inputs; killed and replaced when it hangs or crashes."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0  # bytes, the child's ru_maxrss as it last reported it

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        code = f"from data_prep.decode import serve; serve({to_child_r}, {from_child_w})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=(to_child_r, from_child_w),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.outbox, self.inbox = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        kind, _ = self._recv(STARTUP_TIMEOUT_S)
        assert kind == "ready", kind

    def kill(self) -> None:
        """Stop the child now (SIGKILL); the next decode starts a fresh one."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.outbox.close()
            self.inbox.close()
            self.proc = None

    def _recv(self, timeout_s: float) -> tuple:
        try:
            if self.inbox.poll(timeout_s):
                return self.inbox.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            code = self.proc.poll() if self.proc else None
            self.kill()
            raise _Silent(f"decoder_crashed: the decoder process died (exit {code})") from None
        self.kill()
        raise _Silent(f"timeout: the decoder sent nothing for {timeout_s:g} s and was killed")

    def stream(self, req: DecodeRequest, timeout_s: float) -> tuple[VideoInfo, FrameWindows]:
        """Start decoding `req`; returns the info and the frame windows, or raises DecodeError."""
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self._start()
        self.outbox.send(asdict(req))
        try:
            kind, payload = self._recv(timeout_s)
        except _Silent as err:
            raise DecodeError(str(err)) from None
        if kind == "reject":
            self._recv(timeout_s)  # "done"
            raise DecodeError(payload)
        assert kind == "info", kind
        return VideoInfo(**payload), FrameWindows(self, timeout_s)


@dataclass
class FrameWindows:
    """Iterator over one decode's frame windows [t, H, W, 3]; `warnings` fills in as it runs (a timeout,
    a crash, a truncated file: the frames before it are kept and the reason is recorded here)."""

    worker: DecodeWorker
    timeout_s: float
    warnings: list[str] = field(default_factory=list)
    frames: int = 0
    finished: bool = False

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            while True:
                try:
                    kind, payload = self.worker._recv(self.timeout_s)
                except _Silent as err:
                    self.warnings.append(f"{err} after {self.frames} frames; the video ends there")
                    self.finished = True
                    return
                if kind == "frames":
                    self.frames += len(payload)
                    yield payload
                elif kind in ("warning", "reject"):  # a reject after frames: the video ends there
                    self.warnings.append(payload)
                elif kind == "done":
                    self.worker.peak_rss = max(self.worker.peak_rss, int(payload))
                    self.finished = True
                    return
        finally:
            if not self.finished:  # the consumer stopped early: the child is still sending
                self.worker.kill()


_WORKER: DecodeWorker | None = None


def decode_worker() -> DecodeWorker:
    """This process's decoder child (started on first use)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = DecodeWorker()
    return _WORKER


def stream_frames(
    path: str,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    timeout_s: float = 120.0,
    max_side: int | None = 640,
    threads: int = 1,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    decoder: str = "auto",
) -> tuple[VideoInfo, FrameWindows]:
    """The frames of [start, end) seconds as uint8 windows [t, H, W, 3] on a constant `info.fps` grid,
    longer side <= max_side, rotation applied. Raises DecodeError with a specific reason (missing_file,
    empty_file, not_a_video, no_video_stream, bad_frame_rate, extreme_aspect_ratio, rotation,
    window_past_end, unreadable, no_frames, timeout, decoder_crashed) when no frame can be had.
    `decoder`: "auto" (decord where it is right, PyAV elsewhere: module docstring) or "pyav" (PyAV only)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: expected one of {DECODERS}")
    req = DecodeRequest(
        str(path), start_seconds, end_seconds, max_side, threads, WINDOW_BYTES, max_aspect_ratio, decoder
    )
    return decode_worker().stream(req, timeout_s)


def decode_frames(
    path: str,
    start_seconds: float | None = None,
    end_seconds: float | None = None,
    timeout_s: float = 120.0,
    max_side: int | None = 640,
    decoder: str = "auto",
) -> tuple[VideoInfo, np.ndarray]:
    """All frames of [start, end) as one uint8 array [T, H, W, 3] (for short videos, tests and benchmarks;
    prep itself streams with `stream_frames`). `info.num_frames` is the number of frames returned."""
    info, windows = stream_frames(path, start_seconds, end_seconds, timeout_s, max_side, decoder=decoder)
    frames = np.concatenate(list(windows))
    info.num_frames = len(frames)
    return info, frames

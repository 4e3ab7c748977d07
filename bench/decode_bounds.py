"""Decode bounds: a window deep in a long file costs about what its own length costs, and a 4K source
stays far below 1.5 GB in the prep worker (issue 12 §3).

(a) the last 10 s of a 60-s 720p file (seek to the keyframe before 50 s, frames before 50 s decoded but
    never converted) against a whole 10-s 720p file: target ratio <= 1.3;
(b) peak RSS of the per-input prep work (`process_input`: decode, shots, dynamism, clips) on a 4K source,
    in a fresh process: the worker itself and its decoder process (VmHWM of each); target <= 1.5 GB
    together. For contrast, the same with frames kept at 4K (`clip.decode_max_side=3840`).
The files are generated here (h264, keyframe every 2 s as streaming encoders write them, 30 fps).
Prints a table; writes bench/results/decode_bounds.json.

    python bench/decode_bounds.py [--repeats 3] [--seconds-4k 5]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
FPS, GOP = 30, 60


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    repeats: int = 3
    seconds_4k: float = 5.0  # length of the 4K source


def write_video(path: Path, seconds: float, height: int, width: int) -> Path:
    """A textured frame panning right plus a moving block: cheap to make, real work for a decoder."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width + 64 * 8, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "g": str(GOP)}
        for i in range(int(seconds * FPS)):
            frame = np.ascontiguousarray(base[:, (i * 4) % 512 : (i * 4) % 512 + width])
            frame[height // 3 : height // 2, (i * 8) % (width - 64) : (i * 8) % (width - 64) + 64] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def time_decode(path: Path, start: float | None, end: float | None, repeats: int) -> tuple[float, int]:
    from data_prep.decode import decode_frames

    decode_frames(str(path), start, end)  # warm-up: the decoder process and codec init
    times, frames = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        _, decoded = decode_frames(str(path), start, end)
        times.append(time.perf_counter() - started)
        frames = len(decoded)
    return statistics.median(times), frames


WORKER = r"""
import json, sys
from data_prep.process import ClipSpec, process_input
from data_prep.decode import decode_worker, peak_rss_bytes
from data_prep.sources import VideoInput

path, max_side = sys.argv[1], int(sys.argv[2])
rows = list(process_input(VideoInput("folder", path, "4k").to_row(), ClipSpec(decode_max_side=max_side)))
print(json.dumps({"worker_bytes": peak_rss_bytes(), "decoder_bytes": decode_worker().peak_rss,
                  "clip_rows": sum(r["table"] == "clips" for r in rows), "rows": len(rows)}))
"""


def peak_rss(path: Path, max_side: int) -> dict:
    """Peak RSS (VmHWM) of `process_input` on `path` in a fresh process, and of its decoder process."""
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), str(max_side)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    from mempack.config import parse_config

    args = parse_config(Options, None, __doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long = write_video(tmp / "long_720p.mp4", 60, 720, 1280)
        short = write_video(tmp / "short_720p.mp4", 10, 720, 1280)
        uhd = write_video(tmp / "uhd.mp4", args.seconds_4k, 2160, 3840)
        window_s, window_frames = time_decode(long, 50.0, 60.0, args.repeats)
        whole_s, whole_frames = time_decode(short, None, None, args.repeats)
        from_zero_s, _ = time_decode(long, None, None, 1)
        prep = peak_rss(uhd, 640)  # prep's default: decoded at most 640 px long
        full = peak_rss(uhd, 3840)  # for contrast: frames kept at 4K
    ratio = window_s / whole_s
    prep_total = prep["worker_bytes"] + prep["decoder_bytes"]
    rows = [
        ("(a) last 10 s of a 60-s 720p file", f"{window_s:.2f} s", f"{window_frames} frames"),
        ("(a) a whole 10-s 720p file", f"{whole_s:.2f} s", f"{whole_frames} frames"),
        ("(a) ratio (target <= 1.3)", f"{ratio:.2f}", "PASS" if ratio <= 1.3 else "FAIL"),
        ("(a) for contrast: the whole 60-s file", f"{from_zero_s:.2f} s", ""),
        ("(b) 4K prep worker peak RSS", f"{prep['worker_bytes'] / 2**20:.0f} MiB", f"{prep['clip_rows']} clip rows"),
        ("(b) its decoder process peak RSS", f"{prep['decoder_bytes'] / 2**20:.0f} MiB", ""),
        ("(b) together (target <= 1.5 GB)", f"{prep_total / 2**20:.0f} MiB", "PASS" if prep_total <= 1.5e9 else "FAIL"),
        (
            "(b) for contrast: worker + decoder at 4K",
            f"{(full['worker_bytes'] + full['decoder_bytes']) / 2**20:.0f} MiB",
            "frames not scaled in the decoder",
        ),
    ]
    for name, value, note in rows:
        print(f"{name:<42} {value:>10}  {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "decode_bounds.json"
    out.write_text(
        json.dumps(
            {
                "fps": FPS,
                "gop_frames": GOP,
                "window_last_10s_of_60s_seconds": window_s,
                "whole_10s_seconds": whole_s,
                "whole_60s_seconds": from_zero_s,
                "window_over_whole_ratio": ratio,
                "window_frames": window_frames,
                "whole_frames": whole_frames,
                "uhd_seconds": args.seconds_4k,
                "uhd_prep_worker_peak_bytes": prep["worker_bytes"],
                "uhd_decoder_peak_bytes": prep["decoder_bytes"],
                "uhd_prep_total_peak_bytes": prep_total,
                "uhd_full_resolution_total_peak_bytes": full["worker_bytes"] + full["decoder_bytes"],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

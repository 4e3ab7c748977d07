"""Data-prep throughput: seconds per minute of input video, by stage, on 1 and 2 Ray CPUs.

(a) decode only (the decoder process, every frame of every input, as prep decodes it);
(b) the per-input CPU operator — that one decode, then shots (PySceneDetect), dynamism (optical
    flow) and clip cutting — so (b)/(a) says how much the CPU stages add to one decode;
(c) the whole pipeline (Ray Data, tiny encoders, Parquet written) on a local Ray of 1 and of 2 CPUs,
    each in a fresh process.
Input: the built-in sample (or --input DIR). Prints a table; writes bench/results/prep_throughput.json.

    python bench/prep_throughput.py [--input DIR | --size 360x640] [--repeats 3]
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    input: str | None = None  # folder of videos (default: the built-in sample)
    repeats: int = 3
    size: str = "96x128"  # HxW of the built-in sample

    def __post_init__(self) -> None:
        parts = self.size.lower().split("x")
        if len(parts) != 2 or not all(v.isdigit() and int(v) >= 32 for v in parts):
            raise ValueError(f"--size must be HxW with sides >= 32, e.g. 360x640; got {self.size!r}")


def input_minutes(inputs) -> float:
    from data_prep.decode import decode_frames

    seconds = 0.0
    for item in inputs:
        info, frames = decode_frames(item.source_path)
        seconds += len(frames) / info.fps
    return seconds / 60.0


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up (imports, codec init)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def whole_pipeline(folder: str, cpus: int) -> float:
    """Wall seconds of run_prep on a fresh local Ray with `cpus` CPUs (run in a subprocess)."""
    code = f"""
import json, sys, time, tempfile
import ray
ray.init(address="local", num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
from data_prep.job import PrepConfig, run_prep
from data_prep.sources import load_inputs
out = tempfile.mkdtemp()
started = time.perf_counter()
summary = run_prep(load_inputs({folder!r}), PrepConfig(output=out))
print(json.dumps({{"seconds": time.perf_counter() - started, "clips": summary["clips"]}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    from mempack.config import parse_config

    args = parse_config(Options, None, __doc__.splitlines()[0])
    parts = args.size.lower().split("x")
    size = (int(parts[0]), int(parts[1]))

    from data_prep.decode import decode_frames
    from data_prep.process import ClipSpec, process_input
    from data_prep.sources import load_inputs
    from mempack.sample import make_sample

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.input or tmp
        if not args.input:
            make_sample(folder, size)
        inputs = load_inputs(folder)
        minutes = input_minutes(inputs)
        spec = ClipSpec()
        decode_s = time_it(lambda: [decode_frames(i.source_path) for i in inputs], args.repeats)
        cpu_s = time_it(lambda: [list(process_input(i.to_row(), spec)) for i in inputs], args.repeats)
        rows = [
            {"stage": "(a) decode only", "cpus": 1, "seconds": decode_s},
            {"stage": "(b) decode + shots + dynamism + clips", "cpus": 1, "seconds": cpu_s},
        ]
        for cpus in (1, 2):
            rows.append(
                {"stage": "(c) whole pipeline, tiny encoders", "cpus": cpus, "seconds": whole_pipeline(folder, cpus)}
            )
    print(f"input: {len(inputs)} videos, {minutes * 60:.1f} s of video{'' if args.input else f' at {args.size}'}\n")
    print(f"{'stage':<40} {'cpus':>4} {'seconds':>8} {'s per input minute':>19}")
    for r in rows:
        r["seconds_per_input_minute"] = r["seconds"] / minutes
        print(f"{r['stage']:<40} {r['cpus']:>4} {r['seconds']:8.2f} {r['seconds_per_input_minute']:19.2f}")
    ratios = {"b_over_a": cpu_s / decode_s, "c_1cpu_over_2cpu": rows[2]["seconds"] / rows[3]["seconds"]}
    print(f"\n(b)/(a) = {ratios['b_over_a']:.2f}   (c) 1 CPU / 2 CPUs = {ratios['c_1cpu_over_2cpu']:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "prep_throughput.json"
    out = out.with_name(f"prep_throughput_{args.size}.json") if not args.input and args.size != "96x128" else out
    out.write_text(
        json.dumps(
            {
                "input_minutes": minutes,
                "inputs": len(inputs),
                "size": None if args.input else size,
                "rows": rows,
                "ratios": ratios,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

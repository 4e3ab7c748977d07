"""Peak memory of inference against video length: streamed section by section vs. decoded whole.

Each measurement runs in a fresh process (peak RSS is per process): the tiny preset's pipeline
generates N minutes at the preset's 8 fps and writes the mp4. `stream` is what `pipelines/infer.py`
does (`MemoryPackPipeline.write_video`: every section decoded and encoded as it is sampled);
`whole` is the old path (all latents, then one whole VAE decode, then the mp4) for comparison.
Peak RSS must not grow with length for `stream`; for `whole` it grows with the frames held.
Prints a table and writes bench/results/stream_memory.json.

    python bench/stream_memory.py [--minutes 1 10] [--modes stream whole] [--size 64] [--steps 1] [--fps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODES = ("stream", "whole")
# fields with flags of their own in parse_args: list flags keep their old syntax (`--minutes 1 10`, where a
# generated flag takes one YAML value, `--minutes [1,10]`)
HANDWRITTEN = ("minutes", "modes")


@dataclass
class Options:
    """The benchmark's flags (mempack.config: also --set KEY=VALUE, --config, --print-config)."""

    minutes: list[float] = field(default_factory=lambda: [1.0, 10.0])  # video lengths
    modes: list[Literal["stream", "whole"]] = field(default_factory=lambda: list(MODES))
    size: int = 64  # frame side in pixels (multiple of 16)
    steps: int = 1  # Euler steps per section (memory does not depend on it)
    fps: float | None = None  # frame rate (default: the preset's clock)
    out: str = str(RESULTS / "stream_memory.json")


def rss_mb() -> float:
    """Current resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(minutes: float, mode: str, size: int, steps: int, fps: float | None, out: Path) -> dict:
    """One generation in this process; returns its numbers."""
    import torch

    from mempack.export import load_pipeline
    from mempack.pipeline import DEFAULT_FPS
    from mempack.sample import SAMPLE_PROMPT, sample_image
    from mempack.video_io import write_mp4

    torch.set_num_threads(1)
    pipe = load_pipeline(None, preset="tiny")
    pipe.set_progress_bar_config(disable=True)
    fps = fps or DEFAULT_FPS["tiny"]
    frames = round(minutes * 60 * fps)
    kwargs = dict(
        image=sample_image(size, size),
        prompt=SAMPLE_PROMPT,
        num_frames=frames,
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    before = rss_mb()
    began = time.perf_counter()
    if mode == "stream":
        pipe.write_video(out, fps, **kwargs)
    else:
        latents = pipe(output_type="latent", **kwargs).frames
        write_mp4(pipe.encoders().decode_latents(latents)[0][:frames], out, fps)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "minutes": minutes,
        "mode": mode,
        "frames": frames,
        "fps": fps,
        "size": size,
        "steps": steps,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "growth_mb": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "mp4_bytes": out.stat().st_size,
    }


def parse_args(argv=None) -> tuple[argparse.Namespace, Options]:
    """The run's flags (and the internal --child) and the benchmark's Options."""
    from mempack.config import ArgumentParser, add_config_arguments, add_config_file_arguments, config_from_args

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_config_file_arguments(parser, Options)
    parser.add_argument("--minutes", type=float, nargs="+", help="video lengths in minutes (default: 1 10)")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="what to measure (default: stream whole)")
    parser.add_argument("--child", nargs=2, metavar=("MINUTES", "MODE"), help=argparse.SUPPRESS)
    add_config_arguments(parser, Options, skip=HANDWRITTEN)
    args = parser.parse_args(argv)
    handwritten = {"minutes": args.minutes, "modes": args.modes}
    options = config_from_args(parser, Options, args, {k: v for k, v in handwritten.items() if v is not None})
    return args, options


def main(argv=None) -> None:
    args, options = parse_args(argv)
    video = RESULTS / "stream_memory.mp4"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(float(args.child[0]), args.child[1], options.size, options.steps, options.fps, video)))
        return
    rows = []
    for mode in options.modes:
        for minutes in options.minutes:
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(minutes),
                    mode,
                    "--size",
                    str(options.size),
                    "--steps",
                    str(options.steps),
                    *(["--fps", str(options.fps)] if options.fps else []),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"{mode:>7} {minutes:5g} min: peak {rows[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    video.unlink(missing_ok=True)
    print(
        f"\n{'mode':>7} {'minutes':>8} {'frames':>7} {'RSS before MB':>14} {'peak RSS MB':>12} {'growth MB':>10} "
        f"{'seconds':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:>7} {r['minutes']:8g} {r['frames']:7d} {r['rss_before_mb']:14.0f} {r['peak_rss_mb']:12.0f} "
            f"{r['growth_mb']:10.0f} {r['seconds']:8.0f}"
        )
    out = Path(options.out)
    config = {**dataclasses.asdict(options), "out": out, "child": args.child}  # the keys the JSON has always had
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {k: str(v) for k, v in config.items()}, "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

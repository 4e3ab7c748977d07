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
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--modes", nargs="+", default=["stream", "whole"], choices=["stream", "whole"])
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=1, help="Euler steps per section (memory does not depend on it)")
    parser.add_argument("--fps", type=float, help="frame rate (default: the preset's clock)")
    parser.add_argument("--out", type=Path, default=RESULTS / "stream_memory.json")
    parser.add_argument("--child", nargs=2, metavar=("MINUTES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    video = RESULTS / "stream_memory.mp4"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(float(args.child[0]), args.child[1], args.size, args.steps, args.fps, video)))
        return
    rows = []
    for mode in args.modes:
        for minutes in args.minutes:
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(minutes),
                    mode,
                    "--size",
                    str(args.size),
                    "--steps",
                    str(args.steps),
                    *(["--fps", str(args.fps)] if args.fps else []),
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Re-measure a method-fidelity run's stage-2 exports on fresh held-out videos: own vs true history.

`bench/method_fidelity.py` measures the exposure gap on a few videos per model, beside everything else.
This takes the exports such a run saved (`--out`/models) and measures, for pairs of variants, on many
videos it never used (another seed range): the error of each section made after the model's own sections
(a rollout), the error of the same section, same noise, made after the true ones, and their gap. Pairs
are compared video by video (same start latent, same noise), pooled over the run's seeds.

    python bench/exposure_recheck.py --run docs/results/method_fidelity_drift.json --videos 16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

RECHECK_SEED = 940_000_000  # held-out videos method_fidelity never draws (it uses 900/910/920/930 million)


def measure(export: str, settings: dict, videos: int) -> dict:
    """Per video: mean error over sections ≥ 1 with own history, with true history, and their gap."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from bench.method_fidelity import settings_from_dict, world_for
    from mempack.fidelity.metrics import exposure_gap
    from mempack.model import MemoryPackTransformer

    s = settings_from_dict(settings)
    model = MemoryPackTransformer.from_pretrained(export)
    world = world_for(s, 1)
    own, true = [], []
    for v in range(videos):  # one video per call: each keeps all its sections (the curves keep the common ones)
        result = exposure_gap(model, world, 1, seed=RECHECK_SEED + v, steps=s.sample_steps)
        own.append(float(np.mean(result.rollout_curve[1:])))
        true.append(float(np.mean(result.teacher_curve[1:])))
    return {"export": export, "own": own, "true": true, "gap": list(np.subtract(own, true))}


def summarise(measured: dict[tuple[str, int], dict], pairs: list[tuple[str, str]], seeds: list[int]) -> dict:
    """Means per variant, and per pair the video-by-video differences pooled over seeds (mean ± s.e.)."""
    import numpy as np

    out: dict = {"variants": {}, "pairs": {}}
    for variant in sorted({v for v, _ in measured}):
        rows = [measured[(variant, seed)] for seed in seeds if (variant, seed) in measured]
        out["variants"][variant] = {k: float(np.mean([np.mean(r[k]) for r in rows])) for k in ("own", "true", "gap")}
    for a, b in pairs:
        entry = {}
        for key in ("own", "true", "gap"):
            diffs = np.concatenate([np.subtract(measured[(a, s)][key], measured[(b, s)][key]) for s in seeds])
            per_seed = [float(np.mean(np.subtract(measured[(a, s)][key], measured[(b, s)][key]))) for s in seeds]
            entry[key] = {
                "mean": float(diffs.mean()),
                "sem": float(diffs.std(ddof=1) / np.sqrt(diffs.size)),
                "n": int(diffs.size),
                "per_seed": per_seed,
            }
        out["pairs"][f"{a} - {b}"] = entry
    return out


def parse_args(argv=None) -> argparse.Namespace:
    from mempack.config import ArgumentParser

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a method_fidelity JSON whose settings.out holds the exports")
    p.add_argument(
        "--pairs",
        default="direct_all:teacher_all,direct:teacher_head",
        help="A:B pairs of variants, comma-separated (A − B is reported)",
    )
    p.add_argument("--videos", type=int, default=16, help="fresh held-out videos per export")
    p.add_argument("--workers", type=int, default=2, help="parallel processes, one thread each (0: in this process)")
    p.add_argument("--json", default="bench/results/exposure_recheck.json")
    args = p.parse_args(argv)
    pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",") if pair.strip()]
    if not pairs or any(len(pair) != 2 or not all(pair) for pair in pairs):
        p.error(f"--pairs must be A:B[,C:D...], got {args.pairs!r}")
    args.pairs = pairs
    if args.videos < 2 or args.workers < 0:
        p.error("--videos must be >= 2 and --workers >= 0")
    if not Path(args.run).is_file():
        p.error(f"--run {args.run}: no such file")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = json.loads(Path(args.run).read_text())
    settings, seeds = run["settings"], list(range(run["seeds"]))
    models = Path(settings["out"]) / "models"
    jobs = {(v, seed): str(models / f"{v}-seed{seed}") for pair in args.pairs for v in pair for seed in seeds}
    missing = [path for path in jobs.values() if not Path(path).is_dir()]
    if missing:
        raise SystemExit(f"error: no export at {missing[0]} (run method_fidelity with these --variants first)")
    began = time.perf_counter()
    if args.workers == 0:
        measured = {key: measure(path, settings, args.videos) for key, path in jobs.items()}
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {key: pool.submit(measure, path, settings, args.videos) for key, path in jobs.items()}
            measured = {key: future.result() for key, future in futures.items()}
    summary = summarise(measured, args.pairs, seeds)
    summary.update(
        videos=args.videos,
        seeds=seeds,
        run=args.run,
        seconds=round(time.perf_counter() - began, 1),
        machine=f"{os.cpu_count()} CPUs",
        measured={f"{v}-seed{s}": m for (v, s), m in measured.items()},
    )
    print(f"{'variant':<14} {'own history':>12} {'true history':>13} {'gap':>8}")
    for v, e in summary["variants"].items():
        print(f"{v:<14} {e['own']:>12.4f} {e['true']:>13.4f} {e['gap']:>8.4f}")
    for name, e in summary["pairs"].items():
        print(
            f"{name:<28} "
            + "  ".join(f"{k} {e[k]['mean']:+.4f} ± {e[k]['sem']:.4f} s.e." for k in ("own", "true", "gap"))
            + f"  (n={e['gap']['n']}; gap per seed "
            + ", ".join(f"{x:+.4f}" for x in e["gap"]["per_seed"])
            + ")"
        )
    print(f"mean error over sections >= 1 of {args.videos} fresh videos per export; total {summary['seconds']:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.json}")
    return summary


if __name__ == "__main__":
    main()

"""Re-measure a method-fidelity run's stage-2 exports on fresh held-out videos: own vs true history.

`bench/method_fidelity.py` measures the exposure gap on a few videos per model, beside everything else.
This takes the exports such a run saved (`--out`/models) and measures, for pairs of variants, on many
videos it never used (another seed range): the error of each section made after the model's own sections
(a rollout), the error of the same section, same noise, made after the true ones, and their gap. Pairs
are compared video by video (same start latent, same noise), pooled over the run's seeds.

    python bench/exposure_recheck.py --run docs/results/method_fidelity_drift.json --videos 16
"""

# No `from __future__ import annotations`: tests load this file without registering it in sys.modules, and
# a dataclass with string annotations needs its module there.
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

RECHECK_SEED = 940_000_000  # held-out videos method_fidelity never draws (it uses 900/910/920/930 million)


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    run: str  # a method_fidelity JSON whose settings.out holds the exports
    pairs: str = "direct_all:teacher_all,direct:teacher_head"  # A:B,C:D pairs of variants (A − B is reported)
    videos: int = 16  # fresh held-out videos per export
    workers: int = 2  # parallel processes, one thread each (0: in this process)
    json: str = "bench/results/exposure_recheck.json"

    def __post_init__(self) -> None:
        pairs = self.pair_list
        if not pairs or any(len(pair) != 2 or not all(pair) for pair in pairs):
            raise ValueError(f"--pairs must be A:B[,C:D...], got {self.pairs!r}")
        if self.videos < 2 or self.workers < 0:
            raise ValueError("--videos must be >= 2 and --workers >= 0")
        if not Path(self.run).is_file():
            raise ValueError(f"--run {self.run}: no such file")

    @property
    def pair_list(self) -> list[tuple[str, ...]]:
        """--pairs as (A, B) tuples."""
        return [tuple(pair.split(":")) for pair in self.pairs.split(",") if pair.strip()]


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


def parse_args(argv=None) -> Options:
    from mempack.config import parse_config

    return parse_config(Options, argv, __doc__.splitlines()[0], required=("run",))


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = json.loads(Path(args.run).read_text())
    settings, seeds = run["settings"], list(range(run["seeds"]))
    models = Path(settings["out"]) / "models"
    jobs = {(v, seed): str(models / f"{v}-seed{seed}") for pair in args.pair_list for v in pair for seed in seeds}
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
    summary = summarise(measured, args.pair_list, seeds)
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

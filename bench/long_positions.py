"""Minutes past the trained length: drift and recall at 2× and 4× the longest training video, per RoPE position option.

A MemoryPack model is trained on the synthetic world (`bench/method_fidelity.py`'s `run_variant`, variant
`memorypack`, the world's longest training video L sections), then generates past L under each
`positions` option of `mempack.sampling.GenerationConfig` (`mempack.model.history.window_offset`):

    absolute   every section keeps its absolute index (the start latent's distance grows without bound)
    shift      past L, the history and the section move back together: the newest frame sits at L's last index
    wrap       past L, they move back by whole periods: the start latent's distance cycles through the trained range

Inside L every option gives the same indices, so each seed's rollouts are identical up to section L and
differ only after it (same start latents, same noise): the per-seed differences are paired.

* **drift** (paper eq. 8, `mempack.fidelity.metrics.rollout_drift`): rollouts of 4L sections from held-out
  start latents; drift over the first 2L sections and over all 4L (one rollout gives both: generation is
  causal and draws its noise section by section), and the mean world error over the last L sections.
* **recall** (`mempack.fidelity.metrics.memory_recall`): the same return events as the method-fidelity
  benchmark (seen, out of view for `--absence` sections, back), moved late in the video (the world's
  `enter` section is set so the return is the last section of a video of m·L sections, m = 1, 2, 4): the
  model continues a ground-truth prefix of ~m·L sections and draws the return.

Prints a table of mean ± std over training seeds and writes JSON (default docs/results/long_positions.json).

    nice -n 10 python bench/long_positions.py --world-seed 1      # the report run (3 seeds, ~2 CPU-hours)
    python bench/long_positions.py --quick --workers 0             # plumbing smoke run (seconds)
    python bench/long_positions.py --models bench/results/long_positions   # re-evaluate its exports, no training

docs/results/long_positions_full.json is the defaults with --seeds 2 (928 s on 2 cores); the earlier
docs/results/long_positions.json a reduced run (--width 64 --layers 1 --train-steps 150 ...). docs/long_videos.md
reads both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.method_fidelity import Settings, _init_worker, _stats, run_variant, world_for
from mempack.model.history import POSITIONS

MULTIPLES = (1, 2, 4)  # rollout lengths and return positions, in trained lengths L


def trained_sections(s: Settings) -> int:
    """L: the longest video the stage-1 world trains on (entrance, time in view, absence, return, after)."""
    cfg = world_for(s, 1).config
    return cfg.enter[1] + cfg.visible[1] + cfg.absence[1] + 1 + cfg.after_return


def late_world(s: Settings, return_section: int, absence: int):
    """The evaluation world with the object entering late, so it returns at `return_section` (or one before:
    its time in view is drawn from `visible`)."""
    from mempack.fidelity.world import World

    world = world_for(s, 1)
    enter = return_section - absence - world.config.visible[1]
    if enter < 1:
        raise ValueError(f"a return at section {return_section} after {absence} absent sections cannot be placed")
    return World(dataclasses.replace(world.config, enter=(enter, enter)))


def evaluate(model, s: Settings, positions: str, L: int, absence: int) -> dict:
    """Drift over 2L and 4L sections, late error, and recall at returns near L, 2L and 4L, under `positions`."""
    import numpy as np

    from mempack.eval.drift import drift
    from mempack.fidelity.metrics import memory_recall, rollout_drift

    model.config.positions = positions  # the model's default for every generate call the metrics make
    model.config.trained_sections = L
    world = world_for(s, 1)
    longest = max(MULTIPLES) * L
    result, kept = rollout_drift(
        model, world, longest, s.rollouts, seed=910_000_000, steps=s.sample_steps, keep_latents=True
    )
    drift_at, late = {}, []
    for m in MULTIPLES[1:]:
        per = []
        for r, latents in enumerate(kept):
            frames = 1 + 9 * m * L
            truth = world.backgrounds(world.video(910_000_000 + r), frames)
            errors = world.frame_errors(latents[:, 1:frames], truth[:, 1:])["total"]
            per.append(drift(errors))
            if m == max(MULTIPLES):
                late.append(float(errors[-9 * L :].mean()))
        drift_at[m] = float(np.mean(per))
    assert abs(drift_at[max(MULTIPLES)] - result.drift) < 1e-9  # the same frames rollout_drift scored
    recall = {}
    for m in MULTIPLES:
        events = memory_recall(
            model, late_world(s, m * L - 1, absence), [absence], s.events, seed=900_000_000, steps=s.sample_steps
        )
        recall[m] = events.recall[absence]
    return {
        "drift": drift_at,
        "late_error": float(np.mean(late)),
        "recall": recall,
        "curve": result.curve,
    }


def run_seed(seed: int, s: Settings, options: list[str], absence: int, models: str | None = None) -> dict:
    """Train memorypack for one seed (the method-fidelity benchmark's own run), or take the export an earlier
    run left under `models`, and evaluate each option."""
    import torch

    torch.set_num_threads(1)
    from mempack.model import MemoryPackTransformer

    began = time.perf_counter()
    if models is None:
        trained = run_variant("memorypack", seed, s, None)
        export, recall = trained["export"], trained["recall_by_absence"]
    else:
        export, recall = Path(models) / "models" / f"memorypack-seed{seed}", None
    train_seconds = time.perf_counter() - began
    model = MemoryPackTransformer.from_pretrained(export).eval()
    L = trained_sections(s)
    out = {"seed": seed, "export": str(export), "train_seconds": train_seconds, "recall_in_training_range": recall}
    for option in options:
        t = time.perf_counter()
        out[option] = evaluate(model, s, option, L, absence)
        out[option]["seconds"] = time.perf_counter() - t
        print(f"  seed {seed} {option}: {_brief(out[option])}", flush=True)
    return out


def _brief(e: dict) -> str:
    return (
        f"drift 2L {e['drift'][2]:.4f} 4L {e['drift'][4]:.4f}, last-L error {e['late_error']:.4f}, "
        f"recall {e['recall']} ({e['seconds']:.0f} s)"
    )


def summarise(runs: list[dict], options: list[str], s: Settings, L: int, absence: int) -> dict:
    from mempack.fidelity.world import describe_world

    runs = sorted(runs, key=lambda r: r["seed"])
    summary = {
        "world": describe_world(world_for(s, 1).config),
        "trained_sections": L,
        "absence": absence,
        "chance": 1 / s.identities,
        "options": {},
        "paired": {},
    }
    for o in options:
        summary["options"][o] = {
            **{f"drift_{m}L": _stats([r[o]["drift"][m] for r in runs]) for m in MULTIPLES[1:]},
            "late_error": _stats([r[o]["late_error"] for r in runs]),
            **{f"recall_{m}L": _stats([r[o]["recall"][m] for r in runs]) for m in MULTIPLES},
        }
        if o != "absolute" and "absolute" in options:
            summary["paired"][f"{o} - absolute"] = {
                f"drift_{m}L": _stats([r[o]["drift"][m] - r["absolute"]["drift"][m] for r in runs])
                for m in MULTIPLES[1:]
            } | {
                "late_error": _stats([r[o]["late_error"] - r["absolute"]["late_error"] for r in runs]),
                f"recall_{max(MULTIPLES)}L": _stats(
                    [r[o]["recall"][max(MULTIPLES)] - r["absolute"]["recall"][max(MULTIPLES)] for r in runs]
                ),
            }
    return summary


def print_table(summary: dict) -> None:
    w = summary["world"]
    L = summary["trained_sections"]
    print(
        f"world seed {w['seed']}, K = {w['identities']}, {w['camera']} camera: {w['role']} world"
        + (" (choices were made on it: not evidence)" if w["role"] == "development" else " (never used for a choice)")
    )
    print(f"trained length L = {L} sections ({9 * L + 1} latent frames); recall after {summary['absence']} absent")
    head = f"{'positions':<9} {'drift 2L':>17} {'drift 4L':>17} {'err last L':>17} " + " ".join(
        f"{'recall ' + str(m) + 'L':>15}" for m in MULTIPLES
    )
    print(head)
    print("-" * len(head))
    for o, e in summary["options"].items():
        cells = [f"{e[k]['mean']:>8.4f} ± {e[k]['std']:<6.4f}" for k in ("drift_2L", "drift_4L", "late_error")]
        cells += [f"{e[f'recall_{m}L']['mean']:>6.2f} ± {e[f'recall_{m}L']['std']:<6.2f}" for m in MULTIPLES]
        print(f"{o:<9} " + " ".join(cells))
    for name, d in summary["paired"].items():
        print(
            f"{name:<20} "
            + "; ".join(
                f"{k} {v['mean']:+.4f} ± {v['std']:.4f} ({', '.join(f'{x:+.4f}' for x in v['per_seed'])})"
                for k, v in d.items()
            )
        )
    print(f"chance = 1/K = {summary['chance']:.3f}; mean ± std over training seeds; drift: paper eq. 8 on world error")


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config).

    `--quick` and the rounding of `--events` to a multiple of K are applied here, so --print-config shows
    the values the run uses.
    """

    quick: bool = False  # plumbing smoke run: 1 seed, a few steps, tiny model
    seeds: int = 3  # training seeds
    world_seed: int = 1  # the world; 0 is the development world
    identities: int = 4  # K object identities (chance = 1/K)
    camera: Literal["static", "moving"] = "static"
    positions: str = ",".join(POSITIONS)  # options to compare, comma-separated
    absence: int = 4  # absent sections before each evaluated return
    train_steps: int = 2000  # stage-1 optimizer steps (one video each)
    train_absence: int = 8  # longest absence in training videos (sections; the method-fidelity default 8): sets L
    rollouts: int = 2  # drift rollouts of 4L sections per option and seed
    events: int = 8  # return events per position (a multiple of K)
    sample_steps: int = 8  # Euler steps per generated section
    width: int = 128  # backbone width (multiple of 32; the method-fidelity size)
    layers: int = 2  # dual- and single-stream blocks each
    workers: int = 2  # parallel seeds (0: in this process)
    out: str = "bench/results/long_positions"  # models and rollouts
    models: str | None = None  # evaluate the exports an earlier run left (its --out; same settings), no training
    json: str = "docs/results/long_positions.json"

    def __post_init__(self) -> None:
        unknown = [o for o in self.position_list if o not in POSITIONS]
        if unknown or not self.position_list:
            raise ValueError(f"--positions takes options from {POSITIONS}, got {unknown or 'none'}")
        if (
            self.seeds < 1
            or self.workers < 0
            or self.rollouts < 1
            or self.identities < 2
            or min(self.absence, self.train_absence) < 1
        ):
            raise ValueError("--seeds, --rollouts, --absence >= 1, --identities >= 2, --workers >= 0")
        self.events = -(-max(self.events, 1) // self.identities) * self.identities  # identities return equally often
        if self.width % 32 or self.width < 64 or self.layers < 1:
            raise ValueError("--width must be a multiple of 32, at least 64; --layers at least 1")
        if self.quick:
            self.seeds, self.train_steps, self.rollouts, self.sample_steps = 1, 4, 1, 1
            self.width, self.layers, self.train_absence = 64, 1, 2
            self.events, self.absence = self.identities, 1

    @property
    def position_list(self) -> list[str]:
        """--positions as a list."""
        return [o.strip() for o in self.positions.split(",") if o.strip()]


def parse_args(argv=None) -> Options:
    from mempack.config import parse_config

    return parse_config(Options, argv, __doc__.splitlines()[0])


def settings(args: Options) -> Settings:
    """The method-fidelity benchmark's settings for its `memorypack` run, with the return curriculum (the
    world's return section every step: the curriculum under which its memory is recalled at all in 2000
    steps, docs/method_fidelity.md) and its own evaluation shrunk to a smoke."""
    quick = args.quick
    return Settings(
        identities=args.identities,
        absences=[args.absence],  # its own recall: inside the trained length, at the evaluated absence
        world_seed=args.world_seed,
        train_steps=args.train_steps,
        stage2_steps=0,
        stage2_videos=0,
        lr=1e-3,
        stage2_lr=2e-4,
        events=args.events,
        drift_sections=1,
        rollouts=args.rollouts,
        sample_steps=args.sample_steps,
        width=args.width,
        layers=args.layers,
        student_steps=5,
        memory_grad_window=-1,
        out=str(Path(args.out).resolve()),
        mlflow_uri=None,
        train_absence=(1, args.train_absence),
        probe_videos=8,
        memory_lr=1e-4,
        stage1_clip="return",
        exposure_videos=1,
        camera=args.camera,
        visible=(1, 1) if quick else (1, 2),
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    s = settings(args)
    try:
        world_for(s, 1)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.models:
        missing = [
            seed for seed in range(args.seeds) if not (Path(args.models) / "models" / f"memorypack-seed{seed}").is_dir()
        ]
        if missing:
            raise SystemExit(f"error: no memorypack-seed{missing[0]} export under {args.models}/models")
    L = trained_sections(s)
    began = time.perf_counter()
    runs = []
    if args.workers == 0:
        runs = [run_seed(seed, s, args.position_list, args.absence, args.models) for seed in range(args.seeds)]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            futures = [
                pool.submit(run_seed, seed, s, args.position_list, args.absence, args.models)
                for seed in range(args.seeds)
            ]
            for done in as_completed(futures):
                r = done.result()
                print(f"  done seed {r['seed']} (training {r['train_seconds']:.0f} s)", flush=True)
                runs.append(r)
    summary = summarise(runs, args.position_list, s, L, args.absence)
    summary.update(
        seconds=round(time.perf_counter() - began, 1),
        seeds=args.seeds,
        settings=dataclasses.asdict(s),
        machine=f"{os.cpu_count()} CPUs",
        runs=runs,
    )
    print_table(summary)
    print(f"total {summary['seconds']:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.json}")
    return summary


if __name__ == "__main__":
    main()

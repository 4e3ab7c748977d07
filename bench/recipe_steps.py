"""How many stage-1 steps does a recipe users can run need? Recall against steps on report worlds.

`bench/method_fidelity.py` trains each variant to one step count and then measures everything; the question
here is a curve: at which stage-1 step count does `memorypack` trained with a library clip policy (uniform or
late: no knowledge of the world) recall the identity after L >= 4 absent sections, and where does
`framepack_only` stay at the same budget? One model per (camera, arm, seed) trains once, with the same
models (`bench.method_fidelity.build_model`), worlds (`world_for`), training stream and evaluation seeds as
the benchmark, through mempack's in-process trainer (`mempack.train.in_process.train_in_process`, the
per-video step the Ray loop runs); at each checkpoint it is evaluated on held-out videos:

    recall      `mempack.fidelity.metrics.memory_recall` at each L of --eval (chance = 1/K)
    psi         held-out ridge read-out of the identity from ψ (`psi_tokens`, `readout_accuracy`) and the
                identity's share of ψ's energy (`energy_shares`): what the memory holds, whether or not the
                backbone has learned to read it yet

Arms (`ARMS`): `framepack_only`, `memorypack` (SemanticPack's library defaults), `literal` (SemanticPack as
the paper reads: memorize_input="segment", pooling="learned", carry=False) and each default switched off
alone. `memorypack` against `literal` on both cameras is the defaults decision of issue 22.

    python bench/recipe_steps.py --cameras static,moving --arms framepack_only,memorypack,literal \\
        --seeds 2 --steps 1500 --every 500 --clip late --json docs/results/recipe_steps.json
    python bench/recipe_steps.py --collect --json docs/results/recipe_steps.json   # a stopped run's files
    python bench/recipe_steps.py --resume ...   # only the jobs whose files do not reach --steps yet
    python bench/recipe_steps.py --steps 0 --psi-only --arms memorypack,literal,segment_input,learned_pooling,\
        no_carry --out bench/results/psi_untrained --json docs/results/psi_untrained.json   # what ψ carries untrained

Every job writes its curve under --out after each checkpoint, so a run stopped early still summarises
(`--collect`); the summary counts the seeds behind each mean.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

# arm -> (method_fidelity variant, SemanticPack overrides)
LITERAL = {"memorize_input": "segment", "pooling": "learned", "carry": False}
ARMS = {
    "framepack_only": ("framepack_only", {}),
    "memorypack": ("memorypack", {}),
    "literal": ("memorypack", LITERAL),
    "segment_input": ("memorypack", {"memorize_input": "segment"}),
    "learned_pooling": ("memorypack", {"pooling": "learned"}),
    "no_carry": ("memorypack", {"carry": False}),
}
TARGET = 0.9  # issue 22: recall >= 0.9 at L >= 4
FRAMEPACK_WINDOW_SECTIONS = 19 / 9  # 1 + 2 + 16 latent frames of history: L beyond it needs memory


def job_path(out: str, camera: str, arm: str, seed: int) -> Path:
    return Path(out) / f"{camera}-{arm}-seed{seed}.json"


def run_job(camera: str, arm: str, seed: int, a: dict) -> dict:
    """Train one arm on one camera for `a['steps']` stage-1 steps, evaluating at every checkpoint."""
    import torch

    torch.set_num_threads(1)
    from bench.method_fidelity import Settings, build_model, world_for
    from mempack.fidelity.metrics import energy_shares, memory_recall, psi_tokens, readout_accuracy
    from mempack.train.forcing import ForcingConfig
    from mempack.train.in_process import LocalTrainConfig, train_in_process

    variant, overrides = ARMS[arm]
    s = Settings(
        identities=a["identities"],
        absences=a["eval"],
        world_seed=a["world_seed"],
        train_steps=a["steps"],
        stage2_steps=0,
        stage2_videos=0,
        lr=a["lr"],
        stage2_lr=0.0,
        events=a["events"],
        drift_sections=1,
        rollouts=1,
        sample_steps=a["sample_steps"],
        width=a["width"],
        layers=a["layers"],
        student_steps=5,
        memory_grad_window=-1,
        out=a["out"],
        mlflow_uri=None,
        train_absence=a["train_absence"],
        memory_lr=a["memory_lr"],
        semantic_pack=dict(overrides),
        stage1_clip=a["clip"],
        camera=camera,
    )
    world = world_for(s, 1)
    model = build_model(s, variant, seed, world)
    beyond = [L for L in a["eval"] if L > FRAMEPACK_WINDOW_SECTIONS] or a["eval"]
    curve, losses, began = [], [], time.perf_counter()
    record = {"camera": camera, "arm": arm, "seed": seed, "variant": variant, "semantic_pack": overrides}

    def evaluate(step: int) -> None:
        model.eval()
        recall = None
        if not a["psi_only"]:
            recall = memory_recall(model, world, a["eval"], a["events"], seed=900_000_000, steps=a["sample_steps"])
        readout = energy = None
        if model.uses_memory:  # ψ built once per L for the read-out and its energy shares
            tokens = {L: psi_tokens(model, world, L, seed=920_000_000, videos=a["probe_videos"]) for L in a["eval"]}
            readout = {L: readout_accuracy(*tokens[L], a["identities"]) for L in a["eval"]}
            energy = {L: energy_shares(*tokens[L])["identity"] for L in a["eval"]}
        model.train()
        window = losses[-a["every"] :]
        curve.append(
            {
                "step": step,
                "recall": None if recall is None else sum(recall.recall[L] for L in beyond) / len(beyond),
                "recall_by_absence": None if recall is None else recall.recall,
                "returned_by_absence": None if recall is None else recall.returned,
                "drawn_by_absence": None if recall is None else recall.drawn,
                "psi_readout_by_absence": readout,
                "psi_identity_share_by_absence": energy,
                "loss": sum(window) / len(window) if window else None,
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        path = job_path(a["out"], camera, arm, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**record, "curve": curve}, indent=2))

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if (step + 1) % a["every"] == 0 or step + 1 == a["steps"]:
            evaluate(step + 1)

    base = 1_000_000 * (seed + 1)  # bench/method_fidelity.py's training stream for this seed

    def video(step: int):
        v = world.video(base + step)
        return v.clips(), world.conditioning(v)

    evaluate(0)
    config = LocalTrainConfig(
        stage=1,
        steps=a["steps"],
        lr=a["lr"],
        memory_lr=a["memory_lr"],
        seed=seed,
        forcing=ForcingConfig(mode="teacher", sample_guidance=1.0, memory_grad_window=-1),
        stage1_clips=a["clip"],
    )
    if a["steps"]:  # --steps 0: the untrained models only (what the architecture carries before learning)
        result = train_in_process(model, video, config, on_step=on_step)
        record["train_seconds_per_step"] = result.seconds / a["steps"]
    record["curve"] = curve
    job_path(a["out"], camera, arm, seed).write_text(json.dumps(record, indent=2))
    return record


def _stats(values: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "n": int(arr.size),
        "per_seed": arr.tolist(),
    }


def summarise(records: list[dict], a: dict) -> dict:
    """Per camera and arm, per checkpoint: recall (L >= 4), ψ read-out and identity share, mean ± std over
    the seeds that reached it; the first checkpoint whose mean recall reaches the target; and the paired
    difference (same seed, same videos) of each arm against `literal`."""
    import numpy as np

    from mempack.fidelity.world import WorldConfig, describe_world

    beyond = [L for L in a["eval"] if L > FRAMEPACK_WINDOW_SECTIONS] or a["eval"]
    out = {"worlds": {}, "chance": 1 / a["identities"], "recall_absences": beyond, "target": TARGET, "arms": {}}
    by = {(r["camera"], r["arm"], r["seed"]): r for r in records}
    for camera in sorted({r["camera"] for r in records}):
        out["worlds"][camera] = describe_world(
            WorldConfig(identities=a["identities"], seed=a["world_seed"], camera=camera)
        )
        out["arms"][camera] = {}
        for arm in [x for x in ARMS if any(k[:2] == (camera, x) for k in by)]:
            rows = [by[k] for k in sorted(by) if k[:2] == (camera, arm)]
            steps = sorted({c["step"] for r in rows for c in r["curve"]})
            points = []
            for step in steps:
                at = [(r["seed"], c) for r in rows for c in r["curve"] if c["step"] == step]
                point = {"step": step, "seeds": [sd for sd, _ in at]}
                recalled = [c for _, c in at if c["recall"] is not None]  # --psi-only: no recall
                if recalled:
                    point["recall"] = _stats([c["recall"] for c in recalled])
                    point["returned"] = float(
                        np.mean([np.mean(list(c["returned_by_absence"].values())) for c in recalled])
                    )
                if at[0][1]["psi_readout_by_absence"] is not None:
                    point["psi_readout"] = _stats(
                        [np.mean([c["psi_readout_by_absence"][str(L)] for L in beyond]) for _, c in at]
                    )
                    point["psi_identity_share"] = _stats(
                        [np.mean([c["psi_identity_share_by_absence"][str(L)] for L in beyond]) for _, c in at]
                    )
                points.append(point)
            reached = [p["step"] for p in points if "recall" in p and p["recall"]["mean"] >= TARGET]
            timed = [r["train_seconds_per_step"] for r in rows if "train_seconds_per_step" in r]  # finished jobs
            out["arms"][camera][arm] = {
                "curve": points,
                "steps_to_target": reached[0] if reached else None,
                "train_seconds_per_step": float(np.mean(timed)) if timed else None,
            }
        out.setdefault("paired_vs_literal", {})[camera] = _paired(by, camera, beyond)
    return out


def _paired(by: dict, camera: str, beyond: list[int]) -> dict:
    """arm − literal within a seed at each shared checkpoint: recall and ψ read-out."""
    import numpy as np

    diffs = {}
    for arm in [x for x in ARMS if x not in ("literal", "framepack_only")]:
        seeds = sorted(sd for (c, x, sd) in by if c == camera and x == arm and (camera, "literal", sd) in by)
        if not seeds:
            continue
        rows = []
        for step in sorted({c["step"] for sd in seeds for c in by[(camera, arm, sd)]["curve"]}):
            pairs = []
            for sd in seeds:
                mine = [c for c in by[(camera, arm, sd)]["curve"] if c["step"] == step]
                theirs = [c for c in by[(camera, "literal", sd)]["curve"] if c["step"] == step]
                if mine and theirs:
                    pairs.append((mine[0], theirs[0]))
            if not pairs:
                continue

            def readout(c):
                return np.mean([c["psi_readout_by_absence"][str(L)] for L in beyond])

            row = {"step": step, "psi_readout": _stats([readout(m) - readout(t) for m, t in pairs])}
            recalled = [(m, t) for m, t in pairs if m["recall"] is not None and t["recall"] is not None]
            if recalled:
                row["recall"] = _stats([m["recall"] - t["recall"] for m, t in recalled])
            rows.append(row)
        diffs[f"{arm} - literal"] = rows
    return diffs


def print_table(summary: dict) -> None:
    print(f"chance = {summary['chance']:.2f}; recall over L in {summary['recall_absences']}; target {TARGET}")
    for camera, arms in summary["arms"].items():
        w = summary["worlds"][camera]
        print(f"world seed {w['seed']}, K = {w['identities']}, {camera} camera: {w['role']} world")
        for arm, e in arms.items():
            cells = []
            for p in e["curve"]:
                cell = f"{p['step']}:"
                if "recall" in p:
                    cell += f" {p['recall']['mean']:.2f}±{p['recall']['std']:.2f}"
                if "psi_readout" in p:
                    cell += f" (ψ {p['psi_readout']['mean']:.2f}±{p['psi_readout']['std']:.2f})"
                cells.append(cell + f" n={len(p['seeds'])}")
            print(f"  {arm:<16} " + " | ".join(cells))
            print(f"  {'':<16} reaches {TARGET}: {e['steps_to_target'] or 'not within the steps run'}")


def parse_args(argv=None):
    from mempack.config import ArgumentParser

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", default="static,moving", help="comma-separated: static, moving")
    p.add_argument("--arms", default="framepack_only,memorypack,literal", help=f"comma-separated of {','.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm")
    p.add_argument("--world-seed", type=int, default=1, help="the world; 0 is the development world")
    p.add_argument("--identities", type=int, default=5, help="K (the report worlds' 5)")
    p.add_argument("--eval", default="4,8", help="absences to evaluate, comma-separated")
    p.add_argument("--train-absence", default="1,8", help="absent sections in training videos, LO,HI")
    p.add_argument("--steps", type=int, default=1500, help="stage-1 steps (one video each); 0: untrained only")
    p.add_argument("--every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--clip", default="late", choices=("uniform", "late", "all"), help="the library's clip policy")
    p.add_argument("--events", type=int, default=15, help="return events per L (rounded up to a multiple of K)")
    p.add_argument("--probe-videos", type=int, default=80, help="videos per L for the ψ read-out")
    p.add_argument("--sample-steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--memory-lr", type=float, default=1e-4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="parallel training processes, one thread each")
    p.add_argument("--out", default="bench/results/recipe_steps", help="one curve file per job")
    p.add_argument("--json", default="bench/results/recipe_steps.json")
    p.add_argument("--collect", action="store_true", help="only summarise the job files already under --out")
    p.add_argument("--psi-only", action="store_true", help="evaluate ψ only (read-out, identity share), not recall")
    p.add_argument("--resume", action="store_true", help="skip jobs whose curve file under --out reaches --steps")
    args = p.parse_args(argv)
    try:
        args.cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
        args.arms = [x.strip() for x in args.arms.split(",") if x.strip()]
        args.eval = sorted({int(x) for x in args.eval.split(",")})
        args.train_absence = tuple(int(x) for x in args.train_absence.split(","))
    except ValueError:
        p.error("--eval is a comma-separated list of integers and --train-absence LO,HI")
    if not set(args.cameras) <= {"static", "moving"} or not args.cameras:
        p.error(f"--cameras: static and/or moving, got {args.cameras}")
    unknown = [x for x in args.arms if x not in ARMS]
    if unknown or not args.arms:
        p.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    if len(args.train_absence) != 2 or min(args.train_absence) < 1 or min(args.eval) < 1:
        p.error("--train-absence is LO,HI >= 1 and --eval positive integers")
    if args.steps < 0 or args.every < 1 or args.seeds < 1 or args.workers < 1 or args.probe_videos < 8:
        p.error("--steps >= 0 (0: untrained only); --every, --seeds, --workers >= 1; --probe-videos >= 8")
    args.events = -(-args.events // args.identities) * args.identities  # identities balanced
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    a = {k: v for k, v in vars(args).items() if k not in ("collect", "json")}
    a["out"] = str(Path(args.out).resolve())
    began = time.perf_counter()
    if not args.collect:
        # seed by seed: a run stopped early holds whole seeds of every arm
        jobs = [(c, arm, seed) for seed in range(args.seeds) for c in args.cameras for arm in args.arms]
        if args.resume:  # the learning rate is constant: a longer run's checkpoint is this run's endpoint
            jobs = [j for j in jobs if _reached(job_path(a["out"], *j)) < args.steps]
        context = get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_one_thread) as pool:
            pending = {pool.submit(run_job, c, arm, seed, a): (c, arm, seed) for c, arm, seed in jobs}
            for done in as_completed(pending):
                c, arm, seed = pending[done]
                last = done.result()["curve"][-1]
                told = "ψ only" if last["recall"] is None else f"recall {last['recall']:.2f}"
                print(f"  done {c} {arm} seed {seed}: {told} ({last['seconds']:.0f} s)", flush=True)
    records = [json.loads(p.read_text()) for p in sorted(Path(a["out"]).glob("*-seed*.json"))]
    records = [r for r in records if r["camera"] in args.cameras and r["arm"] in args.arms]
    summary = summarise(records, a)
    summary.update(
        settings=a,
        seconds=None if args.collect else round(time.perf_counter() - began, 1),
        machine=f"{os.cpu_count()} CPUs (shared)",
        runs=records,
    )
    print_table(summary)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.json}")
    return summary


def _reached(path: Path) -> int:
    """The last checkpoint a job's curve file holds (-1: none)."""
    return json.loads(path.read_text())["curve"][-1]["step"] if path.is_file() else -1


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


if __name__ == "__main__":
    main()

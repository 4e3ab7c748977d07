"""Does mempack do what the paper claims? Memory recall and drift on a world whose truth we know.

Trains the paper's variants with mempack's own model (`MemoryPackTransformer`), forcing (`mempack.train.forcing`),
per-video training step (`mempack.train.step.train_video`, run in process by
`mempack.train.in_process.train_in_process`, the same step the Ray Train loop runs) and generator
(`mempack.sampling.generate`), on the synthetic latent world of `mempack.fidelity.world`, for several seeds, and
evaluates each on world videos whose seeds were never trained on:

    framepack_only  SemanticPack off, stage 1 teacher forcing
    zero_memory     MemoryPack with ψ₀ = 0, stage 1
    memorypack      MemoryPack, stage 1
    direct          memorypack + stage 2 Direct Forcing (head only, curriculum, one step per video)
    student         memorypack + stage 2 student forcing (5 sampling steps)
    teacher_head    memorypack + stage 2 teacher forcing, head only (the "more training" control)
    direct_all      memorypack + stage 2 Direct Forcing, whole network (is the head too small at this scale?)
    teacher_all     memorypack + stage 2 teacher forcing, whole network, every clip (direct_all's control)
                    (the *_all pair runs when --variants names it)
    oracle_memory   memorypack with ψ replaced by the world's truth (the identity last seen): the ceiling
                    of recall, which calibrates the instrument (mempack.fidelity.world.OracleMemoryTransformer)

Measures: memory recall after L absent sections (`mempack.fidelity.metrics.memory_recall`), what ψ holds
(a held-out ridge read-out of the identity from ψ, `memory_probe`), drift over a long rollout (paper
eq. 8, `rollout_drift`), the exposure gap (each section made after the model's own sections against the
same section, same noise, after the true ones: `exposure_gap`), and training cost per clip (FLOPs
counted by torch, wall seconds). Worlds are fed in process (no Parquet in between): the benchmark tests the method,
and prep's
contract is tested on its own. Prints a table of mean ± std over seeds, writes JSON (default
bench/results/method_fidelity.json) and logs every run, with a rollout mp4, to MLflow.

    python bench/method_fidelity.py                 # the full run (3 seeds) on the development world
    python bench/method_fidelity.py --world-seed 1 --identities 5 --camera moving   # a report world
    python bench/method_fidelity.py --quick         # plumbing smoke run, a few minutes

The world is a flag (`--world-seed`, `--identities`, `--camera static|moving`); the JSON's "world" and the
table's first line say whether it is a development world (seed 0: choices were made on it) or a report
world (`mempack.fidelity.world.world_role`). `--stage1-clip` is a library clip policy (uniform, late,
all: `mempack.train.step.STAGE1_CLIPS`) or `return`, the oracle curriculum (the world's return section).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

STAGE1 = ("framepack_only", "zero_memory", "memorypack", "oracle_memory")
# stage-2 variants: (forcing mode, what trains); the paper's Direct Forcing trains the head only
STAGE2 = {
    "direct": ("direct", "head"),
    "student": ("student", "head"),
    "teacher_head": ("teacher", "head"),
    "direct_all": ("direct", "all"),
    "teacher_all": ("teacher", "all"),
}
VARIANTS = STAGE1 + tuple(STAGE2)
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if not v.endswith("_all"))  # the whole-network pair: on request
FRAMEPACK_WINDOW_SECTIONS = 19 / 9  # 1 + 2 + 16 latent frames of history


@dataclass
class Settings:
    """Everything a worker needs (picklable)."""

    identities: int
    absences: list[int]
    world_seed: int
    train_steps: int
    stage2_steps: int
    stage2_videos: int
    lr: float
    stage2_lr: float
    events: int
    drift_sections: int
    rollouts: int
    sample_steps: int
    width: int
    layers: int
    student_steps: int
    memory_grad_window: int
    out: str
    mlflow_uri: str | None
    train_absence: tuple[int, int] | None = None  # default: 1 … the longest evaluated absence
    visible: tuple[int, int] = (1, 2)
    speed: tuple[int, int] = (2, 2)
    distractors: int = 0
    after_return: int = 0
    probe_videos: int = 160  # held-out videos per absence for the ψ read-out (3/4 fit it, 1/4 score it)
    memory_lr: float | None = None  # stage 1: what writes ψ (mempack.train.optim); None: lr
    semantic_pack: dict = field(default_factory=dict)  # SemanticPack overrides (ablations: memorize_input, ...)
    stage1_clip: str = "uniform"  # a stage-1 clip policy (uniform, late, all) or "return": the oracle curriculum
    exposure_videos: int = 4  # held-out videos whose sections are made from own vs true history (exposure_gap)
    camera: str = "static"  # the world's camera: static, or moving (pan, zoom, lighting drift)


def settings_from_dict(saved: dict) -> Settings:
    """The Settings a results JSON recorded (`settings`), with its ranges back as tuples."""
    ranges = ("train_absence", "visible", "speed")
    return Settings(**{k: tuple(v) if k in ranges and isinstance(v, list) else v for k, v in saved.items()})


def world_for(s: Settings, stage: int):
    from mempack.fidelity.world import World, WorldConfig

    absence = s.train_absence or (1, max(s.absences))
    if stage == 2:  # stage 2 trains every clip of a video: shorter videos keep its cost near stage 1's
        absence = (absence[0], min(absence[1], 4))
    return World(
        WorldConfig(
            identities=s.identities,
            absence=absence,
            visible=s.visible,
            speed=s.speed,
            distractors=s.distractors,
            after_return=s.after_return,
            seed=s.world_seed,
            camera=s.camera,
        )
    )


def build_model(s: Settings, variant: str, seed: int, world=None):
    """mempack's model at the world's size (`mempack.fidelity.model.world_model`), or its oracle."""
    from mempack.fidelity.model import world_model
    from mempack.fidelity.oracle import OracleMemoryTransformer

    overrides = {"init": "zero" if variant == "zero_memory" else "prompt_image", **s.semantic_pack}
    model = world_model(s.width, s.layers, memory=variant != "framepack_only", seed=seed, **overrides)
    if variant == "oracle_memory":
        return OracleMemoryTransformer(
            model.backbone, model.semantic_pack, model.config, world if world is not None else world_for(s, 1)
        )
    return model


def flops_per_clip(model, world, stage: int, mode: str, trainable: str, s: Settings) -> float:
    """FLOPs of one training step (forward + backward) of a 6-section video, per trained clip."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mempack.train.forcing import ForcingConfig
    from mempack.train.step import train_video, trained_clip

    video = world.video(10**9, absence=3)
    clips, cond = video.clips()[:6], world.conditioning(video)
    model.set_trainable(trainable)
    forcing = ForcingConfig(
        mode=mode, student_steps=s.student_steps, sample_guidance=1.0, memory_grad_window=s.memory_grad_window
    )
    only = trained_clip(stage, mode, clips.shape[0], torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        stats = train_video(
            model,
            clips,
            cond,
            forcing,
            lambda loss, last, retain: loss.backward(retain_graph=retain),
            only_clip=only,
            generator=torch.Generator().manual_seed(0),
        )
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / stats.clips


def run_variant(variant: str, seed: int, s: Settings, init: str | None) -> dict:
    """Train one variant for one seed (stage 2 starts from `init`, the memorypack export), then evaluate."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from mempack.fidelity.metrics import exposure_gap, memory_probe, memory_recall, rollout_drift
    from mempack.model import MemoryPackTransformer
    from mempack.train.forcing import ForcingConfig
    from mempack.train.in_process import LocalTrainConfig, train_in_process

    stage = 1 if variant in STAGE1 else 2
    mode, trainable = ("teacher", "all") if stage == 1 else STAGE2[variant]
    world = world_for(s, stage)
    model = build_model(s, variant, seed, world) if init is None else MemoryPackTransformer.from_pretrained(init)
    forcing = ForcingConfig(
        mode=mode, student_steps=s.student_steps, sample_guidance=1.0, memory_grad_window=s.memory_grad_window
    )
    flops = flops_per_clip(model, world, stage, mode, trainable, s)
    base = 1_000_000 * (seed + 1)  # training seeds; evaluation uses 900_000_000 + ..., never trained on
    if stage == 1:

        def videos(step: int):
            v = world.video(base + step)
            return v.clips(), world.conditioning(v)

        config = LocalTrainConfig(
            stage=1,
            steps=s.train_steps,
            lr=s.lr,
            memory_lr=s.memory_lr,
            seed=seed,
            forcing=forcing,
            stage1_clips="uniform" if s.stage1_clip == "return" else s.stage1_clip,
        )
    else:
        drawn = [world.video(base + 500_000 + i) for i in range(s.stage2_videos)]
        videos = [(v.clips(), world.conditioning(v)) for v in drawn]
        config = LocalTrainConfig(
            stage=2, steps=s.stage2_steps, lr=s.stage2_lr, seed=seed, forcing=forcing, trainable=trainable
        )
    returns_only = stage == 1 and s.stage1_clip == "return"  # the oracle curriculum: the world's return section
    result = train_in_process(
        model, videos, config, pick_clip=(lambda n: n - 1 - s.after_return) if returns_only else None
    )
    folder = Path(s.out) / "models" / f"{variant}-seed{seed}"
    model.save_pretrained(folder)
    eval_world = world_for(s, 1)
    recall = memory_recall(model, eval_world, s.absences, s.events, seed=900_000_000, steps=s.sample_steps)
    probe = memory_probe(model, eval_world, s.absences, seed=920_000_000, videos=s.probe_videos)
    drift, kept = rollout_drift(
        model, eval_world, s.drift_sections, s.rollouts, seed=910_000_000, steps=s.sample_steps, keep_latents=True
    )
    exposure = exposure_gap(model, eval_world, s.exposure_videos, seed=930_000_000, steps=s.sample_steps)
    out = {
        "variant": variant,
        "seed": seed,
        "export": str(folder),
        "exposure_gap": exposure.gap,
        "exposure_gap_per_video": exposure.per_video,
        "exposure_rollout_curve": exposure.rollout_curve,
        "exposure_teacher_curve": exposure.teacher_curve,
        "recall_by_absence": recall.recall,
        "returned_by_absence": recall.returned,
        "drawn_by_absence": recall.drawn,
        "memory_probe_by_absence": probe,
        "drift": drift.drift,
        "drift_per_rollout": drift.per_rollout,
        "drift_curve": drift.curve,
        "train_seconds_per_clip": result.seconds / max(result.clips, 1),
        "train_flops_per_clip": flops,
        "train_clips": result.clips,
        "skipped_steps": result.skipped,
        "first_loss": float(sum(result.losses[:20]) / max(1, len(result.losses[:20]))),
        "last_loss": float(sum(result.losses[-20:]) / max(1, len(result.losses[-20:]))),
    }
    if variant == "direct":  # the guidance decision: x̃ made at the training guidance, sampled at F1's 10
        mismatch, _ = rollout_drift(
            model, eval_world, s.drift_sections, s.rollouts, seed=910_000_000, steps=s.sample_steps, guidance=10.0
        )
        out["drift_sampled_at_guidance_10"] = mismatch.drift
    video_path = Path(s.out) / "rollouts" / f"{variant}-seed{seed}.mp4"
    if seed == 0 or s.mlflow_uri:
        from mempack.presets import FPS, VAE_TEMPORAL
        from mempack.video_io import write_mp4

        frames = eval_world.render(kept[0])
        write_mp4(frames, video_path, fps=FPS / VAE_TEMPORAL, crf=0)  # one latent frame = 4 video frames
        out["rollout_mp4"] = str(video_path)
        # one frame every few sections (the last of each), for the README's strip
        every = max(1, s.drift_sections // 8)
        picks = [1 + 9 * (k + 1) - 1 for k in range(0, s.drift_sections, every)]
        np.save(video_path.with_suffix(".strip.npy"), frames[picks])
        out["strip"] = str(video_path.with_suffix(".strip.npy"))
    if s.mlflow_uri:
        _log_mlflow(s, out, video_path)
    return out


def _log_mlflow(s: Settings, out: dict, video: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(s.mlflow_uri)
    mlflow.set_experiment("mempack-method-fidelity")
    with mlflow.start_run(run_name=f"{out['variant']}-seed{out['seed']}"):
        mlflow.log_params(
            {
                "variant": out["variant"],
                "seed": out["seed"],
                "identities": s.identities,
                "world_seed": s.world_seed,
                "train_steps": s.train_steps,
                "stage2_steps": s.stage2_steps,
            }
        )
        metrics = {f"recall_L{k}": v for k, v in out["recall_by_absence"].items()}
        metrics.update({f"returned_L{k}": v for k, v in out["returned_by_absence"].items()})
        metrics.update({f"psi_probe_L{k}": v for k, v in (out["memory_probe_by_absence"] or {}).items()})
        metrics.update(
            drift=out["drift"],
            exposure_gap=out["exposure_gap"],
            train_seconds_per_clip=out["train_seconds_per_clip"],
            train_flops_per_clip=out["train_flops_per_clip"],
        )
        mlflow.log_metrics(metrics)
        for i, value in enumerate(out["drift_curve"]):
            mlflow.log_metric("drift_curve", value, step=i)
        if video.is_file():
            mlflow.log_artifact(str(video), "rollouts")


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def run_all(
    s: Settings,
    variants: list[str],
    seeds: list[int],
    workers: int,
    on_result: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Stage-1 variants first; each seed's stage-2 variants start when its memorypack export is ready."""
    need_memorypack = any(v in STAGE2 for v in variants)
    stage1 = [v for v in STAGE1 if v in variants or (v == "memorypack" and need_memorypack)]
    results: list[dict] = []
    exports: dict[int, str] = {}
    if workers == 0:  # in this process, in order (tests, debugging)
        for seed in seeds:
            exports = {}
            for v in stage1:
                out = run_variant(v, seed, s, None)
                exports[v] = out["export"]
                results.append(out)
            for v in STAGE2:
                if v in variants:
                    results.append(run_variant(v, seed, s, exports["memorypack"]))
        return [r for r in results if r["variant"] in variants]
    # seed by seed, memorypack first, so each seed's stage-2 variants start as early as possible and
    # the partial JSON (`on_result`) holds whole seeds
    ready = [(seed, v) for seed in seeds for v in sorted(stage1, key=lambda v: v != "memorypack")]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        pending: dict[Future, tuple[str, int]] = {}
        while ready or pending:
            while ready and len(pending) < workers:
                seed, v = ready.pop(0)
                init = exports.get(seed) if v in STAGE2 else None
                pending[pool.submit(run_variant, v, seed, s, init)] = (v, seed)
            done = next(iter(as_completed(list(pending))))
            variant, seed = pending.pop(done)
            out = done.result()
            print(
                f"  done {variant} seed {seed}: recall {out['recall_by_absence']} drift {out['drift']:.4f} "
                f"({out['train_seconds_per_clip'] * 1000:.0f} ms/clip)",
                flush=True,
            )
            if variant in variants:
                results.append(out)
                if on_result is not None:
                    on_result(results)
            if variant == "memorypack":
                exports[seed] = out["export"]
                later = [i for i, (sd, _) in enumerate(ready) if sd > seed]
                at = later[0] if later else len(ready)
                ready[at:at] = [(seed, v) for v in STAGE2 if v in variants]
    return results


def _stats(values: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "per_seed": [float(v) for v in arr],
    }


def summarise(results: list[dict], s: Settings, variants: list[str]) -> dict:
    import numpy as np

    from mempack.eval.drift import edge_count
    from mempack.fidelity.world import describe_world

    beyond = [L for L in s.absences if L > FRAMEPACK_WINDOW_SECTIONS]
    summary = {
        "world": describe_world(world_for(s, 1).config),
        "chance": 1 / s.identities,
        "recall_absences": beyond or s.absences,
        "variants": {},
    }
    for v in variants:
        rows = sorted((r for r in results if r["variant"] == v), key=lambda r: r["seed"])
        if not rows:
            continue
        recall = [float(np.mean([r["recall_by_absence"][L] for L in summary["recall_absences"]])) for r in rows]
        entry = {
            "recall": _stats(recall),
            "recall_by_absence": {L: float(np.mean([r["recall_by_absence"][L] for r in rows])) for L in s.absences},
            "returned": float(np.mean([np.mean(list(r["returned_by_absence"].values())) for r in rows])),
            # identities drawn at the returns, summed over seeds: a model that always draws one is visible here
            "drawn_by_absence": {
                L: np.sum([r["drawn_by_absence"][L] for r in rows], axis=0).tolist() for L in s.absences
            },
            "memory_probe_by_absence": _probe_means(rows, s.absences),
            "drift": _stats([r["drift"] for r in rows]),
            "drift_curve": np.mean([r["drift_curve"] for r in rows], axis=0).tolist(),
            "exposure_gap": _stats([r["exposure_gap"] for r in rows]),
            "exposure_curves": {
                "own_history": np.mean([r["exposure_rollout_curve"] for r in rows], axis=0).tolist(),
                "true_history": np.mean([r["exposure_teacher_curve"] for r in rows], axis=0).tolist(),
            },
            # the error level the rollout ends at (mean over its last 15 % of sections), beside eq. 8's difference
            "late_error": _stats(
                [float(np.mean(r["drift_curve"][-edge_count(len(r["drift_curve"]), 0.15) :])) for r in rows]
            ),
            "train_seconds_per_clip": float(np.mean([r["train_seconds_per_clip"] for r in rows])),
            "train_flops_per_clip": float(np.mean([r["train_flops_per_clip"] for r in rows])),
            "loss": {
                "first": float(np.mean([r["first_loss"] for r in rows])),
                "last": float(np.mean([r["last_loss"] for r in rows])),
            },
            "rollouts": [r["rollout_mp4"] for r in rows if "rollout_mp4" in r],
        }
        if any("drift_sampled_at_guidance_10" in r for r in rows):
            entry["drift_sampled_at_guidance_10"] = _stats([r["drift_sampled_at_guidance_10"] for r in rows])
        summary["variants"][v] = entry
    summary["paired_drift"] = paired(results, "drift", "drift_per_rollout")
    summary["paired_exposure_gap"] = paired(results, "exposure_gap", "exposure_gap_per_video")
    return summary


PAIRS = (
    ("direct", "memorypack"),
    ("direct", "student"),
    ("direct", "teacher_head"),
    ("direct_all", "teacher_all"),
    ("memorypack", "framepack_only"),
)


def paired(results: list[dict], key: str, per_key: str) -> dict:
    """Differences of `key` within a seed, mean ± std over seeds, for the comparisons the paper makes.

    Every variant of a seed rolls out from the same start latents with the same noise, and its stage-2
    variants also start from that seed's memorypack export, so the per-seed difference removes what
    they share; its spread, not the overlap of two variants' error bars, says whether an ordering holds.
    `per_rollout` pools the pairs rollout by rollout (`per_key`: same start and noise) over the seeds.
    """
    import numpy as np

    by = {(r["variant"], r["seed"]): r for r in results}
    out = {}
    for a, b in PAIRS:
        seeds = sorted(seed for (v, seed) in by if v == a and (b, seed) in by)
        if seeds:
            out[f"{a} - {b}"] = _stats([by[(a, seed)][key] - by[(b, seed)][key] for seed in seeds])
            diffs = np.concatenate([np.subtract(by[(a, seed)][per_key], by[(b, seed)][per_key]) for seed in seeds])
            out[f"{a} - {b}"]["per_rollout"] = {
                "mean": float(diffs.mean()),
                "n": int(diffs.size),
                "sem": float(diffs.std(ddof=1) / np.sqrt(diffs.size)) if diffs.size > 1 else 0.0,
            }
    return out


def write_strip(
    results: list[dict], path: Path, variants: tuple[str, ...] = ("framepack_only", "direct")
) -> Path | None:
    """One row of rollout frames per variant (seed 0), a gap between frames: the README's picture."""
    import numpy as np
    from PIL import Image

    rows = []
    for v in variants:
        found = [r for r in results if r["variant"] == v and r["seed"] == 0 and "strip" in r]
        if not found:
            return None
        frames = np.load(found[0]["strip"])
        gap = np.full((frames.shape[1], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for f in frames for x in (f, gap)], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def _probe_means(rows: list[dict], absences: list[int]) -> dict | None:
    """Mean ψ read-out accuracy per absence over seeds (None for a variant without memory)."""
    import numpy as np

    probes = [r.get("memory_probe_by_absence") for r in rows]
    if any(p is None for p in probes):
        return None
    return {L: float(np.mean([p[L] for p in probes])) for L in absences}


def print_table(summary: dict, s: Settings) -> None:
    world = summary["world"]
    print(
        f"world seed {world['seed']}, K = {world['identities']}, {world['camera']} camera: {world['role']} world"
        + (
            " (choices were made on it: not evidence)"
            if world["role"] == "development"
            else " (never used for a choice)"
        )
    )
    absences = s.absences
    head = (
        f"{'variant':<15} {'recall (L>=' + str(min(summary['recall_absences'])) + ')':>17} "
        + " ".join(f"{'L=' + str(L):>6}" for L in absences)
        + f" {'returned':>8} {'psi probe':>9} {'drift':>17} {'exposure gap':>17} {'ms/clip':>8} {'MFLOP/clip':>10}"
    )
    print(head)
    print("-" * len(head))
    for v, e in summary["variants"].items():
        print(
            f"{v:<15} {e['recall']['mean']:>8.3f} ± {e['recall']['std']:<6.3f} "
            + " ".join(f"{e['recall_by_absence'][L]:>6.2f}" for L in absences)
            + f" {e['returned']:>8.2f} {_probe_cell(e, summary['recall_absences']):>9}"
            + f" {e['drift']['mean']:>8.4f} ± {e['drift']['std']:<6.4f}"
            + f" {e['exposure_gap']['mean']:>8.4f} ± {e['exposure_gap']['std']:<6.4f}"
            + f" {e['train_seconds_per_clip'] * 1000:>8.1f} {e['train_flops_per_clip'] / 1e6:>10.1f}"
        )
    for label, name, d in [
        (label, name, d)
        for label, key in (("drift", "paired_drift"), ("gap", "paired_exposure_gap"))
        for name, d in summary.get(key, {}).items()
    ]:
        pooled = d.get("per_rollout", {})
        print(
            f"{label:<5} {name:<28} {d['mean']:+.4f} ± {d['std']:.4f} (per seed: "
            + ", ".join(f"{x:+.4f}" for x in d["per_seed"])
            + ")"
            + (f"; per rollout {pooled['mean']:+.4f} ± {pooled['sem']:.4f} s.e., n={pooled['n']}" if pooled else "")
        )
    print(
        f"chance = 1/K = {summary['chance']:.3f}; recall = right identity returned / return events, mean over "
        f"L in {summary['recall_absences']} (beyond FramePack's 19-frame window); psi probe = held-out ridge "
        f"read-out of the identity from psi over the same L (- : no memory); exposure gap = error of a section made "
        f"from the model's own history minus the same section (same noise) from the true history"
    )


def _probe_cell(entry: dict, absences: list[int]) -> str:
    import numpy as np

    probe = entry.get("memory_probe_by_absence")
    return "-" if probe is None else f"{np.mean([probe[L] for L in absences]):.2f}"


Camera = Literal["static", "moving"]
Stage1Clip = Literal["uniform", "late", "all", "return"]
RANGES = ("train_absence", "visible", "speed")  # the LO,HI flags


def _lo_hi(raw: str | None, flag: str) -> tuple[int, int] | None:
    """A LO,HI flag's value as two integers (None stays None)."""
    if raw is None:
        return None
    try:
        lo, hi = (int(x) for x in raw.split(","))
    except ValueError:
        raise ValueError(f"{flag} must be LO,HI, got {raw!r}") from None
    return lo, hi


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config).

    `--quick` and the rounding of `--events` to a multiple of K are applied here, so --print-config shows
    the values the run uses.
    """

    quick: bool = False  # plumbing smoke run: 1 seed, few steps, small evaluation
    seeds: int = 3  # training seeds per variant
    identities: int = 4  # K object identities (chance = 1/K)
    absence: str = "1,2,4,8"  # absent sections to evaluate, comma-separated
    world_seed: int = 0  # the world (codes, palette); seed 0 is the development world, others are report worlds
    camera: Camera = "static"  # static background, or a camera that pans, zooms and drifts in lighting
    train_absence: str | None = None  # absent sections in training videos, LO,HI (default 1,max(--absence))
    visible: str = "1,2"  # sections in view before leaving, LO,HI
    speed: str = "2,2"  # object speed in latent cells per frame, LO,HI
    distractors: int = 0  # extra always-visible objects
    after_return: int = 0  # sections after the return (longer videos)
    variants: str = ",".join(DEFAULT_VARIANTS)  # comma-separated, from the default's and direct_all, teacher_all
    train_steps: int = 2000  # stage-1 optimizer steps (one video each)
    stage2_steps: int = 96  # stage-2 optimizer steps (one video each)
    stage2_videos: int = 48
    lr: float = 1e-3
    memory_lr: float = 1e-4  # stage 1: learning rate of what writes psi (SemanticPack but its projection)
    # which clip a stage-1 step trains: the library's policies (uniform, late: ∝ i + 1, all: every clip), or
    # return: the video's return section, an oracle curriculum (it reads the world's layout, which no user's
    # data tells)
    stage1_clip: Stage1Clip = "uniform"  # a library clip policy, or return (an oracle curriculum)
    stage2_lr: float = 2e-4
    events: int = 12  # return events per absence length (rounded up to a multiple of K: identities are balanced)
    drift_sections: int = 40
    rollouts: int = 4  # drift rollouts per variant and seed
    exposure_videos: int = 4  # held-out videos for the exposure gap (own vs true history, section by section)
    probe_videos: int = 160  # videos per absence for the psi read-out
    sample_steps: int = 8  # Euler steps per generated section
    width: int = 128  # backbone width (multiple of 32)
    layers: int = 2  # dual- and single-stream blocks each
    student_steps: int = 5
    memory_grad_window: int = -1  # ψ updates a loss reaches (-1: all)
    workers: int = 2  # parallel training processes, one thread each (0: in this process)
    out: str = "bench/results/method_fidelity"  # models and rollout mp4s
    json: str = "bench/results/method_fidelity.json"
    # a str, not `str | None`: "none" must stay the text (the config reads none/null as None)
    mlflow_uri: str = ""  # MLflow tracking URI (default, empty: sqlite under --out; 'none' to skip)

    def __post_init__(self) -> None:
        absences = self.absences  # a malformed --absence or LO,HI flag raises its own error here
        for name in RANGES:
            _lo_hi(getattr(self, name), "--" + name.replace("_", "-"))
        unknown = [v for v in self.variant_list if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        if not absences or min(absences) < 1:
            raise ValueError("--absence needs positive section counts")
        if self.width % 32 or self.width < 64:
            raise ValueError("--width must be a multiple of 32, at least 64")
        if self.probe_videos < 8:
            raise ValueError("--probe-videos must be at least 8 (3/4 fit the read-out, 1/4 score it)")
        if self.rollouts < 1 or self.exposure_videos < 1:
            raise ValueError("--rollouts and --exposure-videos must be >= 1")
        if self.identities < 2 or self.seeds < 1 or self.workers < 0:
            raise ValueError("--identities >= 2, --seeds >= 1, --workers >= 0 (0: no worker processes)")
        if min(self.lr, self.memory_lr, self.stage2_lr) <= 0:
            raise ValueError("--lr, --memory-lr and --stage2-lr must be > 0")
        self.events = -(-self.events // self.identities) * self.identities  # each identity returns equally often
        if self.quick:
            self.seeds, self.train_steps, self.stage2_steps, self.stage2_videos = 1, 40, 6, 4
            self.events, self.drift_sections, self.rollouts, self.sample_steps = self.identities, 4, 1, 2
            self.exposure_videos = 1
            self.probe_videos = 16
            self.width, self.layers = 64, 1

    @property
    def absences(self) -> list[int]:
        """--absence as sorted distinct integers."""
        try:
            return sorted({int(a) for a in self.absence.split(",") if a.strip()})
        except ValueError:
            raise ValueError(f"--absence must be integers, got {self.absence!r}") from None

    @property
    def variant_list(self) -> list[str]:
        """--variants as a list."""
        return [v.strip() for v in self.variants.split(",") if v.strip()]

    @property
    def ranges(self) -> dict[str, tuple[int, int] | None]:
        """--train-absence, --visible and --speed as (LO, HI) (train_absence None: the default)."""
        return {name: _lo_hi(getattr(self, name), "--" + name.replace("_", "-")) for name in RANGES}


def parse_args(argv=None) -> Options:
    from mempack.config import parse_config

    return parse_config(Options, argv, __doc__.splitlines()[0])


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mlflow_uri = (
        None if args.mlflow_uri == "none" else (args.mlflow_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}")
    )
    ranges = args.ranges
    s = Settings(
        args.identities,
        args.absences,
        args.world_seed,
        args.train_steps,
        args.stage2_steps,
        args.stage2_videos,
        args.lr,
        args.stage2_lr,
        args.events,
        args.drift_sections,
        args.rollouts,
        args.sample_steps,
        args.width,
        args.layers,
        args.student_steps,
        args.memory_grad_window,
        str(out.resolve()),
        mlflow_uri,
        ranges["train_absence"],
        ranges["visible"],
        ranges["speed"],
        args.distractors,
        args.after_return,
        args.probe_videos,
        args.memory_lr,
        stage1_clip=args.stage1_clip,
        exposure_videos=args.exposure_videos,
        camera=args.camera,
    )
    try:
        world_for(s, 1)
    except ValueError as err:  # a world that cannot exist: one line, before any process starts
        raise SystemExit(f"error: {err}") from None
    if mlflow_uri:  # create the store (and its schema) once, before parallel workers open it
        from mlflow.tracking import MlflowClient

        from mempack.tracking import get_or_create_experiment

        get_or_create_experiment(MlflowClient(mlflow_uri), "mempack-method-fidelity")  # artifacts beside the store
    began = time.perf_counter()

    def write_partial(results: list[dict]) -> None:
        partial = summarise(results, s, args.variant_list)
        partial.update(partial=True, runs=results)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(partial, indent=2, default=_jsonable))

    results = run_all(s, args.variant_list, list(range(args.seeds)), args.workers, on_result=write_partial)
    summary = summarise(results, s, args.variant_list)
    summary.update(
        seconds=round(time.perf_counter() - began, 1),
        seeds=args.seeds,
        settings=s.__dict__,
        machine=f"{os.cpu_count()} CPUs",
        runs=results,
    )
    print_table(summary, s)
    print(f"total {summary['seconds']:.0f} s")
    strip = write_strip(results, Path(args.json).with_name(f"{Path(args.json).stem}_strip.png"))
    if strip:
        summary["strip_png"] = str(strip)
        print(f"rollout strip (framepack_only above direct): {strip}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2, default=_jsonable))
    print(f"wrote {args.json}")
    return summary


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()

"""Peak RSS per rank of a ZeRO-3 stage-1 run at each phase: build, engine, one step, checkpoint, export.

Two ranks (gloo, one process each) run the training loop's own functions — `build_model`,
`_init_engine`, a teacher-forced step through `video_clip_steps`, `engine.save_checkpoint` and
`_export` — on the `f1-scaled` preset (F1's blocks at ~0.44 B parameters), starting from pretrained
weights on disk as a FramePack-F1 fine-tune does. Each phase's own peak is read from the kernel's
high-water mark, reset before the phase (see mempack/train/rss.py); MALLOC_MMAP_THRESHOLD_ makes freed
tensors leave the resident set. The result projects to `framepack-f1` by bytes per parameter.
Prints a table and writes bench/results/zero3_memory.json (a `--label` run is merged into it, so the
file can hold a before/after pair).

    python bench/zero3_memory.py [--preset f1-scaled] [--double-layers 2 --single-layers 6] [--label after]
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("build", "engine", "step", "checkpoint", "export")


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    preset: str = "f1-scaled"
    workers: int = 2
    double_layers: int | None = None  # dual-stream blocks (default: the preset's)
    single_layers: int | None = None  # single-stream blocks (default: the preset's)
    label: str = "after"  # key of this run in the JSON (e.g. before / after)
    pretrained: str | None = None  # existing export to start from (default: made in a temp folder)
    from_preset: bool = False  # random init (stage 1 without --pretrained)
    out: str = str(RESULTS / "zero3_memory.json")


def scaled_preset(name: str, double_layers: int | None, single_layers: int | None):
    """`name`, or a copy with fewer (or more) dual- and single-stream blocks."""
    import dataclasses

    from mempack.presets import get_preset

    base = get_preset(name)
    if double_layers is None and single_layers is None:
        return base
    t = dict(base.transformer)
    t["num_layers"] = t["num_layers"] if double_layers is None else double_layers
    t["num_single_layers"] = t["num_single_layers"] if single_layers is None else single_layers
    return dataclasses.replace(base, name=f"{name}-{t['num_layers']}x{t['num_single_layers']}", transformer=t)


def rank_main(rank: int, world: int, port: int, spec: str, pretrained: str, out_json: str) -> None:
    """One rank: the phases in order, each measured from a reset high-water mark."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import importlib

    import deepspeed
    import torch

    from bench.rss import PhaseProbe
    from mempack.model import Conditioning, MemoryPackTransformer
    from mempack.presets import get_preset
    from mempack.train import loop, rss
    from mempack.train.config import DistributedConfig, TrainConfig
    from mempack.train.deepspeed_config import resolve
    from mempack.train.forcing import ForcingConfig, video_clip_steps

    name, double_layers, single_layers = json.loads(spec)
    preset = scaled_preset(name, double_layers, single_layers)
    torch.set_num_threads(1)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # as the loop does: no C++ build
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    config = TrainConfig(
        stage=1,
        preset=preset,
        pretrained=pretrained or None,
        distributed=DistributedConfig(zero_stage=3, num_workers=world),
    )
    try:  # shards in the same proportion to the model as SHARD_BYTES to framepack-f1's bf16 weights
        from mempack.train import zero3

        params = sum(p.numel() for p in MemoryPackTransformer.from_preset(preset, device="meta").parameters())
        f1 = sum(p.numel() for p in MemoryPackTransformer.from_preset("framepack-f1", device="meta").parameters())
        zero3.SHARD_BYTES = int(zero3.SHARD_BYTES * params / f1)
    except ImportError:  # the code before this change has no zero3 module
        pass
    ds_config = resolve(config.distributed, config.optim)
    ds_config["zero_optimization"].update(stage3_param_persistence_threshold=0)
    torch.manual_seed(0)
    phase = PhaseProbe(torch.distributed.barrier)
    result: dict = {"rank": rank, "phases": phase.phases}
    result["baseline_bytes"] = rss.current_bytes()
    takes_ds = "ds_config" in inspect.signature(loop.build_model).parameters
    model = phase("build", lambda: loop.build_model(config, ds_config, rank) if takes_ds else loop.build_model(config))
    engine = phase("engine", lambda: loop._init_engine(model, ds_config, False))
    module = engine.module
    p = get_preset(preset)
    g = torch.Generator().manual_seed(1)
    h = w = 8
    cond = Conditioning(
        torch.randn(1, p.max_prompt_tokens, p.text_embed_dim, generator=g),
        torch.ones(1, p.max_prompt_tokens, dtype=torch.int64),
        torch.randn(1, p.pooled_dim, generator=g),
        torch.randn(1, 4, p.image_embed_dim, generator=g),
        torch.randn(1, p.latent_channels, 1, h, w, generator=g),
    )
    clips = torch.randn(2, p.latent_channels, 9, h, w, generator=g)

    def step():
        for s in video_clip_steps(module, clips, cond, ForcingConfig(), generator=g, only_clip=1):
            engine.backward(s.loss)
            engine.step()
            return float(s.loss)

    result["loss"] = phase("step", step)
    with tempfile.TemporaryDirectory() as tmp:
        phase("checkpoint", lambda: engine.save_checkpoint(tmp, tag=loop.CHECKPOINT_TAG))
        phase("export", lambda: loop._export(engine, module, os.path.join(tmp, "model"), rank))
        if rank == 0:
            result["export_files"] = sorted(
                str(f.relative_to(tmp)) for f in Path(tmp, "model").rglob("*") if f.is_file()
            )
    Path(out_json).write_text(json.dumps(result))


def make_pretrained(preset, folder: Path) -> int:
    """Random weights of the preset saved as an export: what the ranks start from."""
    import torch

    from mempack.model import MemoryPackTransformer

    model = MemoryPackTransformer.from_preset(preset, seed=0)
    model.save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return count


def _plan_f1() -> dict:
    """The planner's per-GPU figures for framepack-f1 stage 1 on 8 GPUs, ZeRO-3 bf16 (bench/plan_f1.py's first run)."""
    from bench.plan_f1 import cases
    from mempack.train.deepspeed_config import resolve
    from mempack.train.plan import plan_run

    config = cases()["stage 1 (window 16)"]
    return plan_run(config, resolve(config.distributed, config.optim), (480, 832)).to_dict()


def main(argv=None) -> dict:
    from mempack.config import parse_config

    args = parse_config(Options, argv, __doc__.splitlines()[0])
    from bench.rss import run_ranks

    preset = scaled_preset(args.preset, args.double_layers, args.single_layers)
    spec = json.dumps([args.preset, args.double_layers, args.single_layers])
    with tempfile.TemporaryDirectory() as tmp:
        pretrained = Path(args.pretrained) if args.pretrained else Path(tmp) / "pretrained"
        params = None if args.pretrained or args.from_preset else make_pretrained(preset, pretrained)
        source = "" if args.from_preset else str(pretrained)
        ranks = run_ranks("bench.zero3_memory", args.workers, spec, source)

    from mempack.model import MemoryPackTransformer

    if params is None:
        params = sum(p.numel() for p in MemoryPackTransformer.from_preset(preset, device="meta").parameters())
    f1 = sum(p.numel() for p in MemoryPackTransformer.from_preset("framepack-f1", device="meta").parameters())
    run = {
        "preset": preset.name,
        "parameters": params,
        "workers": args.workers,
        "dtype": "float32",
        "start": "random init" if args.from_preset else "pretrained weights on disk",
        "ranks": ranks,
        "export_files": ranks[0].get("export_files", []),
        "peak_gib": {ph: [round(r["phases"][ph]["peak_bytes"] / 2**30, 3) for r in ranks] for ph in PHASES},
        "peak_bytes_per_param": {
            ph: round(max(r["phases"][ph]["peak_bytes"] - r["baseline_bytes"] for r in ranks) / params, 2)
            for ph in PHASES
        },
        "rise_gib": {
            ph: [round((r["phases"][ph]["peak_bytes"] - r["phases"][ph]["before_bytes"]) / 2**30, 3) for r in ranks]
            for ph in PHASES
        },
    }
    run["projection_framepack_f1"] = {
        "parameters": f1,
        "note": "fp32 bytes/param above the process baseline, measured here, scaled to F1's parameter count "
        f"at {args.workers} ranks; bf16 weights halve the weight/gather terms",
        "peak_gib_per_rank": {ph: round(run["peak_bytes_per_param"][ph] * f1 / 2**30, 1) for ph in PHASES},
    }
    run["planner_framepack_f1"] = _plan_f1()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[args.label] = run
    out.write_text(json.dumps(results, indent=2))

    print(
        f"ZeRO-3, {preset.name} ({params / 1e9:.2f} B parameters), {args.workers} ranks, fp32 on CPU — "
        "peak RSS per rank, GiB"
    )
    print("(peak: the phase's high-water mark; rise: how far above its starting RSS the phase went)")
    print(
        f"{'phase':<12}"
        + "".join(f"{'peak r' + str(r['rank']):>10}{'rise r' + str(r['rank']):>10}" for r in ranks)
        + f"{'B/param':>10}"
    )
    for ph in PHASES:
        print(
            f"{ph:<12}"
            + "".join(f"{p:>10.2f}{q:>10.2f}" for p, q in zip(run["peak_gib"][ph], run["rise_gib"][ph], strict=True))
            + f"{run['peak_bytes_per_param'][ph]:>10.2f}"
        )
    plan = run["planner_framepack_f1"]
    print(
        f"planner, framepack-f1 stage 1 on 8 GPUs (ZeRO-3 bf16, 480x832, checkpointing): "
        f"{plan['total_checkpointed_bytes'] / 2**30:.1f} GiB per GPU; fits {plan['fits_checkpointed']}"
    )
    print(f"wrote {out} [{args.label}]")
    return run


if __name__ == "__main__":
    main()

"""Bytes of a training checkpoint per trained parameter, stage 1 and stage 2, and what crosses the node's disk.

Two ranks (gloo, one process each) run the training loop's own functions — `build_model`, `_init_engine`, one
step through `train_video` with the engine's forward, then `engine.save_checkpoint` — on a scaled F1 preset
(F1's blocks, head width 128; default 1 dual- + 3 single-stream blocks, ~0.12 B parameters), starting from
weights on disk as a FramePack-F1 fine-tune does. For each case it writes the checkpoint as the loop did
before (every parameter, `exclude_frozen_parameters=False`) and as it does now (frozen parameters left out),
sums the files, splits them into DeepSpeed's module states and optimizer states, and reloads the new one
into a fresh engine the way the loop resumes (`load_module_strict=False`, frozen weights from the init
weights) to check the trained weights and the optimizer step came back. The result projects to
framepack-f1 (12.9 B, ~19 M trained in stage 2) by bytes per parameter, beside `checkpoint_size`
(what `train.py --plan` prints).

Node-local disk: before, every checkpoint was written into a temporary folder on the node and copied by Ray
(all of its bytes staged); now it is written into the run's storage (0 bytes staged) or, with
--checkpoint-scratch, into the named scratch disk, uploaded and deleted (this rank's share staged).

    python bench/checkpoint_bytes.py [--dtype bf16] [--double-layers 1 --single-layers 3]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RESULTS = Path(__file__).resolve().parent / "results"
CASES = (  # (stage, ZeRO stage)
    (1, 2),
    (1, 3),
    (2, 2),
    (2, 3),
)


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    preset: str = "f1-scaled"
    double_layers: int = 1
    single_layers: int = 3
    dtype: Literal["bf16", "fp32"] = (
        "bf16"  # training dtype (bf16: what the GPU configs use; DeepSpeed runs it on CPU too)
    )
    workers: int = 2
    out: str = str(RESULTS / "checkpoint_bytes.json")


def rank_main(rank: int, world: int, port: int, spec: str, pretrained: str, work: str, out_json: str) -> None:
    """One rank: every case in turn (build, engine, step, save old and new, reload the new)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import importlib

    import deepspeed
    import torch

    from mempack.model import Conditioning
    from mempack.presets import get_preset
    from mempack.train import loop
    from mempack.train.checkpoint import CHECKPOINT_TAG
    from mempack.train.config import DistributedConfig, TrainConfig
    from mempack.train.deepspeed_config import resolve
    from mempack.train.forcing import ForcingConfig
    from mempack.train.guards import local_tensor
    from mempack.train.step import train_video

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zero3_memory import scaled_preset

    name, double_layers, single_layers, dtype = json.loads(spec)
    preset = scaled_preset(name, double_layers, single_layers)
    p = get_preset(preset)
    torch.set_num_threads(1)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # as the loop does
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    results = []
    for stage, zero_stage in CASES:
        source = {"pretrained": pretrained} if stage == 1 else {"init": pretrained}
        config = TrainConfig(
            stage=stage,
            preset=preset,
            **source,
            distributed=DistributedConfig(zero_stage=zero_stage, num_workers=world),
        )
        ds = resolve(config.distributed, config.optim)
        ds["bf16"] = {"enabled": dtype == "bf16"}
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0

        def engine_of(config=config, ds=ds):
            torch.manual_seed(0)
            model = loop.build_model(config, ds, rank)
            model.set_trainable(config.resolved_trainable())
            return loop._init_engine(model, ds, False, None)

        engine = engine_of()
        module = engine.module
        trained = sum(getattr(q, "ds_numel", q.numel()) for q in module.parameters() if q.requires_grad)
        total = sum(getattr(q, "ds_numel", q.numel()) for q in module.parameters())
        g = torch.Generator().manual_seed(1)
        cast = next(module.parameters()).dtype
        cond = Conditioning(
            torch.randn(1, p.max_prompt_tokens, p.text_embed_dim, generator=g).to(cast),
            torch.ones(1, p.max_prompt_tokens, dtype=torch.int64),
            torch.randn(1, p.pooled_dim, generator=g).to(cast),
            torch.randn(1, 4, p.image_embed_dim, generator=g).to(cast),
            torch.randn(1, p.latent_channels, 1, 8, 8, generator=g).to(cast),
        )
        clips = torch.randn(1, p.latent_channels, 9, 8, 8, generator=g).to(cast)  # one clip: no ψ update (CPU bf16)

        def backward(loss, last, retain, engine=engine):
            engine.set_gradient_accumulation_boundary(last)
            engine.backward(loss, retain_graph=retain)
            engine.step()

        engine.set_train_batch_size(world)
        train_video(module, clips, cond, ForcingConfig(), backward, only_clip=0, generator=g, forward=engine)
        folders = {}
        for label, exclude in (("before", False), ("after", True)):
            folder = Path(work) / f"stage{stage}_zero{zero_stage}_{label}"
            engine.save_checkpoint(
                str(folder), tag=CHECKPOINT_TAG, client_state={"step": 1}, exclude_frozen_parameters=exclude
            )
            torch.distributed.barrier()
            folders[label] = folder
        trained_now = [local_tensor(q).detach().float().clone() for q in module.parameters() if q.requires_grad]
        steps = engine.global_steps
        del engine, module
        resumed = engine_of()
        _, client = resumed.load_checkpoint(str(folders["after"]), tag=CHECKPOINT_TAG, load_module_strict=True)
        restored = [local_tensor(q).detach().float() for q in resumed.module.parameters() if q.requires_grad]
        ok = (
            client["step"] == 1
            and resumed.global_steps == steps
            and all(torch.equal(a, b) for a, b in zip(trained_now, restored, strict=True))
        )
        torch.distributed.barrier()
        del resumed
        if rank == 0:
            row = {
                "stage": stage,
                "zero_stage": zero_stage,
                "parameters": total,
                "trained": trained,
                "restored": bool(ok),
            }
            for label, folder in folders.items():
                files = {str(f.relative_to(folder)): f.stat().st_size for f in folder.rglob("*") if f.is_file()}
                row[label] = {
                    "bytes": sum(files.values()),
                    "optimizer_bytes": sum(v for k, v in files.items() if "optim_states" in k),
                    "module_bytes": sum(v for k, v in files.items() if "model_states" in k),
                    "files": len(files),
                }
            results.append(row)
        else:
            results.append({"restored": bool(ok)})
    Path(out_json).write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _projection(row: dict, f1_total: int, f1_trained: int, weight_bytes: int) -> dict:
    """The measured bytes per parameter, scaled to framepack-f1: the optimizer part by trained parameters,
    the module part by the parameters it holds (every one before, the trained ones after)."""
    out = {}
    for label in ("before", "after"):
        m = row[label]
        module_params = row["trained"] if label == "after" else row["parameters"]
        f1_module = f1_trained if label == "after" else f1_total
        per_module = m["module_bytes"] / module_params
        per_opt = m["optimizer_bytes"] / row["trained"]
        out[label] = {
            "module_bytes_per_param": round(per_module, 3),
            "optimizer_bytes_per_trained": round(per_opt, 3),
            "f1_gb": round((per_module * f1_module + per_opt * f1_trained) / 1e9, 2),
        }
    return out


def main(argv=None) -> dict:
    from mempack.config import parse_config

    args = parse_config(Options, argv, __doc__.splitlines()[0])

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zero3_memory import make_pretrained, scaled_preset

    from mempack.model import MemoryPackTransformer
    from mempack.train.checkpoint import checkpoint_size

    preset = scaled_preset(args.preset, args.double_layers, args.single_layers)
    spec = json.dumps([args.preset, args.double_layers, args.single_layers, args.dtype])
    with tempfile.TemporaryDirectory(prefix="ckpt-bytes-") as tmp:
        pretrained = Path(tmp) / "pretrained"
        make_pretrained(preset, pretrained)
        port = _free_port()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
        }
        outs = [Path(tmp) / f"rank{r}.json" for r in range(args.workers)]
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import checkpoint_bytes as b; b.rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), "
            "sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7])"
        )
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    code,
                    str(r),
                    str(args.workers),
                    str(port),
                    spec,
                    str(pretrained),
                    tmp,
                    str(outs[r]),
                ],
                env=env,
            )
            for r in range(args.workers)
        ]
        codes = [proc.wait() for proc in procs]
        if any(codes):
            raise SystemExit(f"error: a rank failed (exit codes {codes})")
        ranks = [json.loads(o.read_text()) for o in outs]

    f1 = MemoryPackTransformer.from_preset("framepack-f1", device="meta")
    f1_total = sum(q.numel() for q in f1.parameters())
    f1.set_trainable("head")
    f1_head = sum(q.numel() for q in f1.parameters() if q.requires_grad)
    weight_bytes = 2 if args.dtype == "bf16" else 4
    rows = ranks[0]
    for i, row in enumerate(rows):
        row["restored"] = all(r[i]["restored"] for r in ranks)
        f1_trained = f1_total if row["stage"] == 1 else f1_head
        row["framepack_f1"] = _projection(row, f1_total, f1_trained, weight_bytes)
        row["framepack_f1"]["planner_gb"] = round(
            checkpoint_size(f1_total, f1_trained, weight_bytes, row["zero_stage"], ema=False).checkpoint / 1e9, 2
        )
        # node-local disk per checkpoint: before, all of it staged in a temp folder; now none (written into the
        # run's storage), or with --checkpoint-scratch this node's ranks' share, deleted once uploaded
        row["node_local_bytes"] = {
            "before": row["before"]["bytes"],
            "after": 0,
            "after_with_scratch": row["after"]["bytes"],
        }
    run = {
        "preset": preset.name,
        "dtype": args.dtype,
        "workers": args.workers,
        "framepack_f1_parameters": f1_total,
        "framepack_f1_head_parameters": f1_head,
        "cases": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run, indent=2))

    print(
        f"checkpoint bytes, {preset.name} ({rows[0]['parameters'] / 1e9:.3f} B parameters), {args.workers} ranks, "
        f"{args.dtype} on CPU; before = every parameter, after = frozen parameters left out"
    )
    print(
        f"{'stage':>5} {'ZeRO':>4} {'trained':>12} {'before MB':>10} {'after MB':>9} {'B/trained':>10} "
        f"{'F1 before GB':>13} {'F1 after GB':>12} {'--plan GB':>10} {'node disk MB':>13} {'resumes':>8}"
    )
    for row in rows:
        f1_row = row["framepack_f1"]
        print(
            f"{row['stage']:>5} {row['zero_stage']:>4} {row['trained']:>12,} {row['before']['bytes'] / 1e6:>10.1f} "
            f"{row['after']['bytes'] / 1e6:>9.1f} {row['after']['bytes'] / row['trained']:>10.2f} "
            f"{f1_row['before']['f1_gb']:>13.2f} {f1_row['after']['f1_gb']:>12.2f} {f1_row['planner_gb']:>10.2f} "
            f"{row['before']['bytes'] / 1e6:>6.1f} -> 0 {str(row['restored']):>8}"
        )
    print(f"framepack-f1: {f1_total / 1e9:.2f} B parameters, {f1_head / 1e6:.1f} M in the head (stage 2)")
    print(f"wrote {out}")
    return run


if __name__ == "__main__":
    main()

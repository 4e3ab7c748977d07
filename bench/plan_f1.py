"""What FramePack-F1 needs per GPU, by the planner (mempack/train/plan.py): stage 1 and 2 as shipped, with
and without gradient checkpointing, ψ's back-propagation window, batch 2, the EMA and validation videos.

No weights and no GPU: every figure is `train.py --plan`'s for those flags at 480x832 on 8 GPUs. Prints a
table and writes bench/results/plan_f1.json (docs/planning.md quotes it).

    python bench/plan_f1.py
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30
ZERO2 = ROOT / "cluster/deepspeed/zero2_bf16.json"


def cases():
    from mempack.train.config import DistributedConfig, TrainConfig
    from mempack.train.forcing import ForcingConfig

    stage1 = TrainConfig(
        stage=1,
        preset="framepack-f1",
        distributed=DistributedConfig(
            use_gpu=True,
            num_workers=8,
            gradient_checkpointing=True,
            deepspeed=str(ROOT / "cluster/deepspeed/zero3_bf16.json"),
        ),
    )
    stage2 = replace(stage1, stage=2, distributed=replace(stage1.distributed, deepspeed=str(ZERO2)))
    return {
        "stage 1 (window 16)": stage1,
        "stage 1, window 0": replace(stage1, forcing=ForcingConfig(memory_grad_window=0)),
        "stage 1, window 4": replace(stage1, forcing=ForcingConfig(memory_grad_window=4)),
        "stage 1 + EMA": with_parts(stage1, optim={"ema_decay": 0.999}),
        "stage 1 + validation": with_parts(stage1, validation={"every": 500}),
        "stage 1, batch 2": with_parts(stage1, data={"batch_size": 2}),
        "stage 2 (head)": stage2,
        "stage 2 + EMA + validation": with_parts(stage2, optim={"ema_decay": 0.999}, validation={"every": 500}),
    }


def with_parts(config, **parts: dict):
    """`config` with some fields of some of its parts changed: with_parts(c, optim={"ema_decay": 0.999})."""
    return replace(config, **{part: replace(getattr(config, part), **fields) for part, fields in parts.items()})


def main() -> dict:
    from mempack.train.deepspeed_config import resolve
    from mempack.train.plan import plan_run

    rows = {}
    for label, config in cases().items():
        plan = plan_run(config, resolve(config.distributed, config.optim), (480, 832))
        rows[label] = plan.to_dict()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "plan_f1.json"
    out.write_text(json.dumps(rows, indent=2))
    print("framepack-f1, 8 GPUs, bf16, 480x832 — GiB per GPU (planner)")
    head = f"{'run':<28}{'states':>8}{'EMA':>7}{'act':>8}{'act ckpt':>9}{'valid.':>8}{'plain':>8}{'ckpt':>8}  ψ upd"
    print(head)
    for label, r in rows.items():
        states = r["params_bytes"] + r["grads_bytes"] + r["optimizer_bytes"]
        print(
            f"{label:<28}{states / GIB:>8.1f}{r['ema_bytes'] / GIB:>7.1f}{r['activations_bytes'] / GIB:>8.1f}"
            f"{r['activations_checkpointed_bytes'] / GIB:>9.1f}{r['validation_bytes'] / GIB:>8.1f}"
            f"{r['total_plain_bytes'] / GIB:>8.1f}{r['total_checkpointed_bytes'] / GIB:>8.1f}  {r['memory_updates']}"
        )
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()

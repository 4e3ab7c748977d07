"""DeepSpeed configs for plain `deepspeed.initialize`: no "auto" values, numbers everywhere.

On CPU (gloo): ZeRO-2 in fp32 (fp16 is unsupported on CPU) with PyTorch's AdamW (`torch_adam`, so
nothing compiles). On GPU: ZeRO-2 bf16 by default; the user's JSON (e.g. cluster/deepspeed/
zero3_bf16.json for full fine-tuning of 12.9 B parameters) replaces it. The learning rate, clipping
and seeds always come from the training config, so one JSON serves every run. The LR is constant (the
paper's) unless `warmup_steps` asks for DeepSpeed's linear WarmupLR.
"""

from __future__ import annotations

import json
from pathlib import Path

from mempack.train.config import DistributedConfig, OptimConfig


def default_config(use_gpu: bool, zero_stage: int = 2) -> dict:
    """The built-in config for a CPU (tests, demo) or GPU run."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "torch_adam": True},
        },
        "zero_optimization": {"stage": zero_stage, "overlap_comm": use_gpu, "contiguous_gradients": True},
        "gradient_clipping": 1.0,
        "bf16": {"enabled": use_gpu},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def resolve(distributed: DistributedConfig, optim: OptimConfig) -> dict:
    """The DeepSpeed config a run uses: the JSON file or the default (its `distributed` part), with the
    run's lr, weight decay, clipping and warm-up (its `optim` part)."""
    if distributed.deepspeed:
        path = Path(distributed.deepspeed)
        if not path.is_file():
            raise FileNotFoundError(f"DeepSpeed config not found: {path}")
        ds = json.loads(path.read_text())
    else:
        ds = default_config(distributed.use_gpu, distributed.zero_stage)
    if "auto" in json.dumps(ds):
        raise ValueError("DeepSpeed config holds 'auto' values, which only HF Trainer/Accelerate resolve")
    if not distributed.use_gpu:
        ds.pop("fp16", None)
        ds["bf16"] = {"enabled": False}  # fp32 on CPU: exact, and fp16 is unsupported there
    ds.setdefault("optimizer", default_config(distributed.use_gpu)["optimizer"])
    ds["optimizer"].setdefault("params", {})["lr"] = optim.lr
    ds["optimizer"]["params"]["weight_decay"] = optim.weight_decay
    ds["gradient_clipping"] = float(optim.grad_clip)
    if ds.get("bf16", {}).get("enabled"):
        # DeepSpeed skips a step whose gradient norm is inf/NaN only when asked to in bf16 (always in fp16,
        # and in fp32 under ZeRO): the loop counts skipped steps and stops after too many in a row
        ds["bf16"]["check_grad_overflow"] = True
    if optim.warmup_steps > 0:
        ds["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": optim.lr,
                "warmup_num_steps": optim.warmup_steps,
                "warmup_type": "linear",
            },
        }
    else:
        ds.pop("scheduler", None)  # constant LR, the paper's
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1  # set per curriculum bucket (clips per video) in stage 2
    ds.pop("train_batch_size", None)
    return ds


def with_group_rates(ds: dict, groups: list[dict]) -> dict:
    """`ds` with the warm-up scheduler ramping each optimizer group to its own rate (DeepSpeed's WarmupLR
    takes one peak per group; a single number would lift the memory writer to the backbone's rate)."""
    if "scheduler" not in ds or len(groups) < 2:
        return ds
    scheduler = {**ds["scheduler"], "params": {**ds["scheduler"]["params"], "warmup_max_lr": [g["lr"] for g in groups]}}
    return {**ds, "scheduler": scheduler}

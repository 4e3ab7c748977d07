"""What keeps a bad step out of a run: non-finite steps are skipped and counted, and non-finite
weights are never checkpointed or exported.

DeepSpeed already refuses to apply a step whose global gradient norm is inf/NaN (fp16 always; fp32
under ZeRO; bf16 with `check_grad_overflow`, which `deepspeed_config.resolve` sets): the gradients are
dropped and `engine.was_step_applied()` is False. A NaN loss makes NaN gradients, so the same check
catches it. What is left to the loop is to notice, count, and stop a run that only produces such
steps — with one clear error instead of a run that "trains" for hours without changing a weight.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many non-finite steps in a row, or non-finite weights about to be saved."""


class NonFiniteSteps:
    """Counts skipped (non-finite) steps; raises after `limit` in a row."""

    def __init__(self, limit: int, skipped: int = 0):
        self.limit = limit
        self.skipped = skipped  # over the whole run (resumed from the checkpoint's state)
        self.in_a_row = 0

    def record(self, loss: float, step_applied: bool, step: int) -> bool:
        """Record one optimizer step; True when it was good. Raises after `limit` bad steps in a row."""
        good = math.isfinite(loss) and step_applied
        if good:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        log.warning(
            "step %d skipped: non-finite %s (%d in a row)",
            step,
            "loss" if not math.isfinite(loss) else "gradients",
            self.in_a_row,
        )
        if self.in_a_row >= self.limit:
            raise NonFiniteTrainingError(
                f"{self.in_a_row} steps in a row had a non-finite loss or gradients (last at step {step}); "
                "stopping without saving: lower the learning rate, check the data, or raise max_nonfinite_steps"
            )
        return False


def local_tensor(p: nn.Parameter) -> torch.Tensor:
    """The part of a parameter this rank holds: its ZeRO-3 partition, else the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def weights_finite(module: nn.Module) -> bool:
    """Are all weights finite on every rank? (A collective when torch.distributed is initialised.)"""
    ok = all(bool(torch.isfinite(local_tensor(p)).all()) for p in module.parameters())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([1 if ok else 0], device=next(module.parameters()).device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = bool(flag.item())
    return ok

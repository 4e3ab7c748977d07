"""An exponential moving average of the trained weights, kept per rank on the rank's own share.

Under ZeRO-3 each rank averages only its partition of every parameter (1/N of the model, in fp32), so
the EMA costs what one more optimizer moment costs and never needs a gather; under ZeRO-1/2 every rank
holds the whole weights, and the EMA covers the trained parameters only (stage 2: the head). To export,
the EMA values are swapped into the parameters, the normal exporter runs, and the trained values are
swapped back.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mempack.train.guards import local_tensor


class ParameterEMA:
    """ema ← decay · ema + (1 − decay) · θ after every applied optimizer step."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [local_tensor(p).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for p, e in zip(self.params, self.shadow, strict=True):
            e.lerp_(local_tensor(p).float(), 1.0 - self.decay)

    @contextmanager
    def swapped_in(self):
        """The parameters hold the EMA values inside the block, their trained values after it."""
        saved = [local_tensor(p).detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.shadow, strict=True):
                local_tensor(p).copy_(e.to(local_tensor(p).dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    local_tensor(p).copy_(s)

    def save(self, folder: str | Path, rank: int) -> None:
        torch.save([e for e in self.shadow], Path(folder) / f"ema_rank{rank}.pt")

    def load(self, folder: str | Path, rank: int) -> bool:
        """Restore this rank's EMA from a checkpoint folder (our own: see the README's trust boundary)."""
        path = Path(folder) / f"ema_rank{rank}.pt"
        if not path.is_file():
            return False
        shadow = torch.load(path, weights_only=True)
        if [tuple(s.shape) for s in shadow] != [tuple(e.shape) for e in self.shadow]:
            raise ValueError(f"{path} does not match this model's partitions (another world size?)")
        self.shadow = shadow
        return True

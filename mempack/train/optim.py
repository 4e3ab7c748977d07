"""Optimizer parameter groups: the backbone and ψ's projection at `lr`, what writes ψ at `memory_lr`.

Why a separate rate for the memory writer (SemanticPack's Memorize, Squeeze and ψ₀ projections): its
gradients arrive only through the backbone's use of ψ, 5–26× smaller per parameter than the backbone's
and noisy, while Adam moves every parameter by about `lr` whatever its signal. At the backbone's rate the
memory random-walks and forgets what it held; at a tenth of it the same model learns to recall sooner
(docs/method_fidelity.md: after 1,000 return sections, recall 0.50 / 0.58 at one rate, 0.83 / 0.75 at
two; L = 1 / 4). At real scale the direction may flip: a pretrained F1 backbone fine-tunes at
1e-5 while SemanticPack starts from scratch. Either way it is one number, `memory_lr`. ψ's projection into
the backbone (`to_context`) and its gate (`gate`) stay at `lr`: they learn to read ψ, alongside the backbone.
"""

from __future__ import annotations

from torch import nn

from mempack.model import MemoryPackTransformer

TRAINABLE_SCOPES: tuple[str, ...] = ("all", "head")


def resolve_trainable(scope: str | None, stage: int) -> str:
    """What a stage trains: stage 1 the whole network, stage 2 the final norm + output projection
    (the paper's Direct Forcing), unless asked otherwise.

    Stage 2 with "all" is the ablation the paper's head-only choice invites: at a small scale the head
    alone may be too small to absorb what Direct Forcing teaches (docs/method_fidelity.md).
    """
    if scope is None:
        return "all" if stage == 1 else "head"
    if scope not in TRAINABLE_SCOPES:
        raise ValueError(f"trainable must be one of {TRAINABLE_SCOPES}, got {scope!r}")
    return scope


READ_SIDE = ("to_context", "gate")  # how the backbone reads ψ: trained beside the backbone, at `lr`


def memory_writer_parameters(model: MemoryPackTransformer) -> list[nn.Parameter]:
    """SemanticPack's parameters except how the backbone reads ψ (`to_context`, `gate`)."""
    if model.semantic_pack is None:
        return []
    return [p for name, p in model.semantic_pack.named_parameters() if not name.startswith(READ_SIDE)]


def parameter_groups(model: MemoryPackTransformer, lr: float, memory_lr: float | None) -> list[dict]:
    """Trainable parameters as optimizer groups: [{params, lr}, {memory writer, memory_lr}], empty groups
    dropped (stage 2 trains the head only: one group). `memory_lr` None: one rate for everything."""
    writer = {id(p) for p in memory_writer_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in writer], "lr": lr},
        {"params": [p for p in trainable if id(p) in writer], "lr": lr if memory_lr is None else memory_lr},
    ]
    return [g for g in groups if g["params"]]

"""The models the synthetic world's benchmarks and guard train: mempack's own, at the world's size."""

from __future__ import annotations

import torch

from mempack.model import MemoryPackTransformer, SemanticPack
from mempack.model.memorypack import MemoryPackConfig
from mempack.presets import world_preset


def world_model(
    width: int = 128, layers: int = 2, *, memory: bool = True, seed: int = 0, **semantic_pack: object
) -> MemoryPackTransformer:
    """MemoryPack (or FramePack alone, `memory=False`) at `mempack.presets.world_preset(width, layers)`,
    its weights drawn from `seed`; `semantic_pack` overrides SemanticPack's options (ablations).

    ψ's context gate is off by default here: it exists so that stage 1 starts from a pretrained F1 unchanged,
    and these models train from random weights, where there is no pretrained output to keep (with it, the
    guard's 250-step model stays at chance: ψ's weights see gradients scaled by a gate still near 0)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    preset = world_preset(width, layers)
    backbone = HunyuanVideoFramepackTransformer3DModel(**preset.transformer)
    options = {**preset.semantic_pack, "context_gate": False, **semantic_pack}
    pack = SemanticPack(**options) if memory else None
    return MemoryPackTransformer(backbone, pack, MemoryPackConfig(use_semantic_pack=memory))

"""The models the synthetic world's benchmarks and guard train: mempack's own, at the world's size."""

from __future__ import annotations

import torch

from mempack.model import MemoryPackTransformer, SemanticPack
from mempack.model.memorypack import MemoryPackConfig
from mempack.presets import world_preset


def world_model(width: int = 128, layers: int = 2, *, memory: bool = True, seed: int = 0,
                **semantic_pack: object) -> MemoryPackTransformer:
    """MemoryPack (or FramePack alone, `memory=False`) at `mempack.presets.world_preset(width, layers)`,
    its weights drawn from `seed`; `semantic_pack` overrides SemanticPack's options (ablations)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    preset = world_preset(width, layers)
    backbone = HunyuanVideoFramepackTransformer3DModel(**preset.transformer)
    pack = SemanticPack(**{**preset.semantic_pack, **semantic_pack}) if memory else None
    return MemoryPackTransformer(backbone, pack, MemoryPackConfig(use_semantic_pack=memory))

"""The MemoryPack model: FramePack-F1 backbone, history packing, SemanticPack, RoPE indices."""

from mempack.model.history import HistoryLayout, PackedHistory, pack_history, rope_indices
from mempack.model.memorypack import (
    Conditioning,
    MemoryPackConfig,
    MemoryPackTransformer,
    build_backbone,
)
from mempack.model.semantic_pack import SemanticMemory, SemanticPack

__all__ = [
    "Conditioning",
    "HistoryLayout",
    "MemoryPackConfig",
    "MemoryPackTransformer",
    "PackedHistory",
    "SemanticMemory",
    "SemanticPack",
    "build_backbone",
    "pack_history",
    "rope_indices",
]

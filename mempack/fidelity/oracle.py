"""The oracle-memory model of the method-fidelity benchmark: MemoryPack whose ψ is the world's truth."""

from __future__ import annotations

import torch

from mempack.fidelity.world import CHANNELS, World
from mempack.model import Conditioning, MemoryPackTransformer
from mempack.model.semantic_pack import SemanticMemory


class OracleMemoryTransformer(MemoryPackTransformer):
    """MemoryPack whose ψ is the world's ground truth: the benchmark's ceiling for memory recall.

    ψ is one token holding the code of the identity the world's decoder last saw in a finished section
    (zeros before any), written into the first `CHANNELS` of SemanticPack's width; SemanticPack's learned
    projection into the backbone (`to_context`) and the backbone train as usual. Whatever recall this
    variant reaches is what the backbone and sampler achieve when the memory holds the answer, so a gap
    between it and `memorypack` is the part that learning Memorize/Squeeze has not closed.

    `identity_share` < 1 adds one fixed vector, the same in every video, so that the code is only that
    share of the token's energy: what a learned ψ looks like (untrained, ~95 % of its energy is the same
    in every video and the identity explains ≤ 0.1 %, `mempack.eval.fidelity.memory_energy`). It measures
    how fast the backbone learns to read a memory that holds the answer faintly, which a linear read-out
    still finds perfectly.
    """

    def __init__(self, backbone, semantic_pack, config, world: World, identity_share: float = 1.0):
        if not 0.0 < identity_share <= 1.0:
            raise ValueError(f"identity_share must be in (0, 1], got {identity_share}")
        super().__init__(backbone, semantic_pack, config)
        self.world = world
        self.identity_share = identity_share

    def _constant(self, like: torch.Tensor) -> torch.Tensor:
        """The fixed vector every token carries: zero at share 1, else |code|²·(1 − share)/share of energy."""
        g = torch.Generator().manual_seed(20_000 + self.world.config.seed)
        direction = torch.randn(like.shape[-1], generator=g)
        energy = float(self.world.codes[0].square().sum()) * (1 - self.identity_share) / self.identity_share
        return (direction / direction.norm() * energy**0.5).to(like)

    def initial_memory(self, cond: Conditioning) -> SemanticMemory | None:
        batch = cond.start_latent.shape[0]
        dim = self.semantic_pack.config.dim
        tokens = torch.zeros(batch, 1, dim, device=cond.start_latent.device, dtype=self.semantic_pack.dtype)
        tokens = tokens + self._constant(tokens)
        return SemanticMemory(tokens, torch.ones(batch, 1, dtype=torch.bool, device=tokens.device), 0)

    def update_memory(self, memory: SemanticMemory | None, segment_latents: torch.Tensor) -> SemanticMemory | None:
        if memory is None:
            return None
        tokens = memory.tokens.detach().clone()
        whole = slice(0, segment_latents.shape[2])
        for b in range(segment_latents.shape[0]):
            seen = self.world.identity_in(segment_latents[b].detach().float().cpu(), whole)
            if seen is not None:
                tokens[b, 0] = self._constant(tokens)
                tokens[b, 0, :CHANNELS] += self.world.codes[seen].to(tokens)
        return SemanticMemory(tokens, memory.mask, memory.step + 1)

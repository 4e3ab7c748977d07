"""ψ enters the backbone through one forward hook on `image_projection`, however many MemoryPackTransformers
wrap that backbone (training's model and the validation pipeline's, a benchmark's variants): the hooks do not
pile up, a dropped wrapper is freed, and every wrapper still adds its ψ."""

from __future__ import annotations

import gc
import weakref

import torch
from test_model import WINDOW, C, H, W, make_cond, open_gate

from mempack.model import MemoryPackTransformer, pack_history


def test_three_wrappers_of_one_backbone_share_one_hook_and_each_adds_psi():
    first = open_gate(MemoryPackTransformer.from_preset("tiny", seed=0))  # ψ at work, not gated off
    wrappers = [first, *(MemoryPackTransformer(first.backbone, first.semantic_pack, first.config) for _ in range(2))]
    assert len(first.backbone.image_projection._forward_hooks) == 1
    cond = make_cond(seed=4)
    packed = pack_history(cond.start_latent, torch.randn(1, C, 14, H, W))
    noisy, t = torch.randn(1, C, WINDOW, H, W), torch.tensor([0.6])
    with torch.no_grad():
        without = first(noisy, t, cond, packed, memory=None)
        outputs = [w(noisy, t, cond, packed, memory=w.initial_memory(cond)) for w in wrappers]
    assert all(torch.equal(out, outputs[0]) for out in outputs)  # same weights, same ψ: the same prediction
    assert (outputs[0] - without).abs().max().item() > 1e-4  # and ψ did enter, through every wrapper


def test_a_dropped_wrapper_is_freed():
    model = MemoryPackTransformer.from_preset("tiny", seed=0)
    dropped = weakref.ref(MemoryPackTransformer(model.backbone, model.semantic_pack, model.config))
    gc.collect()
    assert dropped() is None  # the backbone's hook holds no wrapper alive

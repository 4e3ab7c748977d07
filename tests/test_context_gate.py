"""ψ's gate: stage 1 starts from FramePack-F1 itself, and still learns ψ.

A fresh SemanticPack on given backbone weights leaves the backbone's output unchanged (to fp32 round-off:
ψ's tokens are extra rows in the blocks' matrix products), only the gate gets a gradient at the first step,
every SemanticPack parameter gets one from the second step on, gradient checkpointing recomputes the same
gate, and exports written before the gate existed load ungated, as they were trained.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mempack.model import MemoryPackTransformer, SemanticPack, build_backbone, pack_history
from mempack.presets import TINY
from tests.test_model import WINDOW, C, H, W, make_cond, open_gate

ROUND_OFF = 1e-6  # fp32, outputs of order 1


def _inputs(batch: int = 1, seed: int = 3):
    cond = make_cond(batch=batch, seed=seed)
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(batch, C, 14, H, W, generator=g)
    noisy = torch.randn(batch, C, WINDOW, H, W, generator=g)
    segment = torch.randn(batch, C, WINDOW, H, W, generator=g)
    return cond, pack_history(cond.start_latent, history), noisy, segment


def _fresh(backbone_seed: int = 7, **overrides) -> MemoryPackTransformer:
    torch.manual_seed(backbone_seed)
    backbone = build_backbone("tiny")
    torch.manual_seed(1000 + backbone_seed)
    return MemoryPackTransformer(backbone, SemanticPack(**{**TINY.semantic_pack, **overrides}))


@pytest.mark.parametrize("batch", [1, 2])
def test_a_fresh_semantic_pack_leaves_the_backbone_unchanged(batch):
    model = _fresh()
    cond, packed, noisy, segment = _inputs(batch)
    t = torch.full((batch,), 0.6)
    with torch.no_grad():
        f1 = model(noisy, t, cond, packed, memory=None)  # the backbone alone (bit-identical to diffusers)
        psi0 = model.initial_memory(cond)
        psi1 = model.update_memory(psi0, segment)
        outputs = [model(noisy, t, cond, packed, memory) for memory in (psi0, psi1)]
        ungated = _fresh(context_gate=False)  # the same weights, ψ in F1's softmax: what the gate prevents
        before = ungated(noisy, t, cond, packed, ungated.initial_memory(cond))
    for out in outputs:
        assert (out - f1).abs().max().item() <= ROUND_OFF
    assert (before - f1).abs().max().item() > 1e-3  # an ungated fresh ψ perturbs F1 by far more


def test_step_one_trains_the_gate_and_step_two_every_psi_parameter():
    model = _fresh()
    cond, packed, noisy, segment = _inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = model.semantic_pack
    grads, gates = [], []
    for _ in range(2):
        optimizer.zero_grad()
        memory = model.update_memory(model.initial_memory(cond), segment)
        model(noisy, torch.tensor([0.6]), cond, packed, memory).square().mean().backward()
        grads.append({n: (0.0 if p.grad is None else p.grad.abs().sum().item()) for n, p in sp.named_parameters()})
        optimizer.step()
        gates.append(sp.gate().item())
    first, second = grads
    assert first["gate.value"] > 0
    assert {n for n, g in first.items() if g > 0} == {"gate.value"}  # ψ's other weights: exactly zero
    assert abs(gates[0]) == pytest.approx(1e-3 * sp.gate.gain, rel=1e-3)  # Adam's first step: lr · gain
    assert all(g > 0 for g in second.values()), [n for n, g in second.items() if g == 0]


def test_gradient_checkpointing_recomputes_the_same_gate():
    cond, packed, noisy, segment = _inputs()
    grads = []
    for checkpointing in (False, True):
        model = open_gate(_fresh(), 0.5)
        if checkpointing:
            model.backbone.enable_gradient_checkpointing()
        memory = model.update_memory(model.initial_memory(cond), segment)
        model(noisy, torch.tensor([0.6]), cond, packed, memory).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-7, rtol=1e-5, msg=name)


def test_an_export_from_before_the_gate_loads_ungated(tmp_path):
    """Its SemanticPack config has no `context_gate` and its weights no gate: it loads as it was trained."""
    model = _fresh(context_gate=False)
    folder = model.save_pretrained(tmp_path / "old")
    config_path = folder / "semantic_pack" / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("context_gate")
    config_path.write_text(json.dumps(config))
    assert not any("gate" in k for k in load_file(folder / "semantic_pack" / "diffusion_pytorch_model.safetensors"))
    loaded = MemoryPackTransformer.from_pretrained(folder)
    assert loaded.semantic_pack.gate is None and loaded.semantic_pack.config.context_gate is False
    cond, packed, noisy, _ = _inputs()
    with torch.no_grad():
        a = model(noisy, torch.tensor([0.6]), cond, packed, model.initial_memory(cond))
        b = loaded(noisy, torch.tensor([0.6]), cond, packed, loaded.initial_memory(cond))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_gated_export_round_trips_its_gate(tmp_path):
    model = _fresh()
    with torch.no_grad():
        model.semantic_pack.gate.value.fill_(0.25)
    loaded = MemoryPackTransformer.from_pretrained(model.save_pretrained(tmp_path / "new"))
    assert loaded.semantic_pack.gate.value.item() == 0.25


def test_the_backbone_weights_and_names_are_untouched():
    """Processors are not modules: the backbone's state dict is diffusers' (F1 weights load as they are)."""
    plain = build_backbone("tiny")
    model = _fresh()
    assert list(model.backbone.state_dict()) == list(plain.state_dict())
    sp_names = [n for n, _ in model.semantic_pack.named_parameters()]
    assert "gate.value" in sp_names and model.semantic_pack.gate.value.item() == 0.0


def test_the_gate_is_an_architecture_setting_kept_by_the_export(tmp_path):
    """`--set model.context_gate=false` / `model.gate_gain=G` build the model so, the export keeps them, and a
    stage-1 run from that export with another gain computes what the export did (g = gain · value is kept)."""
    from mempack.config import load_config
    from mempack.train.config import ArchitectureConfig, TrainConfig
    from mempack.train.loop import build_model

    off = build_model(load_config(TrainConfig(stage=1), None, ["model.context_gate=false"]))
    assert off.semantic_pack.gate is None and off.semantic_pack.config.context_gate is False
    model = build_model(load_config(TrainConfig(stage=1), None, ["model.gate_gain=10"]))
    assert model.semantic_pack.gate.gain == 10.0
    with torch.no_grad():
        model.semantic_pack.gate.value.fill_(0.03)  # g = 0.3: ψ reaches the output
    folder = model.save_pretrained(tmp_path / "export")
    assert json.loads((folder / "semantic_pack" / "config.json").read_text())["gate_gain"] == 10.0
    cond, packed, noisy, _ = _inputs()

    def output(m):
        with torch.no_grad():
            return m(noisy, torch.tensor([0.6]), cond, packed, m.initial_memory(cond))

    again = build_model(TrainConfig(stage=1, pretrained=str(folder), model=ArchitectureConfig(gate_gain=100.0)))
    assert again.semantic_pack.gate.gain == 100.0 and float(again.semantic_pack.gate().detach()) == pytest.approx(0.3)
    torch.testing.assert_close(output(again), output(model), atol=ROUND_OFF, rtol=0)
    ungated = build_model(TrainConfig(stage=1, pretrained=str(folder), model=ArchitectureConfig(context_gate=False)))
    assert ungated.semantic_pack.gate is None and (output(ungated) - output(model)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="model.gate_gain"):
        ArchitectureConfig(gate_gain=0.0)

"""ψ's gate into the backbone: a fresh SemanticPack leaves FramePack-F1's output unchanged.

ψ joins the backbone as extra context tokens (`memorypack.py`). Without a gate, even zero-valued ψ tokens
change F1: each block's AdaLN shift gives them keys, so they take a share of every query's softmax and
dilute what F1 attends to. A fresh SemanticPack (up to 985 tokens at the real preset) would make stage 1
start from a perturbed F1.

So each backbone attention splits its keys: F1's own context and latents in one softmax (exactly the
attention F1 computes without ψ), ψ's tokens in a second one, and adds the second scaled by a learnable
scalar g that starts at 0 (the zero-initialised gate of Flamingo's cross-attention, or IP-Adapter's
decoupled attention; `ContextGate` says why g carries a gain):

    out = attention(q, K_F1, V_F1) + g · attention(q, K_ψ, V_ψ)

At g = 0 the output is F1's; ∂out/∂g = attention(q, K_ψ, V_ψ) ≠ 0, so the first step moves g, and from the
second step on every ψ parameter gets gradients through g. The extra attention reads only ψ's tokens: its
cost is (ψ tokens / keys) of the backbone's attention per block, linear in the sequence.

How it reaches the blocks without forking diffusers: a `HunyuanVideoAttnProcessor2_0` subclass installed
with diffusers' processor API on each dual- and single-stream block (processors are not modules, so the
backbone's weights and names are untouched). The processor learns the number of ψ tokens and g from the
forward's `temb` tensor, the one object every block of a backbone forward receives: the first block's
pre-hook tags it with the state `MemoryPackTransformer` holds pending (`gated`), and gradient checkpointing
re-runs a block with the same `temb` object, so the recomputation, which runs after the forward has ended,
sees the same gate.

Why the tag goes on at the blocks and not where `temb` is made (`time_text_embed`'s output): under ZeRO-3
DeepSpeed's own forward hooks replace every module's output tensors with new ones (its pre-backward
functions), so a tag put on in an earlier forward hook is gone before the blocks see `temb`: ψ's tokens then
joined F1's softmax ungated and the gate got no gradient (1e-5 in the loss, 0.45 % in the gradient norm of a
tiny stage-1 step). The block pre-hook runs first (`prepend`), before DeepSpeed's, on the object the
transformer's forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from torch import nn

TAG = "_mempack_memory_gate"  # the attribute `temb` carries through the blocks
PENDING = "_mempack_gate_pending"  # the backbone's `_Pending`, set by `install`


class ContextGate(nn.Module):
    """g = gain · value, ψ's weight in the backbone's attention: one learnable scalar, 0 at initialisation.

    Why a gain: Adam moves a parameter by about its learning rate per step whatever the gradient's size, so
    a bare gate fine-tuned at F1's 1e-5 would need ~10⁵ steps to open, and for that long ψ's own weights
    would get gradients scaled by g ≈ 0. With gain 100 the gate moves ~100 × lr per step (1e-3 at 1e-5),
    opening over about a thousand steps; at 0 it is exact whatever the gain.
    """

    def __init__(self, gain: float = 100.0):
        super().__init__()
        self.gain = gain
        self.value = nn.Parameter(torch.zeros(1))  # shape [1], not []: ZeRO-3 flattens parameters

    def forward(self) -> torch.Tensor:
        # a new tensor (not the parameter itself): under ZeRO-3 the parameter is released after this call,
        # while the blocks, and their recomputation under gradient checkpointing, still read g
        return self.value * self.gain


@dataclass(frozen=True)
class GateState:
    """What one backbone forward tells every block: ψ's tokens lead the context stream, weighted by g."""

    tokens: int
    gate: torch.Tensor


class _Pending:
    """The state the next backbone forward's blocks take: one per backbone, shared by its blocks' hooks (a plain
    object, so the backbone's modules and weights are untouched)."""

    state: GateState | None = None


@contextmanager
def gated(backbone: nn.Module, state: GateState | None) -> Iterator[None]:
    """Backbone forwards inside this block attend to ψ's `state.tokens` leading tokens with weight `state.gate`."""
    pending = getattr(backbone, PENDING)
    pending.state = state
    try:
        yield
    finally:
        pending.state = None


class GatedMemoryAttnProcessor(HunyuanVideoAttnProcessor2_0):
    """diffusers' HunyuanVideo joint attention with ψ's keys in their own softmax, weighted by g.

    `state` is set by the block's pre-hook from its `temb`; with no ψ tokens the parent processor runs.
    """

    def __init__(self):
        super().__init__()
        self.state: GateState | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        state = self.state
        if state is None or state.tokens == 0 or encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        latent = hidden_states.shape[1]
        query, key, value = _joint_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        memory = slice(latent, latent + state.tokens)  # ψ leads the context: the image_projection hook puts it first

        def f1_part(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :latent], x[:, memory.stop :]], dim=1)

        mask_f1 = mask_memory = None
        if attention_mask is not None:  # [B, 1, 1, keys] (a batch of different prompt lengths)
            mask_f1 = torch.cat([attention_mask[..., :latent], attention_mask[..., memory.stop :]], dim=-1)
            mask_memory = attention_mask[..., memory]
        attend = dict(
            dropout_p=0.0, is_causal=False, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        out = dispatch_attention_fn(query, f1_part(key), f1_part(value), attn_mask=mask_f1, **attend)
        # ψ's keys and values as copies (M tokens): views would keep the whole sequence's k and v alive for backward
        read = dispatch_attention_fn(
            query, key[:, memory].clone(), value[:, memory].clone(), attn_mask=mask_memory, **attend
        )
        out = (out + state.gate.to(out.dtype) * read).flatten(2, 3).to(query.dtype)
        out, context = out[:, :latent], out[:, latent:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            context = attn.to_add_out(context)
        return out, context


def _joint_qkv(attn, hidden: torch.Tensor, context: torch.Tensor, rope) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values [B, latent + context, heads, head_dim] of the joint sequence, made as the
    parent processor makes them: QK RMS norm, RoPE on the latent tokens only, the dual-stream blocks'
    context through their own (`add_*`) projections, the single-stream blocks' through the shared ones."""
    latent, separate = hidden.shape[1], attn.add_q_proj is not None
    x = hidden if separate else torch.cat([hidden, context], dim=1)
    parts = (
        (attn.to_q, attn.norm_q, attn.add_q_proj, attn.norm_added_q),
        (attn.to_k, attn.norm_k, attn.add_k_proj, attn.norm_added_k),
        (attn.to_v, None, attn.add_v_proj, None),
    )
    out = []
    for project, norm, project_context, norm_context in parts:
        t = project(x).unflatten(2, (attn.heads, -1))
        t = t if norm is None else norm(t)
        if rope is not None and project is not attn.to_v:
            t = torch.cat([apply_rotary_emb(t[:, :latent], rope, sequence_dim=1), t[:, latent:]], dim=1)
        if separate:
            c = project_context(context).unflatten(2, (attn.heads, -1))
            t = torch.cat([t, c if norm_context is None else norm_context(c)], dim=1)
        out.append(t)
    return tuple(out)


def install(backbone: nn.Module) -> int:
    """Give every dual- and single-stream block a gated processor, fed from its `temb` by a pre-hook
    (the same `temb` object comes back when gradient checkpointing recomputes the block). Returns the
    number of blocks."""
    blocks = list(backbone.transformer_blocks) + list(backbone.single_transformer_blocks)
    if hasattr(backbone, PENDING):  # one set of processors and hooks per backbone
        return len(blocks)
    pending = _Pending()
    setattr(backbone, PENDING, pending)
    for block in blocks:
        processor = GatedMemoryAttnProcessor()
        block.attn.set_processor(processor)
        # first among the block's pre-hooks: ZeRO-3's, registered later, replace the block's input tensors
        block.register_forward_pre_hook(_feed(processor, pending), prepend=True)
    return len(blocks)


def _feed(processor: GatedMemoryAttnProcessor, pending: _Pending):
    def hook(module: nn.Module, args: tuple) -> None:
        temb = args[2] if len(args) > 2 else None  # (hidden, context, temb, …), as the backbone calls its blocks
        if temb is None:
            processor.state = None
            return
        if not hasattr(temb, TAG):  # the forward's first block; later blocks and recomputations find the tag
            setattr(temb, TAG, pending.state)
        processor.state = getattr(temb, TAG)

    return hook

"""SemanticPack: the long-term memory ψ of MemoryPack (paper §3.1, appendix A.1).

ψ₀ is the prompt's features joined with the reference image's features, projected to the memory
width (`init="zero"` replaces it with zeros: the paper's ablation). After each finished segment xⁿ:

* **Memorize** patchifies what it reads of the segment, adds fixed (frame, row, column) positions,
  runs self-attention inside fixed windows of `window_frames` latent frames (never across the whole
  history, so the cost is that of one segment), and pools each window to `tokens_per_window`
  embeddings with learned attention queries.
* **Squeeze** is cross-attention + residual + norm (+ a feed-forward block) that folds the
  Memorize output and ψₙ into ψₙ₊₁. Structure A (default): query = Memorize(xⁿ), key/value = ψₙ.
  Structure B: query = ψₙ, key/value = Memorize(xⁿ). Structure C: as B, but the first update's
  query is ψ₀ joined with the first segment's Memorize output.

Three departures from the paper's eq. 1 and its input make the memory trainable on the synthetic world
(docs/method_fidelity.md measures each; two of them are exactly right only where the background is static,
which the moving-camera world tests); each can be set back to the literal reading:

Each option is named after what it computes; the names of earlier exports (`"novelty"`, `"salience"`) still
load (`OPTION_ALIASES`).

* `memorize_input="minus_start_latent"`: Memorize reads the segment minus the start latent, which
  FramePack keeps in every forward anyway. ψ then spends its capacity on what the start frame does not hold; read
  literally (`"segment"`), ψ's video-to-video variation is mostly the static background, which the
  backbone learns to ignore, and the rest of ψ goes with it.
* `pooling="input_energy"`: each window's pooling attention is biased by the log of each token's input
  energy (the energy of what Memorize reads: the difference from the start latent by default), so a small new object
  is not averaged away among dozens of unchanged tokens (`"learned"`:
  queries alone, which at initialisation pool almost uniformly: an object covering 1/16 of a frame
  held 0.1 % of ψ's energy).
* `carry=True`: ψₙ₊₁ = (Squeeze(ψₙ, Memorize(xⁿ)) + ψₙ)/√2 whenever both have the same tokens (structure
  A after its first update; B; C after its first), a residual path through time. Without it,
  structure A rebuilds ψ from the newest segment each section and what was seen fades about tenfold per
  update at initialisation, so after four absent sections nothing is left for gradients to amplify.

Every update reads one segment and a ψ of fixed size, so its cost does not grow with the video:
total cost is linear in the number of segments. ψ is read by the backbone through
`context_tokens`, a projection to the backbone's width (see `memorypack.py` for how it enters), weighted
by `context_gate`, a learnable scalar that starts at 0 so that a fresh SemanticPack leaves F1 unchanged
(`context_gate.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mempack.model.context_gate import ContextGate

Structure = Literal["A", "B", "C"]
MEMORIZE_INPUTS = ("minus_start_latent", "segment")
POOLINGS = ("input_energy", "learned")
OPTION_ALIASES = {"memorize_input": {"novelty": "minus_start_latent"}, "pooling": {"salience": "input_energy"}}


def canonical_option(name: str, value: str) -> str:
    """An option's current name for `value` (earlier exports' configs say "novelty" and "salience")."""
    return OPTION_ALIASES.get(name, {}).get(value, value)


@dataclass
class SemanticMemory:
    """ψ: memory tokens [B, M, D], which of them are real [B, M] (bool), updates so far, and the start
    latent [B, C, 1, H, W] that Memorize subtracts (None when Memorize reads whole segments)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    step: int = 0
    anchor: torch.Tensor | None = None

    def detach(self) -> SemanticMemory:
        """Cut the graph between clips (stage 2 trains only the head; stage 1 may keep a window)."""
        return SemanticMemory(self.tokens.detach(), self.mask, self.step, self.anchor)


def sincos_positions(frames: int, height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 3-D sine/cosine positions [frames, height·width, dim] for (frame, row, column).

    Each axis gets an even share of `dim` (any remainder stays zero). Computed for any size, so one
    SemanticPack reads every resolution bucket; Memorize needs them because self-attention and
    pooling are otherwise blind to *where* in the segment an object sits.
    """
    share = (dim // 3) // 2 * 2
    out = torch.zeros(frames, height, width, dim, device=device, dtype=torch.float32)
    if share == 0:
        return out.reshape(frames, height * width, dim).to(dtype)
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(share // 2, device=device, dtype=torch.float32) / (share // 2))
    for axis, size in enumerate((frames, height, width)):
        angle = torch.arange(size, device=device, dtype=torch.float32)[:, None] * freqs[None]
        emb = torch.cat([angle.sin(), angle.cos()], dim=-1)  # [size, share]
        shape = [1, 1, 1, share]
        shape[axis] = size
        out[..., axis * share : (axis + 1) * share] += emb.reshape(shape)
    return out.reshape(frames, height * width, dim).to(dtype)


class Memorize(nn.Module):
    """Windowed self-attention over one segment's tokens, pooled to a compact set of embeddings.

    Tokens carry fixed (frame-in-window, row, column) positions. Each window of `window_frames`
    frames is pooled by `tokens_per_window` learned queries that attend over all its tokens — a
    learned summary rather than an average of raster spans that would mix the end of one row or
    frame with the start of the next. Given `salience` (each token's input energy), the pooling
    logits are biased by its log, so the queries start from an energy-weighted summary.
    """

    def __init__(self, dim: int, num_heads: int, num_layers: int, window_frames: int, tokens_per_window: int):
        super().__init__()
        self.window_frames = window_frames
        self.tokens_per_window = tokens_per_window
        self.num_heads = num_heads
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(tokens_per_window, dim) * dim**-0.5)
        self.pool = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], salience: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [B, T, N, D] (frames × spatial tokens of a `grid` = (h, w)), optional salience [B, T, N]
        (≥ 0) → [B, windows · tokens_per_window, D]."""
        b, t, n, d = tokens.shape
        positions = sincos_positions(self.window_frames, grid[0], grid[1], d, tokens.device, tokens.dtype)
        windows = tokens.split(self.window_frames, dim=1)
        saliences = [None] * len(windows) if salience is None else salience.split(self.window_frames, dim=1)
        pooled = []
        for window, energy in zip(windows, saliences, strict=True):
            frames = window.shape[1]
            x = self.blocks((window + positions[:frames]).reshape(b, frames * n, d))
            query = self.queries.to(x.dtype)[None].repeat(b, 1, 1)  # a copy: no-grad views of a leaf still require grad
            bias = None if energy is None else self._salience_bias(energy.reshape(b, frames * n)).to(x.dtype)
            summary, _ = self.pool(query, x, x, attn_mask=bias, need_weights=False)
            pooled.append(summary + query)
        return self.norm(torch.cat(pooled, dim=1))

    def _salience_bias(self, energy: torch.Tensor) -> torch.Tensor:
        """Additive pooling logits [B·heads, queries, tokens] = log(energy + 10 % of the window's mean).

        Scale-free (latents of any VAE scale get the same weights); the floor keeps near-silent tokens
        in play and makes a window where nothing stands out pool uniformly, as the queries alone would.
        """
        floor = 0.1 * energy.mean(dim=1, keepdim=True) + torch.finfo(energy.dtype).tiny
        bias = torch.log(energy + floor)  # [B, tokens]
        bias = bias[:, None, :].expand(-1, self.tokens_per_window, -1)
        return bias.repeat_interleave(self.num_heads, dim=0)


class Squeeze(nn.Module):
    """Cross-attention with residual and norm, then a feed-forward block: one memory write."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, kv_mask: torch.Tensor | None) -> torch.Tensor:
        padding = None if kv_mask is None else ~kv_mask
        attended, _ = self.attn(query, key_value, key_value, key_padding_mask=padding, need_weights=False)
        x = self.norm1(query + attended)
        return self.norm2(x + self.ff(x))


class SemanticPack(ModelMixin, ConfigMixin):
    """The learned long-term memory: ψ₀ from prompt ⊕ image, ψₙ₊₁ = Squeeze(ψₙ, Memorize(xⁿ))."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        text_embed_dim: int = 4096,
        image_embed_dim: int = 1152,
        context_dim: int = 3072,
        dim: int = 1024,
        num_heads: int = 16,
        patch_size: int = 4,
        window_frames: int = 3,
        tokens_per_window: int = 64,
        memorize_layers: int = 2,
        structure: str = "A",
        init: str = "prompt_image",
        memorize_input: str = "minus_start_latent",
        pooling: str = "input_energy",
        carry: bool = True,
        context_gate: bool = True,
        gate_gain: float = 100.0,
    ):
        super().__init__()
        if structure not in ("A", "B", "C"):
            raise ValueError(f"structure must be A, B or C, got {structure!r}")
        if init not in ("prompt_image", "zero"):
            raise ValueError(f"init must be 'prompt_image' or 'zero', got {init!r}")
        memorize_input = canonical_option("memorize_input", memorize_input)
        pooling = canonical_option("pooling", pooling)
        if memorize_input not in MEMORIZE_INPUTS:
            raise ValueError(f"memorize_input must be one of {MEMORIZE_INPUTS}, got {memorize_input!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.register_to_config(memorize_input=memorize_input, pooling=pooling)  # saved under today's names
        self.text_in = nn.Linear(text_embed_dim, dim)
        self.image_in = nn.Linear(image_embed_dim, dim)
        self.patchify = nn.Conv3d(latent_channels, dim, (1, patch_size, patch_size), (1, patch_size, patch_size))
        self.memorize = Memorize(dim, num_heads, memorize_layers, window_frames, tokens_per_window)
        self.squeeze = Squeeze(dim, num_heads)
        self.to_context = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, context_dim))
        # ψ's weight in the backbone's attention, 0 at init: F1 starts unchanged (context_gate.py); False: ψ's
        # tokens share F1's softmax ungated (exports written before the gate existed load that way)
        self.gate = ContextGate(gate_gain) if context_gate else None

    def configure_gate(self, enabled: bool, gain: float) -> None:
        """Set the gate of a loaded SemanticPack (stage 1 from one of our exports with `model.context_gate` /
        `model.gate_gain`). A gain change keeps g = gain · value, so the loaded model computes what it did and
        only the gate's pace under Adam changes; a gate added to an ungated export starts at 0 (ψ off, as for a
        fresh SemanticPack); removing one lets ψ's tokens into F1's softmax ungated."""
        if not enabled:
            self.gate = None
        elif self.gate is None:
            param = next(self.parameters())
            self.gate = ContextGate(gain).to(device=param.device, dtype=param.dtype)
        elif gain != self.gate.gain:
            with torch.no_grad():
                self.gate.value.mul_(self.gate.gain / gain)
            self.gate.gain = gain
        self.register_to_config(context_gate=enabled, gate_gain=gain)

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs) -> SemanticPack:
        """diffusers' loader, with an export written before the gate existed read as it was trained: ungated."""
        config = Path(path) / "config.json"
        if config.is_file() and "context_gate" not in json.loads(config.read_text()):
            kwargs.setdefault("context_gate", False)
        return super().from_pretrained(path, *args, **kwargs)

    def initial_memory(
        self,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        image_embeds: torch.Tensor,
        start_latent: torch.Tensor | None = None,
    ) -> SemanticMemory:
        """ψ₀ = [text_in(prompt tokens) ; image_in(image tokens)] — timestep-independent features — and
        the start latent [B, C, 1, H, W] Memorize subtracts (required for `memorize_input="minus_start_latent"`)."""
        if self.config.memorize_input == "minus_start_latent" and start_latent is None:
            raise ValueError("memorize_input='minus_start_latent' subtracts the start latent: pass start_latent")
        text = self.text_in(prompt_embeds.to(self.dtype))
        image = self.image_in(image_embeds.to(self.dtype))
        tokens = torch.cat([text, image], dim=1)
        mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(image.shape[:2]).bool()], dim=1)
        if self.config.init == "zero":
            tokens = torch.zeros_like(tokens)
        anchor = start_latent if self.config.memorize_input == "minus_start_latent" else None
        return SemanticMemory(tokens, mask, 0, anchor)

    def memorize_segment(self, segment_latents: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """Memorize(xⁿ): segment latents [B, C, T, H, W] (minus `anchor` [B, C, 1, H, W] when Memorize
        reads the difference) → compact embeddings [B, K, D]."""
        x = segment_latents.to(self.dtype)
        if self.config.memorize_input == "minus_start_latent":
            if anchor is None:
                raise ValueError(
                    "memorize_input='minus_start_latent' needs the start latent (ψ₀ from initial_memory carries it)"
                )
            x = x - anchor.to(x)
        salience = None
        if self.config.pooling == "input_energy":
            size = self.config.patch_size
            salience = F.avg_pool3d(x.square().mean(1, keepdim=True), (1, size, size)).flatten(3)[:, 0]  # [B, T, h·w]
        x = self.patchify(x)  # [B, D, T, h, w]
        grid = (x.shape[3], x.shape[4])
        x = x.flatten(3).permute(0, 2, 3, 1)  # [B, T, h·w, D]
        return self.memorize(x, grid, salience)

    def update(self, memory: SemanticMemory, segment_latents: torch.Tensor) -> SemanticMemory:
        """ψₙ₊₁ = Squeeze(ψₙ, Memorize(xⁿ)) under the configured structure (+ ψₙ, over √2, with `carry`)."""
        visual = self.memorize_segment(segment_latents, memory.anchor)
        visual_mask = torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
        structure = self.config.structure
        if structure == "A":
            tokens, mask = self.squeeze(visual, memory.tokens, memory.mask), visual_mask
        elif structure == "C" and memory.step == 0:
            query = torch.cat([memory.tokens, visual], dim=1)
            tokens, mask = self.squeeze(query, visual, None), torch.cat([memory.mask, visual_mask], dim=1)
        else:  # B, and C after its first update
            tokens, mask = self.squeeze(memory.tokens, visual, None), memory.mask
        if self.config.carry and tokens.shape == memory.tokens.shape:
            tokens = (tokens + memory.tokens) * 0.5**0.5  # unit gain for uncorrelated parts: ψ's scale stays put
        return SemanticMemory(tokens, mask, memory.step + 1, memory.anchor)

    def context_tokens(self, memory: SemanticMemory) -> torch.Tensor:
        """ψ projected to the backbone's width, [B, M, context_dim]; padded tokens set to zero."""
        tokens = self.to_context(memory.tokens)
        return tokens * memory.mask.unsqueeze(-1).to(tokens.dtype)

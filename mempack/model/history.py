"""FramePack-F1 short-term memory: packing the recent history into 1x / 2x / 4x clean latents.

F1 predicts the newest section *after* its history. The context of a section is the whole video so
far — the start (image) latent followed by every latent frame generated or given before — and F1
keeps only its most recent `1 + 2 + 16` frames: the newest at full resolution (with the start latent
beside it), the next two through the 2x patch embedder, the next sixteen through the 4x one. Too
short a history is left-padded with zero latents, exactly as F1's sampler starts from zeros.

RoPE time indices (DESIGN.md "RoPE consistency"): with `absolute` indices every latent frame keeps
its position in the whole video — the start latent 0, the context frames 1..T−1, the noisy section
T..T+window−1 — so positions agree between training on clip i and generating section i. Pre-video
zero padding continues the same arithmetic into negative positions: padding is zeros, so its RoPE
phase carries no content, and the spacing between streams stays the one F1 was trained with.
`relative` reproduces diffusers' vanilla F1 layout (arange(29) split [1, 16, 2, 1, 9]) and exists
for the reference check against diffusers and as an ablation.

Past the trained length (docs/long_videos.md). RoPE is relative inside attention: a query and a key
interact through the difference of their indices only, so what an absolute layout adds over F1's is one
distance, from the start latent to the window. Beyond the longest video training saw, that distance
(and nothing else) leaves the trained range. `positions` says what a section gets there: `absolute` keeps
counting; `shift` moves the history streams and the noisy section back together so the newest frame
sits at the last trained index (every distance between two tokens is then one training saw; the start
latent stays at 0); `wrap` moves them back by whole periods instead, so the start-latent distance cycles
through the trained range. Clamping each index to the trained maximum is not an option: it would give
several frames one position and break the order of the history. Inside the trained length all three
give the same indices.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Literal

import torch

RopeMode = Literal["absolute", "relative"]
Positions = Literal["absolute", "shift", "wrap"]
POSITIONS: tuple[str, ...] = typing.get_args(Positions)
# Prep's default cap on a training video, data_prep.process.ClipSpec.max_shot_seconds (the paper's videos are
# <= 1 min; tests/test_long_positions.py checks the two agree): what a model whose export does not record its
# trained length is assumed to have seen.
DEFAULT_TRAINED_SECONDS = 60.0


@dataclass(frozen=True)
class HistoryLayout:
    """How many context frames each stream holds, and the section length, in latent frames."""

    frames_1x: int = 1
    frames_2x: int = 2
    frames_4x: int = 16
    window: int = 9

    def __post_init__(self) -> None:
        if self.frames_1x < 1 or self.frames_2x < 1 or self.frames_4x < 1 or self.window < 1:
            # diffusers' embedder needs all three streams non-empty (an empty 2x/4x stream fails).
            raise ValueError(f"every stream needs at least one frame: {self}")

    @property
    def context_frames(self) -> int:
        return self.frames_1x + self.frames_2x + self.frames_4x


@dataclass
class PackedHistory:
    """The backbone's history inputs for one section (tensors batched, index tensors 1-D)."""

    latents_clean: torch.Tensor
    indices_clean: torch.Tensor
    latents_2x: torch.Tensor
    indices_2x: torch.Tensor
    latents_4x: torch.Tensor
    indices_4x: torch.Tensor
    indices_latents: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PackedHistory:
        """Move latents to device/dtype; indices keep their integer dtype."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            is_index = f.name.startswith("indices")
            moved[f.name] = value.to(device=device) if is_index else value.to(device=device, dtype=dtype)
        return PackedHistory(**moved)

    def backbone_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of `HunyuanVideoFramepackTransformer3DModel.forward`."""
        return dict(
            indices_latents=self.indices_latents,
            latents_clean=self.latents_clean,
            indices_latents_clean=self.indices_clean,
            latents_history_2x=self.latents_2x,
            indices_latents_history_2x=self.indices_2x,
            latents_history_4x=self.latents_4x,
            indices_latents_history_4x=self.indices_4x,
        )


def window_offset(
    context_length: int, layout: HistoryLayout, positions: Positions = "absolute", trained_frames: int | None = None
) -> int:
    """Latent frames by which a section's history streams and noisy frames move back (the start latent stays
    at 0) under `positions`, for a model trained on videos of at most `trained_frames` latent frames (the
    start latent included: 1 + 9·sections). 0 inside the trained length, for `absolute`, and when
    `trained_frames` is None.

    `shift`: the newest frame lands on the last trained index, trained_frames − 1. `wrap`: the noisy
    section's first index c becomes context_frames + (c − context_frames) mod (trained_frames −
    context_frames), the trained range of sections that have a full history (for F1's 19-frame history and
    a trained length of N sections: section N gets section 2's positions, N + 1 section 3's, ...).
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if trained_frames is None or positions == "absolute":
        return 0
    full = layout.context_frames
    if trained_frames < full + layout.window:
        raise ValueError(
            f"a trained length of {trained_frames} latent frames holds no section with a full history "
            f"({full} + {layout.window} frames): shift and wrap need at least that"
        )
    over = context_length + layout.window - trained_frames
    if over <= 0:
        return 0
    if positions == "shift":
        return over
    period = trained_frames - full
    return context_length - (full + (context_length - full) % period)


def rope_indices(
    context_length: int, layout: HistoryLayout, mode: RopeMode = "absolute", offset: int = 0
) -> dict[str, torch.Tensor]:
    """RoPE time indices of each stream for a section whose context holds `context_length` frames.

    `context_length` counts the start latent, so the first section has context_length = 1. `offset`
    (`window_offset`) moves every index but the start latent's back; F1's `relative` layout ignores it.
    """
    if context_length < 1:
        raise ValueError("the context always holds at least the start latent")
    n1, n2, n4, w = layout.frames_1x, layout.frames_2x, layout.frames_4x, layout.window
    if mode == "relative":
        first = 1  # F1: start 0, then 4x, 2x, 1x, noisy in one arange
        start = torch.tensor([0])
    elif mode == "absolute":
        first = context_length - offset - layout.context_frames
        start = torch.tensor([0])
    else:
        raise ValueError(f"unknown rope mode {mode!r}")
    i4 = torch.arange(first, first + n4)
    i2 = torch.arange(first + n4, first + n4 + n2)
    i1 = torch.arange(first + n4 + n2, first + n4 + n2 + n1)
    noisy_start = first + layout.context_frames
    return dict(
        indices_clean=torch.cat([start, i1]),
        indices_2x=i2,
        indices_4x=i4,
        indices_latents=torch.arange(noisy_start, noisy_start + w),
    )


def pack_history(
    start_latent: torch.Tensor,
    history: torch.Tensor | None,
    layout: HistoryLayout = HistoryLayout(),
    mode: RopeMode = "absolute",
    frames_before: int = 0,
    positions: Positions = "absolute",
    trained_frames: int | None = None,
) -> PackedHistory:
    """Pack the start latent [B, C, 1, H, W] and the history [B, C, T, H, W] (frames after the start
    latent, oldest first; None or T = 0 for the first section) into F1's three clean streams.

    The cost is independent of T: only the last `layout.context_frames` frames are read. A sampler
    that keeps only a recent tail of the history passes the number of older frames it dropped as
    `frames_before`, so the absolute RoPE indices still count the whole video. `positions` and
    `trained_frames`: what a section past the trained length gets (`window_offset`).
    """
    if start_latent.ndim != 5 or start_latent.shape[2] != 1:
        raise ValueError(f"start_latent must be [B, C, 1, H, W], got {tuple(start_latent.shape)}")
    parts = [start_latent] if history is None or history.shape[2] == 0 else [start_latent, history]
    context = torch.cat(parts, dim=2)
    context_length = frames_before + context.shape[2]
    need = layout.context_frames
    recent = context[:, :, -need:]
    if recent.shape[2] < need:
        pad = recent.new_zeros(*recent.shape[:2], need - recent.shape[2], *recent.shape[3:])
        recent = torch.cat([pad, recent], dim=2)
    latents_4x, latents_2x, latents_1x = recent.split([layout.frames_4x, layout.frames_2x, layout.frames_1x], dim=2)
    offset = window_offset(context_length, layout, positions, trained_frames)
    idx = rope_indices(context_length, layout, mode, offset)
    return PackedHistory(
        latents_clean=torch.cat([start_latent, latents_1x], dim=2),
        latents_2x=latents_2x,
        latents_4x=latents_4x,
        **idx,
    )

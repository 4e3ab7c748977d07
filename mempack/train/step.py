"""One training step per video, shared by the Ray Train worker loop and the in-process trainer.

A step trains one video (or a batch of videos with the same layout): `trained_clip` decides which of its
clips get a training forward, `video_clip_steps` makes their histories (teacher, direct or student
forcing) and ψ, and every clip's loss is back-propagated at once (its backbone graph is freed) through
`backward(loss, is_last_clip, retain_graph)`. The caller owns the optimizer: it steps once, after the
last clip, so gradients accumulate over the video (paper §3.2).

Stage 1 with teacher forcing trains one clip sampled per video (the earlier clips only build the
ground-truth history and ψ, so long videos cost one forward/backward); every other combination trains
all clips in order, since each clip's history comes from the previous clips' own forwards. Which clip
stage 1 trains is its clip policy (`STAGE1_CLIPS`), a choice that needs no knowledge of the video's
content: `uniform` (every clip equally), `late` (clip i with probability ∝ i + 1: late clips have the
longest history and ψ chain, where memory matters) or `all` (every clip of every video, in order, still
with ground-truth histories: the most memory training per video, at num_clips times the cost).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mempack.model import Conditioning, MemoryPackTransformer
from mempack.train.forcing import ForcingConfig, video_clip_steps

Backward = Callable[[torch.Tensor, bool, bool], None]  # (loss, is the video's last clip, retain graph)


@dataclass
class VideoStepStats:
    """What one video's step did: mean clip loss, clips trained, latent tokens, non-finite losses seen."""

    loss: float
    clips: int
    tokens: int
    finite: bool = True


STAGE1_CLIPS = ("uniform", "late", "all")  # stage-1 clip policies (module docstring)


def check_stage1_clips(policy: str) -> str:
    if policy not in STAGE1_CLIPS:
        raise ValueError(f"stage1_clips must be one of {STAGE1_CLIPS}, got {policy!r}")
    return policy


def samples_one_clip(stage: int, mode: str, policy: str = "uniform") -> bool:
    """Stage-1 teacher forcing trains one sampled clip per video (unless its policy is `all`); everything
    else trains every clip."""
    return stage == 1 and mode == "teacher" and check_stage1_clips(policy) != "all"


def clips_trained_per_video(stage: int, mode: str, num_clips: int, policy: str = "uniform") -> int:
    """Micro-steps per optimizer step (DeepSpeed's gradient accumulation for a bucket)."""
    return 1 if samples_one_clip(stage, mode, policy) else num_clips


def trained_clip(
    stage: int, mode: str, num_clips: int, generator: torch.Generator, policy: str = "uniform"
) -> int | None:
    """The one clip stage-1 teacher forcing trains (drawn from `generator` under `policy`), or None for all.

    The generator must be the same on every rank: clip 0 has no ψ update, so its step leaves
    Memorize/Squeeze without gradients, and ZeRO's bucketed reductions must agree across ranks.
    """
    if not samples_one_clip(stage, mode, policy):
        return None
    if policy == "late":
        weights = torch.arange(1, num_clips + 1, dtype=torch.float64)
        return int(torch.multinomial(weights, 1, generator=generator))
    return int(torch.randint(0, num_clips, (1,), generator=generator))


def train_video(
    model: MemoryPackTransformer,
    clips: torch.Tensor,
    cond: Conditioning,
    forcing: ForcingConfig,
    backward: Backward,
    *,
    only_clip: int | None,
    generator: torch.Generator | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
) -> VideoStepStats:
    """Forward and back-propagate every trained clip of one video; the caller then steps once.

    `forward` runs the training forward (the DeepSpeed engine, whose forward registers the hooks its
    backward relies on); `model` is what it wraps, for ψ's updates and the layout (default: `model` itself).
    """
    num_clips = clips.shape[1] if clips.ndim == 6 else clips.shape[0]
    planned = 1 if only_clip is not None else num_clips
    losses: list[float] = []
    tokens = 0
    for n, step in enumerate(
        video_clip_steps(model, clips, cond, forcing, generator=generator, only_clip=only_clip, forward=forward)
    ):
        backward(step.loss, n == planned - 1, step.retain_graph)
        losses.append(step.loss.item())
        tokens += step.tokens
    mean = sum(losses) / len(losses)
    return VideoStepStats(mean, len(losses), tokens, finite=math.isfinite(mean))

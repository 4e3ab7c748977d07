"""How the history is made while training: teacher, direct (one step) or student (k steps) forcing.

A training video is a shot cut into clips of one section each. For clip i the model sees the start
(image) latent, a FramePack history made of the clips before i, and ψ updated once per earlier clip:

* **teacher** — the history is the ground-truth latents (stage 1).
* **direct** — the history is x̃ʲ = x_t + (1−t)·v_θ(x_t, t) from clip j's *own training forward pass*
  (paper eq. 7), detached: the condition looks like the model's own output, at no extra forward
  (stage 2). ψ is updated from the same estimates.
* **student** — the history is a k-step Euler sample of clip j from noise, under no grad (the
  ablation baseline whose cost Direct Forcing avoids).

`video_clip_steps` yields one `ClipStep` per clip in chronological order and leaves backward and
optimizer stepping to the caller, so a plain loop, DDP or a DeepSpeed engine can own accumulation
(one optimizer step per video in stage 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from mempack import flow
from mempack.generate import sample_section
from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.model.semantic_pack import SemanticMemory

ForcingMode = Literal["teacher", "direct", "student"]
FORCING_MODES: tuple[str, ...] = ("teacher", "direct", "student")


@dataclass
class ForcingConfig:
    """Knobs of one training step; defaults follow the paper and FramePack trainers."""

    mode: str = "teacher"
    student_steps: int = 5
    guidance: float = 1.0  # distilled-guidance embedding at train time (musubi-tuner trains at 1.0)
    time_shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # ψ keeps its graph through this many earlier updates (0: detached between clips, as in stage 2)
    memory_grad_window: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FORCING_MODES:
            raise ValueError(f"forcing mode must be one of {FORCING_MODES}, got {self.mode!r}")
        if self.student_steps < 1:
            raise ValueError("student_steps must be >= 1")


@dataclass
class ClipStep:
    """What one clip's training forward produced (tensors other than `loss` are detached)."""

    index: int
    loss: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    velocity: torch.Tensor
    estimate: torch.Tensor  # x̃ = x_t + (1−t)·v: the next clip's history under direct forcing
    history: torch.Tensor | None  # the history latents this clip was conditioned on
    tokens: int = field(default=0)  # latent tokens in the noisy section (for throughput metrics)


def flow_matching_loss(velocity: torch.Tensor, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """‖v_θ − (x − ε)‖² averaged over elements (eq. 5)."""
    return F.mse_loss(velocity.float(), flow.velocity_target(x, noise).float())


@torch.no_grad()
def student_sample(
    model: MemoryPackTransformer,
    cond: Conditioning,
    history: torch.Tensor | None,
    memory: SemanticMemory | None,
    shape: tuple[int, ...],
    steps: int,
    guidance: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """k-step Euler sample of one section from noise, with the inference sampler (student forcing)."""
    packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
    noise = torch.randn(shape, generator=generator, device="cpu")
    x = sample_section(model, cond, packed, memory, noise, flow.sampling_times(steps), guidance)
    return x.to(cond.start_latent.dtype)


def _cat_history(history: torch.Tensor | None, clip: torch.Tensor) -> torch.Tensor:
    return clip if history is None else torch.cat([history, clip], dim=2)


def video_clip_steps(
    model: MemoryPackTransformer,
    clips: torch.Tensor,
    cond: Conditioning,
    config: ForcingConfig,
    *,
    generator: torch.Generator | None = None,
    only_clip: int | None = None,
) -> Iterator[ClipStep]:
    """Train on one video's clips [N, C, T, h, w] in order, yielding each clip's loss.

    `only_clip=i` yields just clip i (teacher forcing on a sampled clip: the earlier clips only
    build the history and ψ, without a training forward of their own).
    """
    device = cond.start_latent.device
    history: torch.Tensor | None = None
    memory = model.initial_memory(cond)
    last = clips.shape[0] if only_clip is None else only_clip + 1
    for i in range(last):
        x = clips[i: i + 1].to(device=device, dtype=cond.start_latent.dtype)
        if only_clip is not None and i < only_clip:
            # teacher history for the sampled clip: ground truth, no training forward
            memory = _next_memory(model, memory, x, config)
            history = _cat_history(history, x)
            continue
        packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
        t = flow.sample_training_times(1, shift=config.time_shift, logit_mean=config.logit_mean,
                                       logit_std=config.logit_std, generator=generator, device=device)
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)
        x_t = flow.interpolate(x, noise, t)
        velocity = model(x_t, t, cond, packed, memory, config.guidance)
        loss = flow_matching_loss(velocity, x, noise)
        estimate = flow.one_step_estimate(x_t, velocity.detach().to(x_t.dtype), t)
        yield ClipStep(i, loss, t, x_t.detach(), velocity.detach(), estimate,
                       None if history is None else history.detach(), tokens=_tokens(model, x))
        if i + 1 == last:
            break
        if config.mode == "teacher":
            made = x
        elif config.mode == "direct":
            made = estimate
        else:
            made = student_sample(model, cond, history, memory, tuple(x.shape), config.student_steps,
                                  config.guidance, generator)
        memory = _next_memory(model, memory, made, config)
        history = _cat_history(history, made.detach())


def _next_memory(
    model: MemoryPackTransformer, memory: SemanticMemory | None, segment: torch.Tensor, config: ForcingConfig
) -> SemanticMemory | None:
    """ψ update whose graph reaches back at most `memory_grad_window` updates (truncated BPTT).

    The update itself always keeps its graph, so the next clip's loss trains SemanticPack.
    """
    if memory is None:
        return None
    if memory.step % max(config.memory_grad_window, 1) == 0:
        memory = memory.detach()
    return model.update_memory(memory, segment.detach())


def _tokens(model: MemoryPackTransformer, x: torch.Tensor) -> int:
    p, pt = model.backbone.config.patch_size, model.backbone.config.patch_size_t
    return int(x.shape[2] // pt * (x.shape[3] // p) * (x.shape[4] // p))

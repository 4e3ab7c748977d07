"""How the history is made while training: teacher, direct (one step) or student (k steps) forcing.

A training video is a shot cut into clips of one section each. For clip i the model sees the start
(image) latent, a FramePack history made of the clips before i, and ψ updated once per earlier clip:

* **teacher** — the history is the ground-truth latents (stage 1, and stage 2's control).
* **direct** — the history is x̃ʲ = x_t + (1−t)·v_θ(x_t, t) from clip j's *own training forward pass*
  (paper eq. 7), detached: the condition looks like the model's own output, at no extra forward
  (stage 2). ψ is updated from the same estimates.
* **student** — the history is a k-step sample of clip j from noise under no grad, drawn with the
  *inference* sampler (F1's shifted time grid, the sampling guidance): the ablation baseline whose
  cost Direct Forcing avoids.

**Memory gradients.** ψ is a recurrent state, so what trains Memorize/Squeeze to *keep* information is
back-propagation through several updates. `memory_grad_window = k` lets a clip's loss reach the k ψ
updates before it (ψ₀ included when k reaches back to it); older updates run without a graph, so the
cost is k one-section Memorize/Squeeze graphs, whatever the video's length. With one loss per video
(stage 1's sampled clip) this is exact truncated BPTT; when every clip has a loss, ψ is cut every k
updates and each clip's backward keeps the shared ψ graph alive for the next (`ClipStep.retain_graph`).

**Guidance.** FramePack-F1 is guidance-distilled: its `guidance` input is an embedding, and F1 samples
at 10. The flow-matching loss regresses the data velocity, which is what the model must output at the
guidance it is *trained* at (1.0, as musubi-tuner trains F1); training the plain loss at 10 would teach
F1 to forget its distillation. Direct Forcing's x̃ comes from that same training forward (no extra
pass, the paper's point), student forcing runs the real sampler at `sample_guidance`. Both values are
configurable; bench/method_fidelity.py measures the mismatch on the synthetic world.

`video_clip_steps` yields one `ClipStep` per trained clip in chronological order and leaves backward and
optimizer stepping to the caller (see mempack/train/step.py), so a plain loop or a DeepSpeed engine
owns accumulation (one optimizer step per video).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mempack import flow
from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.model.semantic_pack import SemanticMemory
from mempack.sampling import DEFAULT_SAMPLING_GUIDANCE, sample_section, section_times

FORCING_MODES: tuple[str, ...] = ("teacher", "direct", "student")
TRAIN_GUIDANCE = 1.0  # the guidance embedding of the training forward (musubi-tuner trains F1 at 1.0)
DEFAULT_MEMORY_GRAD_WINDOW = 16  # ψ updates a loss reaches back through (stage 1): ~19 s of video


@dataclass
class ForcingConfig:
    """Knobs of one training step; defaults follow the paper and FramePack trainers.

    `mode` None means the stage's default (stage 1 teacher, stage 2 direct): see `resolve_mode`.
    """

    mode: str | None = None
    student_steps: int = 5
    guidance: float = TRAIN_GUIDANCE
    sample_guidance: float = DEFAULT_SAMPLING_GUIDANCE  # what student forcing's sampler conditions on
    time_shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # ψ updates a clip's loss back-propagates through (-1: the whole video, 0: none)
    memory_grad_window: int = DEFAULT_MEMORY_GRAD_WINDOW

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in FORCING_MODES:
            raise ValueError(f"forcing mode must be one of {FORCING_MODES}, got {self.mode!r}")
        if self.student_steps < 1:
            raise ValueError("student_steps must be >= 1")
        if self.memory_grad_window < -1:
            raise ValueError("memory_grad_window must be -1 (whole video), 0 (none) or a number of updates")


def resolve_mode(mode: str | None, stage: int) -> str:
    """The history a stage trains on: stage 1 teacher, stage 2 direct, unless asked otherwise.

    Every combination is meaningful and explicit: stage 2 + teacher is the "more training of the head"
    control, stage 1 + direct/student trains the whole network on its own estimates.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if mode is None:
        return "teacher" if stage == 1 else "direct"
    if mode not in FORCING_MODES:
        raise ValueError(f"forcing mode must be one of {FORCING_MODES}, got {mode!r}")
    return mode


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
    retain_graph: bool = False  # backward must keep the ψ graph: a later clip's loss goes through it


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
    """k-step sample of one section from noise with the inference sampler (F1's shifted grid)."""
    packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
    noise = torch.randn(shape, generator=generator, device="cpu")
    times = section_times(model, shape, steps=steps)
    x = sample_section(model, cond, packed, memory, noise, times, guidance)
    return x.to(cond.start_latent.dtype)


def _cat_history(history: torch.Tensor | None, clip: torch.Tensor) -> torch.Tensor:
    return clip if history is None else torch.cat([history, clip], dim=2)


def _batched(clips: torch.Tensor) -> torch.Tensor:
    """Clips of one video [N, C, T, h, w] or of a batch of videos [B, N, C, T, h, w] → [B, N, ...]."""
    if clips.ndim == 5:
        return clips.unsqueeze(0)
    if clips.ndim != 6:
        raise ValueError(f"clips must be [N, C, T, h, w] or [B, N, C, T, h, w], got {tuple(clips.shape)}")
    return clips


def video_clip_steps(
    model: MemoryPackTransformer,
    clips: torch.Tensor,
    cond: Conditioning,
    config: ForcingConfig,
    *,
    generator: torch.Generator | None = None,
    only_clip: int | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
) -> Iterator[ClipStep]:
    """Train on a video's clips in order, yielding each trained clip's loss.

    `clips` is one video [N, C, T, h, w] or a batch of videos with the same layout [B, N, C, T, h, w]
    (batch-B `cond`). `only_clip=i` yields just clip i: the earlier clips only build the history and ψ
    (teacher forcing on a sampled clip, stage 1), and ψ keeps the graph of the last
    `memory_grad_window` updates so the loss trains the memory to hold information that long. `forward` makes
    the training forward (a DeepSpeed engine wrapping `model`; default `model` itself).
    """
    mode = config.mode or "teacher"
    device = cond.start_latent.device
    clips = _batched(clips)
    num = clips.shape[1]
    last = num if only_clip is None else only_clip + 1
    window = config.memory_grad_window
    history: torch.Tensor | None = None
    memory = model.initial_memory(cond)
    if memory is not None and window >= 0 and only_clip is not None and only_clip - window > 0:
        memory = memory.detach()  # ψ₀ lies outside the window of the one trained clip
    for i in range(last):
        x = clips[:, i].to(device=device, dtype=cond.start_latent.dtype)
        if only_clip is not None and i < only_clip:
            # ground-truth history for the sampled clip: no training forward, ψ graph only inside the window
            keep_graph = window < 0 or i >= only_clip - window
            memory = _update_memory(model, memory, x, keep_graph)
            history = _cat_history(history, x)
            continue
        if only_clip is None:
            memory = _truncate(memory, window)
        packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
        t = flow.sample_training_times(
            x.shape[0],
            shift=config.time_shift,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            generator=generator,
            device=device,
        )
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)
        x_t = flow.interpolate(x, noise, t)
        velocity = (model if forward is None else forward)(x_t, t, cond, packed, memory, config.guidance)
        loss = flow_matching_loss(velocity, x, noise)
        estimate = flow.one_step_estimate(x_t, velocity.detach().to(x_t.dtype), t)
        more = i + 1 < last
        retain = more and memory is not None and memory.tokens.requires_grad and window != 0
        yield ClipStep(
            i,
            loss,
            t,
            x_t.detach(),
            velocity.detach(),
            estimate,
            None if history is None else history.detach(),
            tokens=_tokens(model, x),
            retain_graph=retain,
        )
        if not more:
            break
        if mode == "teacher":
            made = x
        elif mode == "direct":
            made = estimate
        else:
            made = student_sample(
                model, cond, history, memory, tuple(x.shape), config.student_steps, config.sample_guidance, generator
            )
        memory = _update_memory(model, memory, made.detach(), keep_graph=window != 0)
        history = _cat_history(history, made.detach())


def _update_memory(
    model: MemoryPackTransformer, memory: SemanticMemory | None, segment: torch.Tensor, keep_graph: bool
) -> SemanticMemory | None:
    """ψₙ₊₁ from ψₙ and a finished segment, with or without an autograd graph."""
    if memory is None:
        return None
    if keep_graph:
        return model.update_memory(memory, segment)
    with torch.no_grad():
        return model.update_memory(memory.detach(), segment)


def _truncate(memory: SemanticMemory | None, window: int) -> SemanticMemory | None:
    """Cut ψ's graph every `window` updates when every clip trains (0: ψ never carries a graph)."""
    if memory is None or window < 0:
        return memory
    if window == 0 or (memory.step > 0 and memory.step % window == 0):
        return memory.detach()
    return memory


def _tokens(model: MemoryPackTransformer, x: torch.Tensor) -> int:
    p, pt = model.backbone.config.patch_size, model.backbone.config.patch_size_t
    return int(x.shape[0] * (x.shape[2] // pt) * (x.shape[3] // p) * (x.shape[4] // p))

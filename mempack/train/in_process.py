"""The same training, in one process: for experiments, the method-fidelity benchmark and notebooks.

Ray Train + DeepSpeed (`mempack.train.loop`) is how mempack trains at scale; this runs the very same
per-video step (`mempack.train.step.train_video`: forcing, clip sampling, ψ's gradient window, one
optimizer step per video) with a plain AdamW in the calling process, so a small model trains in
seconds without starting Ray. The rules it shares with the Ray loop:

* stage 1 trains the whole network, stage 2 only the final norm and output projection (unless
  `trainable` says otherwise);
* the loss of each trained clip is divided by the clips trained per video (what DeepSpeed's gradient
  accumulation does), and the optimizer steps once per video, after its last clip;
* curriculum: `mempack.train.data.curriculum` over the videos grouped by clip count (one-clip videos
  first, each group's passes before the next: one progression);
* gradients are clipped to `grad_clip`; a video whose loss is not finite is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mempack.model import Conditioning, MemoryPackTransformer
from mempack.train.data import curriculum
from mempack.train.forcing import ForcingConfig, resolve_mode
from mempack.train.optim import parameter_groups, resolve_trainable
from mempack.train.step import check_stage1_clips, clips_trained_per_video, train_video, trained_clip

log = logging.getLogger(__name__)

Video = tuple[torch.Tensor, Conditioning]  # clips [N, C, T, h, w] and their batch-1 conditions


@dataclass
class LocalTrainConfig:
    """One in-process training run."""

    stage: int = 1
    steps: int = 100  # optimizer steps = videos trained
    lr: float = 1e-4
    memory_lr: float | None = None  # what writes ψ (mempack.train.optim); None: lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    forcing: ForcingConfig = field(default_factory=ForcingConfig)
    trainable: str | None = None  # "all" or "head"; None: the stage's (mempack.train.optim.resolve_trainable)
    stage1_clips: str = "uniform"  # which clip a stage-1 step trains (mempack.train.step.STAGE1_CLIPS)
    frozen: tuple[str, ...] = ()  # parameter-name prefixes kept frozen within `trainable` (diagnosis ablations)

    def __post_init__(self) -> None:
        check_stage1_clips(self.stage1_clips)


@dataclass
class LocalTrainResult:
    """Per-step losses, wall time and clips trained (for cost per clip), non-finite videos skipped."""

    losses: list[float]
    seconds: float
    clips: int
    skipped: int = 0


def train_in_process(
    model: MemoryPackTransformer,
    videos: Sequence[Video] | Callable[[int], Video],
    config: LocalTrainConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
    on_gradients: Callable[[int], None] | None = None,
    pick_clip: Callable[[int], int] | None = None,
) -> LocalTrainResult:
    """Train `model` for `config.steps` videos; `videos` is a list (epochs in curriculum order) or a
    function step → video (an endless stream, e.g. freshly drawn synthetic videos).

    `on_step(step, loss)` runs after each optimizer step; `on_gradients(step)` after the video's backward,
    before clipping (e.g. to measure gradients). `pick_clip` (number of clips → index) overrides the clip
    policy of a stage-1 teacher-forcing step with an experiment's own choice, e.g. the benchmark's oracle
    curriculum, which trains the one section whose content must come from memory (found from the world's
    layout: no user's data says which that is)."""
    torch.manual_seed(config.seed)
    mode = resolve_mode(config.forcing.mode, config.stage)
    forcing = dataclasses.replace(config.forcing, mode=mode)
    model.set_trainable(resolve_trainable(config.trainable, config.stage))
    for name, param in model.named_parameters():
        if name.startswith(config.frozen):
            param.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.lr, config.memory_lr), weight_decay=config.weight_decay
    )
    order = _curriculum(videos, config.steps) if not callable(videos) else None
    losses: list[float] = []
    clips_seen = skipped = 0
    began = time.perf_counter()
    for step in range(config.steps):
        clips, cond = videos(step) if order is None else videos[order[step]]
        num_clips = clips.shape[0]
        scale = 1.0 / clips_trained_per_video(config.stage, mode, num_clips, config.stage1_clips)
        shared = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        only = trained_clip(config.stage, mode, num_clips, shared, config.stage1_clips)
        if pick_clip is not None and only is not None:
            only = pick_clip(num_clips)

        def backward(loss: torch.Tensor, last: bool, retain: bool, scale: float = scale) -> None:
            if torch.isfinite(loss):
                (loss * scale).backward(retain_graph=retain)

        optimizer.zero_grad(set_to_none=True)
        stats = train_video(model, clips, cond, forcing, backward, only_clip=only, generator=shared)
        if on_gradients is not None:
            on_gradients(step)
        grads_finite = all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        if not stats.finite or not grads_finite:
            skipped += 1
            log.warning("step %d: non-finite loss or gradients, skipped", step)
            continue
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(stats.loss)
        clips_seen += stats.clips
        if on_step is not None:
            on_step(step, stats.loss)
    model.eval()
    return LocalTrainResult(losses, time.perf_counter() - began, clips_seen, skipped)


def _curriculum(videos: Sequence[Video], steps: int) -> list[int]:
    """The video index of every step: the Ray loop's curriculum, with buckets of one clip count and one
    video per step."""
    if not videos:
        raise ValueError("no videos to train on")
    buckets: dict[int, list[int]] = defaultdict(list)
    for i in sorted(range(len(videos)), key=lambda i: videos[i][0].shape[0]):
        buckets[videos[i][0].shape[0]].append(i)
    return [step.videos[0] for step in curriculum(buckets, steps, steps, group=1)]

"""The method's two claims, measured on the synthetic world (mempack/world.py) with mempack's generator.

* **Memory recall**: continue a ground-truth prefix in which the object was seen and then stayed out of
  view for L sections (up to the last absent section, whose beacon announces the return); generate the
  return section with `mempack.generate.generate(prefix=...)` and read the identity the model drew in the
  object's lane. Recall = return events where the right identity came back / all return events (a model
  that guesses among the K codes scores 1/K; one that draws a blend of codes, which the world's decoder
  does not accept as any identity, scores below that); `returned` = how often an object of any
  identity came back.
* **Drift** (paper eq. 8): roll out many sections from a start latent alone, score every frame against
  the world's truth (background error + object integrity, `World.frame_errors`) and take
  |mean over the first 15% − mean over the last 15%| of the frames the model generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mempack.generate import GenerationConfig, generate
from mempack.model import MemoryPackTransformer
from mempack.world import OBJECT, World


@dataclass
class RecallResult:
    """Per absence length L: right identity / events, and any identity / events."""

    recall: dict[int, float]
    returned: dict[int, float]
    events: int

    @property
    def mean_recall(self) -> float:
        return float(np.mean(list(self.recall.values())))

    @property
    def mean_returned(self) -> float:
        return float(np.mean(list(self.returned.values())))


def memory_recall(
    model: MemoryPackTransformer, world: World, absences: list[int], events: int, *, seed: int,
    steps: int = 10, guidance: float = 1.0,
) -> RecallResult:
    """Recall of the identity after `L` absent sections, for each L, over `events` held-out videos each."""
    lane = (world.config.height - OBJECT, world.config.height)
    recall, returned = {}, {}
    for absence in absences:
        right = came_back = 0
        for e in range(events):
            video = world.video(seed + 1000 * absence + e, absence=absence)
            prefix = video.latents[:, 1: video.section_frames(video.returns).start]
            out = generate(model, world.conditioning(video),
                           GenerationConfig(sections=1, steps=steps, guidance=guidance, seed=seed + e),
                           progress=False, prefix=prefix[None]).latents[0]
            seen = world.identity_in(out, video.section_frames(video.returns), rows=lane)
            came_back += seen is not None
            right += seen == video.identity
        recall[absence] = right / events
        returned[absence] = came_back / events
    return RecallResult(recall, returned, events)


@dataclass
class DriftResult:
    """|start − end| of the per-frame error (eq. 8), per rollout and averaged, and the mean curve."""

    drift: float
    per_rollout: list[float]
    curve: list[float]  # mean error per generated section


def rollout_drift(
    model: MemoryPackTransformer, world: World, sections: int, rollouts: int, *, seed: int,
    steps: int = 10, guidance: float = 1.0, keep_latents: bool = False,
) -> tuple[DriftResult, list[torch.Tensor]]:
    """Roll out `sections` from held-out start latents; drift of the world error over the frames."""
    per, curves, kept = [], [], []
    for r in range(rollouts):
        video = world.video(seed + r)
        out = generate(model, world.conditioning(video),
                       GenerationConfig(sections=sections, steps=steps, guidance=guidance, seed=seed + r),
                       progress=False).latents[0]
        errors = world.frame_errors(out[:, 1:], video.background)["total"]  # the model's own frames only
        edge = max(1, round(0.15 * len(errors)))
        per.append(float(abs(errors[:edge].mean() - errors[-edge:].mean())))
        curves.append(errors.reshape(sections, -1).mean(axis=1))
        if keep_latents:
            kept.append(out)
    return DriftResult(float(np.mean(per)), per, np.mean(curves, axis=0).tolist()), kept

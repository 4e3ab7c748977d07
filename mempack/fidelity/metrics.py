"""The method's two claims, measured on the synthetic world (mempack/fidelity/world.py) with mempack's generator.

* **Memory recall**: continue a ground-truth prefix in which the object was seen and then stayed out of
  view for L sections (up to the last absent section, whose beacon announces the return); generate the
  return section with `mempack.sampling.generate(prefix=...)` and read the identity the model drew in the
  object's lane. Recall = return events where the right identity came back / all return events (a model
  that guesses among the K codes scores 1/K; one that draws a blend of codes, which the world's decoder
  does not accept as any identity, scores below that); `returned` = how often an object of any
  identity came back. Events cycle through the K identities, so a model that always draws the same
  identity scores exactly 1/K (with events a multiple of K); `drawn` counts what was drawn, per identity.
* **What ψ holds** (`memory_probe`): a ridge classifier reads the identity from ψ's tokens (as the
  backbone receives them) after the object left view for L sections, on held-out videos. It separates
  the two halves of the memory claim: whether Memorize/Squeeze *keep* the identity, and whether the
  backbone *uses* it (recall).
* **How loudly ψ holds it** (`memory_energy`): the share of ψ's energy that varies between videos, and
  the share the identity explains; the backbone, unlike the read-out, sees ψ unstandardised.
* **Drift** (paper eq. 8): roll out many sections from a start latent alone, score every frame against
  the world's truth (background error + object integrity, `World.frame_errors`) and take
  |mean over the first 15% − mean over the last 15%| of the frames the model generated
  (`mempack.eval.drift.drift`: the one definition, ⌈15 %⌉ of the frames at each end).
* **Exposure gap** (`exposure_gap`): what Direct Forcing targets, isolated. Each section of a held-out
  video is generated twice with the same noise: in a rollout (history = the model's own sections) and
  from the ground-truth prefix (history = the truth, as teacher forcing trains). Their error difference
  is the cost of conditioning on one's own output. Unlike eq. 8 it does not mix in how the world's
  content changes along a video (an object entering raises every model's error, drift or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mempack.eval.drift import drift
from mempack.fidelity.world import OBJECT, World
from mempack.model import MemoryPackTransformer
from mempack.sampling import GenerationConfig, generate


@dataclass
class RecallResult:
    """Per absence length L: right identity / events, and any identity / events."""

    recall: dict[int, float]
    returned: dict[int, float]
    events: int
    drawn: dict[int, list[int]] = field(default_factory=dict)  # per L: how often each identity was drawn


def memory_recall(
    model: MemoryPackTransformer,
    world: World,
    absences: list[int],
    events: int,
    *,
    seed: int,
    steps: int = 10,
    guidance: float = 1.0,
) -> RecallResult:
    """Recall of the identity after `L` absent sections, for each L, over `events` held-out videos each."""
    lane = (world.config.height - OBJECT, world.config.height)
    recall, returned, drawn = {}, {}, {}
    for absence in absences:
        right = came_back = 0
        counts = [0] * world.config.identities
        for e in range(events):
            video = world.video(seed + 1000 * absence + e, absence=absence, identity=e % world.config.identities)
            prefix = video.latents[:, 1 : video.section_frames(video.returns).start]
            out = generate(
                model,
                world.conditioning(video),
                GenerationConfig(sections=1, steps=steps, guidance=guidance, seed=seed + e),
                progress=False,
                prefix=prefix[None],
            ).latents[0]
            seen = world.identity_in(out, video.section_frames(video.returns), rows=lane)
            came_back += seen is not None
            right += seen == video.identity
            if seen is not None:
                counts[seen] += 1
        recall[absence] = right / events
        returned[absence] = came_back / events
        drawn[absence] = counts
    return RecallResult(recall, returned, events, drawn)


@dataclass
class DriftResult:
    """|start − end| of the per-frame error (eq. 8), per rollout and averaged, and the mean curve."""

    drift: float
    per_rollout: list[float]
    curve: list[float]  # mean error per generated section


def rollout_drift(
    model: MemoryPackTransformer,
    world: World,
    sections: int,
    rollouts: int,
    *,
    seed: int,
    steps: int = 10,
    guidance: float = 1.0,
    keep_latents: bool = False,
) -> tuple[DriftResult, list[torch.Tensor]]:
    """Roll out `sections` from held-out start latents; drift of the world error over the frames."""
    per, curves, kept = [], [], []
    for r in range(rollouts):
        video = world.video(seed + r)
        out = generate(
            model,
            world.conditioning(video),
            GenerationConfig(sections=sections, steps=steps, guidance=guidance, seed=seed + r),
            progress=False,
        ).latents[0]
        truth = world.backgrounds(video, out.shape[1])
        errors = world.frame_errors(out[:, 1:], truth[:, 1:])["total"]  # the model's own frames only
        per.append(drift(errors))
        curves.append(errors.reshape(sections, -1).mean(axis=1))
        if keep_latents:
            kept.append(out)
    return DriftResult(float(np.mean(per)), per, np.mean(curves, axis=0).tolist()), kept


@dataclass
class ExposureResult:
    """Per section: error of the rollout and of the same section made from the ground-truth prefix."""

    gap: float  # mean over videos of their mean rollout − ground-truth-prefix error over sections ≥ 1
    per_video: list[float]
    rollout_curve: list[float]  # mean error per section, own history (the sections every video has)
    teacher_curve: list[float]  # mean error per section, ground-truth history


def exposure_gap(
    model: MemoryPackTransformer,
    world: World,
    videos: int,
    *,
    seed: int,
    steps: int = 10,
    guidance: float = 1.0,
    absence: int | None = None,
) -> ExposureResult:
    """Own history against true history, section by section, on `videos` held-out videos.

    Section k of the ground-truth-prefix pass draws the k-th noise of the rollout's generator, so the
    two differ only in their history (section 0, which has none, is identical). Videos use the world's
    longest absence unless `absence` is given (the longest videos: the most sections to compare).
    """
    absence = world.config.absence[1] if absence is None else absence
    rollouts, teachers, per = [], [], []
    for v in range(videos):
        video = world.video(seed + v, absence=absence)
        cond, n = world.conditioning(video), video.sections
        config = GenerationConfig(sections=n, steps=steps, guidance=guidance, seed=seed + v)
        own = generate(model, cond, config, progress=False).latents[0]
        truth = world.backgrounds(video, own.shape[1])
        rollout = world.frame_errors(own[:, 1:], truth[:, 1:])["total"].reshape(n, -1).mean(axis=1)
        teacher = np.empty(n)
        noise_shape = (1, video.latents.shape[0], model.config.layout.window, *video.latents.shape[2:])
        for k in range(n):
            generator = torch.Generator().manual_seed(seed + v)
            for _ in range(k):  # the noises of the rollout's sections before k (generate draws one per section)
                torch.randn(noise_shape, generator=generator)
            prefix = video.latents[None, :, 1 : video.section_frames(k).start] if k else None
            out = generate(
                model,
                cond,
                GenerationConfig(sections=1, steps=steps, guidance=guidance),
                progress=False,
                prefix=prefix,
                generator=generator,
            ).latents[0]
            frames = video.section_frames(k)
            teacher[k] = world.frame_errors(out[:, frames], truth[:, frames])["total"].mean()
        rollouts.append(rollout)
        teachers.append(teacher)
        per.append(float((rollout[1:] - teacher[1:]).mean()) if n > 1 else 0.0)
    common = min(len(r) for r in rollouts)  # videos differ in length (entrance, time in view)
    return ExposureResult(
        float(np.mean(per)),
        per,
        np.mean([r[:common] for r in rollouts], axis=0).tolist(),
        np.mean([t[:common] for t in teachers], axis=0).tolist(),
    )


def psi_tokens(
    model: MemoryPackTransformer, world: World, absence: int, *, seed: int, videos: int
) -> tuple[np.ndarray, np.ndarray]:
    """ψ's context tokens [videos, M, D] after the object left view for `absence` sections, and the identities.

    ψ is built from ground-truth sections up to (not including) the return, exactly as `memory_recall`'s
    prefix builds it; the tokens are what the backbone receives. Identities cycle through the K.
    """
    features, labels = [], []
    with torch.no_grad():
        for v in range(videos):
            video = world.video(seed + 1000 * absence + v, absence=absence, identity=v % world.config.identities)
            memory = model.initial_memory(world.conditioning(video))
            for section in range(video.returns):
                memory = model.update_memory(memory, video.latents[None, :, video.section_frames(section)])
            features.append(model.semantic_pack.context_tokens(memory)[0].double().numpy())
            labels.append(video.identity)
    return np.stack(features), np.asarray(labels)


def memory_probe(
    model: MemoryPackTransformer,
    world: World,
    absences: list[int],
    *,
    seed: int,
    videos: int = 160,
    train_fraction: float = 0.75,
    ridge: float = 10.0,
) -> dict[int, float] | None:
    """Held-out accuracy of a ridge read-out of the identity from ψ after L absent sections, per L.

    The features are ψ's context tokens (`psi_tokens`), each standardised over the fitting videos. Chance
    is 1/K; None when the model has no memory.
    """
    if not model.uses_memory:
        return None
    return {
        absence: readout_accuracy(
            *psi_tokens(model, world, absence, seed=seed, videos=videos),
            world.config.identities,
            train_fraction=train_fraction,
            ridge=ridge,
        )
        for absence in absences
    }


def readout_accuracy(
    tokens: np.ndarray, labels: np.ndarray, identities: int, *, train_fraction: float = 0.75, ridge: float = 10.0
) -> float:
    """Held-out accuracy of a ridge classifier of `labels` from `tokens` [videos, M, D], every feature
    standardised over the first `train_fraction` of the videos (which fit it)."""
    videos = tokens.shape[0]
    fit = int(videos * train_fraction)
    x = tokens.reshape(videos, -1)
    x = (x - x[:fit].mean(0)) / (x[:fit].std(0) + 1e-6)
    targets = np.eye(identities)[labels[:fit]]
    weights = np.linalg.solve(x[:fit].T @ x[:fit] + ridge * np.eye(x.shape[1]), x[:fit].T @ targets)
    return float(((x[fit:] @ weights).argmax(1) == labels[fit:]).mean())


def memory_energy(
    model: MemoryPackTransformer,
    world: World,
    absences: list[int],
    *,
    seed: int,
    videos: int = 160,
) -> dict[int, dict[str, float]] | None:
    """How loudly ψ holds the identity: shares of its context tokens' energy (mean square), per L.

    `varying`: the part that differs between videos (variance over videos / mean square); `identity`: the
    part the identity explains (variance of the per-identity means / mean square). A read-out standardises
    every feature and so finds an identity at any share; the backbone reads ψ as it comes, and how fast it
    learns to depends on this share (README: a faint oracle at 1 % is not read in 800 steps, at 100 % in
    400). None when the model has no memory.
    """
    if not model.uses_memory:
        return None
    return {
        absence: energy_shares(*psi_tokens(model, world, absence, seed=seed, videos=videos)) for absence in absences
    }


def energy_shares(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """`varying` and `identity` shares of the energy of tokens `x` [videos, ...] labelled `y` (see `memory_energy`)."""
    energy = float(np.square(x).mean())
    if energy == 0.0:  # a silent ψ (e.g. a zero-initialised projection): no share of nothing
        return {"varying": 0.0, "identity": 0.0}
    groups = [x[y == k] for k in np.unique(y)]  # balanced: the same number of videos per identity
    means = np.stack([g.mean(0) for g in groups])
    # the spread of K sample means includes (K − 1)/K · within-identity variance / n: remove it (one-way ANOVA)
    noise = (len(groups) - 1) / len(groups) * float(np.mean([g.var(0, ddof=1).mean() / len(g) for g in groups]))
    return {
        "varying": float(x.var(0).mean()) / energy,
        "identity": max(0.0, float(means.var(0).mean()) - noise) / energy,
    }

"""Autoregressive section-by-section generation: FramePack-F1 sampling with SemanticPack memory.

One section = `layout.window` latent frames. For section n the sampler integrates the flow from
noise (t = 0) to data (t = 1) with Euler steps, each a forward of the MemoryPack transformer
conditioned on the packed recent history (1x/2x/4x, absolute RoPE indices; past the trained length,
what `GenerationConfig.positions` says) and on ψ. After the section, ψ ← Squeeze(ψ, Memorize(section))
and the section joins the history.

Why the cost of a section is flat in the video's length: only the last `layout.context_frames`
history frames are kept for packing (older ones are counted in `frames_before`, which keeps the
RoPE indices absolute), and ψ has a fixed size after its first update. Finished sections move to
the CPU, so device memory holds one section's working set however long the video gets.

Noise is drawn on the CPU from one `torch.Generator`, section after section, exactly as diffusers'
`HunyuanVideoFramepackPipeline` draws it: with SemanticPack off, `rope="relative"` and the same
weights, seed, steps and guidance, `generate` reproduces that pipeline's "vanilla" (F1) latents
(tests/test_generate.py pins the tolerance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mempack import flow
from mempack.model import Conditioning, MemoryPackTransformer, PackedHistory, pack_history
from mempack.model.history import POSITIONS
from mempack.model.semantic_pack import SemanticMemory
from mempack.presets import frames_for_sections, sections_for_frames  # noqa: F401  (re-export: the clock lives in presets)

log = logging.getLogger(__name__)


DEFAULT_SAMPLING_GUIDANCE = 10.0  # FramePack-F1's distilled-guidance default


@dataclass
class GenerationConfig:
    """How to sample: sections, Euler steps, F1's distilled guidance, seed, memory on/off."""

    sections: int = 1
    steps: int = 25
    guidance: float = DEFAULT_SAMPLING_GUIDANCE
    seed: int = 0
    use_memory: bool = True  # False: the FramePack-only ablation (no ψ tokens)
    dynamic_shift: bool = True  # F1's resolution-dependent time shift (μ capped at log 7)
    # RoPE positions past the model's trained length (mempack.model.history.POSITIONS; docs/long_videos.md);
    # None: the model's own `config.positions`
    positions: str | None = None

    def __post_init__(self) -> None:
        if self.sections < 1:
            raise ValueError(f"sections must be >= 1, got {self.sections}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.positions is not None and self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")


@dataclass
class GenerationResult:
    """All latents [B, C, 1 + sections·window, h, w] (the start latent first) and per-section timings."""

    latents: torch.Tensor
    section_seconds: list[float] = field(default_factory=list)


def section_times(
    model: MemoryPackTransformer, latent_shape: tuple[int, ...], steps: int, dynamic_shift: bool = True
) -> torch.Tensor:
    """The paper-time grid of one section, with F1's shift for this section's token count.

    Shared by generation and student forcing, so the ablation samples exactly as inference does.
    """
    patch = model.backbone.config.patch_size
    tokens = latent_shape[2] * latent_shape[3] * latent_shape[4] // patch**2
    mu = flow.dynamic_shift_mu(tokens) if dynamic_shift else None
    return flow.sampling_times(steps, mu)


@torch.no_grad()
def sample_section(
    model: MemoryPackTransformer,
    cond: Conditioning,
    packed: PackedHistory,
    memory: SemanticMemory | None,
    noise: torch.Tensor,
    times: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Euler-integrate one section from `noise` along `times` (t = 0 noise → t = 1 data)."""
    x = noise.to(device=cond.start_latent.device, dtype=torch.float32)
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        v = model(x, torch.tensor([t], device=x.device), cond, packed, memory, guidance)
        x = flow.euler_step(x, v.float(), t, t_next)
    return x


def _trim_tail(tail: list[torch.Tensor], keep: int) -> tuple[list[torch.Tensor], int]:
    """Drop whole sections from the front while the rest still holds `keep` frames; return dropped frames."""
    dropped = 0
    while len(tail) > 1 and sum(s.shape[2] for s in tail[1:]) >= keep:
        dropped += tail.pop(0).shape[2]
    return tail, dropped


MEMORY_ON_SWITCH = ("keep", "reanchor")


@dataclass
class SampledSection:
    """One new section as `generate_sections` yields it: its index among the new sections, its latents
    [B, C, window, h, w] (on the device; they join the history), and the wall-clock seconds it took."""

    index: int
    latents: torch.Tensor
    seconds: float


@torch.no_grad()
def generate(
    model: MemoryPackTransformer,
    cond: Conditioning,
    config: GenerationConfig,
    *,
    progress: bool = True,
    on_section: Callable[[int, torch.Tensor], None] | None = None,
    generator: torch.Generator | None = None,
    prefix: torch.Tensor | None = None,
    section_conds: Sequence[Conditioning] | None = None,
    memory_on_switch: str = "keep",
) -> GenerationResult:
    """Generate `config.sections` sections after the start latent; returns every latent frame.

    `prefix` [B, C, T, h, w] continues a given video: its latents (the frames after the start latent)
    become the history, and each of its whole sections updates ψ as a generated one would, so the
    memory has seen everything the video showed. The result holds the start latent, the prefix and
    the new sections. `on_section(n, latents)` is called after each new section (for incremental
    decoding, previews or cost accounting). `generator` (a CPU generator) replaces the one seeded from
    `config.seed`, for callers that drew other randomness from it first, as diffusers' pipeline does
    for the image latent. `section_conds` and `memory_on_switch`: see `generate_sections`.
    """
    finished: list[torch.Tensor] = [cond.start_latent.float().cpu()]
    if prefix is not None:
        finished.append(prefix.float().cpu())
    seconds: list[float] = []
    sections = generate_sections(
        model,
        cond,
        config,
        generator=generator,
        prefix=prefix,
        section_conds=section_conds,
        memory_on_switch=memory_on_switch,
    )
    for section in tqdm(sections, total=config.sections, desc="sections", unit="section", disable=not progress):
        finished.append(section.latents.cpu())
        seconds.append(section.seconds)
        if on_section is not None:
            on_section(section.index, section.latents)
    return GenerationResult(torch.cat(finished, dim=2), seconds)


@torch.no_grad()
def generate_sections(
    model: MemoryPackTransformer,
    cond: Conditioning,
    config: GenerationConfig,
    *,
    generator: torch.Generator | None = None,
    prefix: torch.Tensor | None = None,
    section_conds: Sequence[Conditioning] | None = None,
    memory_on_switch: str = "keep",
) -> Iterator[SampledSection]:
    """`generate` one section at a time: each is yielded as soon as it is sampled, and nothing of it is
    kept here but the history tail, so a consumer that lets sections go holds memory flat in length.

    `section_conds[n]` conditions new section n (a prompt timeline: the backbone's text tokens follow
    it); `cond` gives ψ₀, the image tokens and the start latent. A switch is a section whose
    conditioning is another object than the previous section's. `memory_on_switch="keep"` (the
    default, measured in docs/generation.md) carries ψ across a switch: what was seen stays
    recallable. `"reanchor"` rebuilds ψ from the new prompt and lets it read the history tail the
    backbone still sees: a scene cut, where the memory of earlier sections is dropped.

    Sections past the model's trained length (`model.config.trained_sections`) get the RoPE positions
    `config.positions` says (`mempack.model.history.window_offset`); inside it, every option is absolute.
    """
    if memory_on_switch not in MEMORY_ON_SWITCH:
        raise ValueError(f"memory_on_switch must be one of {MEMORY_ON_SWITCH}, got {memory_on_switch!r}")
    if section_conds is not None and len(section_conds) != config.sections:
        raise ValueError(f"section_conds has {len(section_conds)} entries for {config.sections} sections")
    model.eval()
    layout = model.config.layout
    start = cond.start_latent.float()
    batch, channels, _, height, width = start.shape
    shape = (batch, channels, layout.window, height, width)
    times = section_times(model, shape, config.steps, config.dynamic_shift)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
    memory = model.initial_memory(cond) if config.use_memory else None
    tail: list[torch.Tensor] = []  # the most recent sections, on the device
    frames_before = 0  # history frames dropped from the tail
    if prefix is not None:
        memory, tail, frames_before = _read_prefix(model, memory, prefix.to(start), layout.window)
    previous = cond
    positions = config.positions or model.config.positions
    for n in range(config.sections):
        began = time.perf_counter()
        here = cond if section_conds is None else section_conds[n]
        if here is not previous and memory is not None and memory_on_switch == "reanchor":
            memory = _reanchored(model, here, tail, layout.window)
        previous = here
        history = torch.cat(tail, dim=2) if tail else None
        packed = pack_history(
            start,
            history,
            layout,
            model.config.rope,
            frames_before=frames_before,
            positions=positions,
            trained_frames=model.config.trained_frames,
        )
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        section = sample_section(model, here, packed, memory, noise, times, config.guidance)
        memory = model.update_memory(memory, section) if memory is not None else None
        tail.append(section)
        tail, dropped = _trim_tail(tail, layout.context_frames)
        frames_before += dropped
        yield SampledSection(n, section, time.perf_counter() - began)


def _reanchored(
    model: MemoryPackTransformer, cond: Conditioning, tail: list[torch.Tensor], window: int
) -> SemanticMemory | None:
    """ψ₀ of the new prompt, updated with the whole sections still in the history tail."""
    memory = model.initial_memory(cond)
    for section in tail:
        if section.shape[2] == window:
            memory = model.update_memory(memory, section)
    return memory


def _read_prefix(
    model: MemoryPackTransformer, memory: SemanticMemory | None, prefix: torch.Tensor, window: int
) -> tuple[SemanticMemory | None, list[torch.Tensor], int]:
    """ψ after each whole section of a given video, and the history tail the sampler keeps of it."""
    if prefix.ndim != 5 or prefix.shape[2] == 0:
        raise ValueError(f"prefix must be latents [B, C, T>0, h, w], got {tuple(prefix.shape)}")
    sections = list(prefix.split(window, dim=2))
    for section in sections:
        if memory is not None and section.shape[2] == window:  # ψ is written once per whole section
            memory = model.update_memory(memory, section)
    tail, dropped = _trim_tail(sections, model.config.layout.context_frames)
    return memory, tail, dropped

"""Prompts per section: a timeline of (seconds → prompt) whose switches snap to section boundaries.

A long video is generated section by section (1.2 s each at 30 fps, `mempack.presets`), so a prompt can
change only where a section starts: each switch moves to the nearest section start
(`presets.section_start_seconds`). The text tokens of every section follow the timeline; ψ₀ is built
from the first prompt and ψ is carried across switches (docs/generation.md measures why).

Written three ways, all to the same `PromptTimeline`:
* Python: `{0: "a kite rises", 12: "it dives"}` (seconds → prompt);
* one line (the CLI's `--prompt`, the MLflow model's `prompt` column): `"0s: a kite rises | 12s: it dives"`;
* a YAML or JSON file of the same mapping (`--timeline FILE`; keys as numbers or "12s").
Seconds count from the first new section: the video's start for an image, the end of a continued video.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from mempack.presets import FPS, SECTION_LATENT_FRAMES, VAE_TEMPORAL, section_start_seconds

_KEY = r"\s*(\d+(?:\.\d+)?)\s*s?\s*"
_ENTRY = re.compile(rf"^{_KEY}:\s*(.*?)\s*$", re.S)
_LOOKS_LIKE_TIMELINE = re.compile(r"^\s*\d+(?:\.\d+)?\s*s\s*:")


class TimelineError(ValueError):
    """A timeline that cannot be read or does not fit the video: one clear line."""


@dataclass(frozen=True)
class PromptTimeline:
    """Prompts at times in seconds, sorted, the first at 0."""

    entries: tuple[tuple[float, str], ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise TimelineError("a prompt timeline needs at least one prompt")
        times = [t for t, _ in self.entries]
        for t, prompt in self.entries:
            if not math.isfinite(t) or t < 0:
                raise TimelineError(f"timeline times must be finite seconds >= 0, got {t}")
            if not isinstance(prompt, str):
                raise TimelineError(f"timeline prompts must be strings, got {type(prompt).__name__} at {t:g}s")
        if times != sorted(set(times)):
            raise TimelineError(f"timeline times must be distinct, got {times}")
        if times[0] != 0:
            raise TimelineError(f"a timeline starts at 0s (what comes before {times[0]:g}s?)")

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> PromptTimeline:
        """{seconds: prompt}; keys may be numbers or strings such as "12" or "12s"."""
        entries = []
        for key, prompt in mapping.items():
            entries.append((_seconds(key), prompt))
        return cls(tuple(sorted(entries, key=lambda e: e[0])))

    @classmethod
    def parse(cls, text: str) -> PromptTimeline:
        """ "0s: a kite rises | 12s: it dives" → a timeline."""
        entries = []
        for part in text.split("|"):
            match = _ENTRY.match(part)
            if match is None:
                raise TimelineError(f"timeline entries are 'SECONDSs: prompt' separated by '|', got {part.strip()!r}")
            entries.append((float(match.group(1)), match.group(2)))
        return cls(tuple(sorted(entries, key=lambda e: e[0])))

    @classmethod
    def load(cls, path: str | Path) -> PromptTimeline:
        """A YAML or JSON file holding one mapping of seconds → prompt."""
        path = Path(path)
        if not path.is_file():
            raise TimelineError(f"timeline file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001 — json and yaml raise their own kinds
            raise TimelineError(f"cannot read timeline {path}: {type(err).__name__}") from None
        if not isinstance(data, Mapping):
            raise TimelineError(f"timeline {path} must hold one mapping of seconds to prompts")
        return cls.from_mapping(data)

    @property
    def prompts(self) -> list[str]:
        return [prompt for _, prompt in self.entries]

    def section_indices(
        self, sections: int, fps: float = FPS, window: int = SECTION_LATENT_FRAMES, temporal: int = VAE_TEMPORAL
    ) -> list[int]:
        """For each new section, the index of its prompt in `entries` (switches at the nearest section start).

        A switch that lands at or after the video's end, or two that land on the same section, is an
        error: the prompt would never be seen.
        """
        step = section_start_seconds(1, fps, window, temporal)
        starts = [math.floor(t / step + 0.5) for t, _ in self.entries]  # nearest; ties go later
        length = section_start_seconds(sections, fps, window, temporal)
        for (t, _), start in zip(self.entries, starts, strict=True):
            if start >= sections:
                raise TimelineError(
                    f"the timeline's switch at {t:g}s is past the video's end ({sections} sections, "
                    f"{length:g}s; switches snap to section starts every {step:g}s)"
                )
        for ((t0, _), (t1, _)), (a, b) in zip(pairwise(self.entries), pairwise(starts), strict=True):
            if a == b:
                raise TimelineError(
                    f"switches at {t0:g}s and {t1:g}s snap to the same section start ({a * step:g}s): "
                    f"put them at least {step:g}s apart"
                )
        out, entry = [], 0
        for n in range(sections):
            while entry + 1 < len(starts) and starts[entry + 1] <= n:
                entry += 1
            out.append(entry)
        return out


def _seconds(key) -> float:
    if isinstance(key, bool):
        raise TimelineError(f"timeline keys are seconds, got {key!r}")
    if isinstance(key, (int, float)):
        return float(key)
    match = re.fullmatch(_KEY, str(key))
    if match is None:
        raise TimelineError(f"timeline keys are seconds such as 12 or '12s', got {key!r}")
    return float(match.group(1))


def looks_like_timeline(text: str) -> bool:
    """Whether a prompt string is written as a timeline ("0s: ... | 12s: ...")."""
    return bool(_LOOKS_LIKE_TIMELINE.match(text))


def read_prompt(text: str) -> str | PromptTimeline:
    """A prompt string as the CLI and the MLflow model receive it: a timeline when written as one."""
    return PromptTimeline.parse(text) if looks_like_timeline(text) else text

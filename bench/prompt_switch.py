"""Does a prompt switch cost the memory? Recall of an identity seen before a switch, on the synthetic world.

A timeline's switch changes the backbone's text tokens from the switched section on
(`mempack.sampling.generate_sections(section_conds=...)`). What happens to ψ is the decision this
measures. Each return event of `mempack.fidelity.metrics.memory_recall` (a ground-truth prefix in which
the object was seen, then out of view for L sections; the model generates the return section) is run
three ways, with the same noise:

    no_switch   one prompt throughout (the plain recall)
    keep        the prompt switches at the return section; ψ is carried on (the pipeline's choice)
    reanchor    the prompt switches there; ψ is rebuilt from the new prompt and reads the history tail

The new prompt is another draw of the world's prompt (same shape and scale; the world never names the
identity in its prompt, so a switch says nothing about the object). Needs a model trained on the world:
a `bench/method_fidelity.py` export and its results JSON (for the world's settings). Prints a table and
writes JSON (default bench/results/prompt_switch.json).

    python bench/method_fidelity.py --variants memorypack --seeds 1 --stage1-clip return --out /tmp/mf \\
        --json /tmp/mf.json
    python bench/prompt_switch.py --model /tmp/mf/models/memorypack-seed0 --results /tmp/mf.json
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("no_switch", "keep", "reanchor")


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    model: str  # a MemoryPackTransformer folder trained on the world
    results: str  # the method_fidelity JSON that trained it (world settings)
    absence: str = "2,4,8"  # absent sections before the return, comma-separated
    events: int = 12  # return events per absence (identities balanced)
    steps: int | None = None  # Euler steps (default: the training run's sample steps)
    json: str = "bench/results/prompt_switch.json"

    @property
    def absences(self) -> list[int]:
        return sorted({int(a) for a in self.absence.split(",") if a.strip()})

    def __post_init__(self) -> None:
        try:
            absences = self.absences
        except ValueError:
            absences = []
        if not absences:
            raise ValueError(f"--absence must be integers, got {self.absence!r}")
        for path in (self.model, self.results):
            if not Path(path).exists():
                raise ValueError(f"not found: {path}")


def switched(cond, seed: int):
    """The world's conditioning with another prompt of the same shape and scale."""
    import torch

    from mempack.model import Conditioning

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(cond.prompt_embeds.shape, generator=g) * cond.prompt_embeds.std()
    pooled = torch.randn(cond.pooled.shape, generator=g) * cond.pooled.std()
    return Conditioning(prompt, cond.prompt_mask, pooled, cond.image_embeds, cond.start_latent)


def recall_under_switch(model, world, absences: list[int], events: int, *, seed: int, steps: int) -> dict:
    """Per mode and absence L: right identity / events at the return section."""

    from mempack.fidelity.world import OBJECT
    from mempack.sampling import GenerationConfig, generate

    lane = (world.config.height - OBJECT, world.config.height)
    out = {mode: {} for mode in MODES}
    for absence in absences:
        right = {mode: 0 for mode in MODES}
        for e in range(events):  # the same held-out videos and noise as memory_recall
            video = world.video(seed + 1000 * absence + e, absence=absence, identity=e % world.config.identities)
            prefix = video.latents[:, 1 : video.section_frames(video.returns).start][None]
            cond = world.conditioning(video)
            other = switched(cond, seed + 7 + e)
            for mode in MODES:
                kwargs = {} if mode == "no_switch" else {"section_conds": [other], "memory_on_switch": mode}
                latents = generate(
                    model,
                    cond,
                    GenerationConfig(sections=1, steps=steps, guidance=1.0, seed=seed + e),
                    progress=False,
                    prefix=prefix,
                    **kwargs,
                ).latents[0]
                right[mode] += (
                    world.identity_in(latents, video.section_frames(video.returns), rows=lane) == video.identity
                )
        for mode in MODES:
            out[mode][absence] = right[mode] / events
    return out


def main(argv=None) -> dict:
    from mempack.config import parse_config

    args = parse_config(Options, argv, __doc__.splitlines()[0], required=("model", "results"))
    absences = args.absences
    import torch

    from bench.method_fidelity import settings_from_dict, world_for
    from mempack.model import MemoryPackTransformer

    torch.set_num_threads(1)
    settings = settings_from_dict(json.loads(Path(args.results).read_text())["settings"])
    world = world_for(settings, 1)
    events = -(-args.events // world.config.identities) * world.config.identities
    model = MemoryPackTransformer.from_pretrained(args.model).eval()
    began = time.perf_counter()
    recall = recall_under_switch(
        model, world, absences, events, seed=900_000_000, steps=args.steps or settings.sample_steps
    )
    result = {
        "model": str(args.model),
        "absences": absences,
        "events": events,
        "chance": 1 / world.config.identities,
        "recall": recall,
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(f"recall of the identity at its return ({events} events per L; chance {result['chance']:.2f})")
    print("| mode | " + " | ".join(f"L={a}" for a in absences) + " |")
    print("|---|" + "---|" * len(absences))
    for mode in MODES:
        print(f"| {mode} | " + " | ".join(f"{recall[mode][a]:.2f}" for a in absences) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Training cost per video of teacher, direct and student forcing (same model, same clips).

For each mode, one video of `--clips` clips goes through `mempack.train.forcing.video_clip_steps` with a
backward per clip (what a stage-2 step does, minus the optimizer): wall time (median of repeats,
after a warm-up) and FLOPs counted by torch's FlopCounterMode. Direct forcing reuses the forward it
already made (x̃ = x_t + (1−t)·v), so it should cost what teacher forcing costs; student forcing pays
k extra sampling forwards per clip. Tiny preset by default. Prints a table and writes
bench/results/forcing_cost.json.

    python bench/forcing_cost.py [--clips 4] [--student-steps 5] [--repeats 5] [--size 64]
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    clips: int = 4
    student_steps: int = 5
    repeats: int = 5
    size: int = 64  # frame side in pixels (latent side = size / 8)
    preset: str = "tiny"


def one_video(model, clips, cond, config, seed: int) -> None:
    from mempack.train.forcing import video_clip_steps

    generator = torch.Generator().manual_seed(seed)
    for step in video_clip_steps(model, clips, cond, config, generator=generator):
        step.loss.backward()
    model.zero_grad(set_to_none=True)


def measure(mode: str, model, clips, cond, student_steps: int, repeats: int) -> dict:
    from mempack.train.forcing import ForcingConfig

    config = ForcingConfig(mode=mode, student_steps=student_steps)
    one_video(model, clips, cond, config, seed=0)  # warm-up
    times = []
    for r in range(repeats):
        started = time.perf_counter()
        one_video(model, clips, cond, config, seed=r)
        times.append(time.perf_counter() - started)
    counter = FlopCounterMode(display=False)
    with counter:
        one_video(model, clips, cond, config, seed=0)
    return {"mode": mode, "seconds": statistics.median(times), "gflops": counter.get_total_flops() / 1e9}


def main() -> None:
    from mempack.config import parse_config

    args = parse_config(Options, None, __doc__.splitlines()[0])

    from mempack.model import Conditioning, MemoryPackTransformer
    from mempack.presets import SECTION_LATENT_FRAMES, get_preset

    torch.manual_seed(0)
    preset = get_preset(args.preset)
    side = args.size // preset.vae_spatial
    model = MemoryPackTransformer.from_preset(args.preset, seed=0)
    model.set_trainable("head")  # stage 2: what Direct Forcing trains
    cond = Conditioning(
        torch.randn(1, preset.max_prompt_tokens, preset.text_embed_dim),
        torch.ones(1, preset.max_prompt_tokens, dtype=torch.int64),
        torch.randn(1, preset.pooled_dim),
        torch.randn(1, 8, preset.image_embed_dim),
        torch.randn(1, preset.latent_channels, 1, side, side),
    )
    clips = torch.randn(args.clips, preset.latent_channels, SECTION_LATENT_FRAMES, side, side)
    rows = [
        measure(mode, model, clips, cond, args.student_steps, args.repeats) for mode in ("teacher", "direct", "student")
    ]
    teacher = rows[0]
    print(f"{'mode':>8} {'s/video':>9} {'GFLOP/video':>12} {'time/teacher':>13} {'flops/teacher':>14}")
    for r in rows:
        r["time_over_teacher"] = r["seconds"] / teacher["seconds"]
        r["flops_over_teacher"] = r["gflops"] / teacher["gflops"]
        label = r["mode"] if r["mode"] != "student" else f"student({args.student_steps})"
        print(
            f"{label:>8} {r['seconds']:9.4f} {r['gflops']:12.3f} {r['time_over_teacher']:13.3f} "
            f"{r['flops_over_teacher']:14.3f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "forcing_cost.json"
    out.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

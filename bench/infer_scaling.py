"""Seconds per section of autoregressive generation as the video grows, against diffusers' F1 pipeline.

Ours: `mempack.sampling.generate` with SemanticPack on (absolute RoPE, ψ updated after every
section). Reference: diffusers' `HunyuanVideoFramepackPipeline` (sampling_type="vanilla", the F1
sampler) on the *same backbone weights*, latents out (no VAE decode in either), timed per section
with a step-end callback. Tiny preset; both draw noise from a seeded CPU generator. Prints a table
and writes bench/results/infer_scaling.json.

    python bench/infer_scaling.py [--sections 40] [--steps 10] [--size 64] [--device cpu]
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    sections: int = 40
    steps: int = 10
    size: int = 64  # frame side in pixels
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.sections < 10:
            raise ValueError("--sections must be >= 10 (first and last five sections are compared)")


def ours(model, cond, sections: int, steps: int) -> list[float]:
    from mempack.sampling import GenerationConfig, generate

    stamps = [time.perf_counter()]
    generate(
        model,
        cond,
        GenerationConfig(sections=sections, steps=steps, seed=0),
        progress=False,
        on_section=lambda n, x: stamps.append(time.perf_counter()),
    )
    return [b - a for a, b in pairwise(stamps)]


def diffusers_pipeline(model, encoders, cond, size: int, sections: int, steps: int) -> list[float]:
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline

    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=encoders.text_encoder,
        tokenizer=encoders.tokenizer,
        transformer=model.backbone,
        vae=encoders.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True),
        text_encoder_2=encoders.text_encoder_2,
        tokenizer_2=encoders.tokenizer_2,
        image_encoder=encoders.image_encoder,
        feature_extractor=encoders.feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    stamps = [time.perf_counter()]

    def on_step(pipeline, i, t, kwargs):
        if i == steps - 1:
            stamps.append(time.perf_counter())
        return {}

    from mempack.sample import sample_image

    pipe(
        image=sample_image(size, size),
        prompt_embeds=cond.prompt_embeds,
        prompt_attention_mask=cond.prompt_mask,
        pooled_prompt_embeds=cond.pooled,
        height=size,
        width=size,
        num_frames=33 * sections,
        latent_window_size=9,
        num_inference_steps=steps,
        guidance_scale=10.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        sampling_type="vanilla",
        callback_on_step_end=on_step,
    )
    return [b - a for a, b in pairwise(stamps)]


def summarise(seconds: list[float], window: int = 5) -> dict:
    """First/last `window` sections' median (robust to a noisy single section) and their ratio."""
    first, last = statistics.median(seconds[:window]), statistics.median(seconds[-window:])
    return {"first_s": first, "last_s": last, "last_over_first": last / first, "mean_s": statistics.fmean(seconds)}


def main() -> None:
    from mempack.config import parse_config

    args = parse_config(Options, None, __doc__.splitlines()[0])

    from mempack.encoders import VideoEncoders
    from mempack.inference import conditioning
    from mempack.model import MemoryPackTransformer
    from mempack.sample import SAMPLE_PROMPT, sample_image

    torch.set_num_threads(max(1, torch.get_num_threads()))
    encoders = VideoEncoders.build("tiny", device=args.device)
    cond = conditioning(encoders, sample_image(args.size, args.size), SAMPLE_PROMPT)
    model = MemoryPackTransformer.from_preset("tiny", seed=0, device=args.device).eval()
    ours(model, cond, 2, args.steps)  # warm-up
    runs = {
        "memorypack": ours(model, cond, args.sections, args.steps),
        "diffusers_f1": diffusers_pipeline(model, encoders, cond, args.size, args.sections, args.steps),
    }
    print(f"{'section':>8} {'memorypack s':>13} {'diffusers s':>12}")
    for n in sorted({1, 2, 5, 10, 20, 30, args.sections} & set(range(1, args.sections + 1))):
        print(f"{n:>8} {runs['memorypack'][n - 1]:13.4f} {runs['diffusers_f1'][n - 1]:12.4f}")
    summary = {name: summarise(seconds) for name, seconds in runs.items()}
    print(f"\n{'method':>13} {'first s':>9} {'last s':>9} {'last/first':>11} {'mean s':>9}")
    for name, s in summary.items():
        print(f"{name:>13} {s['first_s']:9.4f} {s['last_s']:9.4f} {s['last_over_first']:11.2f} {s['mean_s']:9.4f}")
    ratio = summary["memorypack"]["mean_s"] / summary["diffusers_f1"]["mean_s"]
    print(f"\nmemorypack / diffusers time per section: {ratio:.2f} (ψ update + ψ tokens are the difference)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "infer_scaling.json"
    out.write_text(
        json.dumps(
            {"config": vars(args), "seconds_per_section": runs, "summary": summary, "memorypack_over_diffusers": ratio},
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

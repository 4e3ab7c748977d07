"""Seconds per section of autoregressive generation as the video grows, against diffusers' F1 pipeline,
and MemoryPack's per-section cost in FLOPs at the real framepack-f1 size.

Time. Ours: `mempack.sampling.generate` with SemanticPack on (absolute RoPE, ψ updated after every
section). Reference: diffusers' `HunyuanVideoFramepackPipeline` (sampling_type="vanilla", the F1
sampler) on the *same backbone weights*, latents out (no VAE decode in either), timed per section
with a step-end callback. Tiny preset; both draw noise from a seeded CPU generator. Prints a table
and writes bench/results/infer_scaling.json.

FLOPs (the overhead users pay, no weights needed): one section of framepack-f1 at 480x832 with full
history, counted by `torch.utils.flop_counter.FlopCounterMode` on the meta device. diffusers' F1 is
`HunyuanVideoFramepackTransformer3DModel` called without ψ (MemoryPack's own backbone with no memory
tokens is exactly that call); MemoryPack adds ψ's tokens to every step's forward and one ψ update per
section (ψ₀ once per video). The encoders and the VAE decode are the same in both and left out. Prints
a table and writes docs/results/infer_flops.json (deterministic: the docs quote it).

    python bench/infer_scaling.py [--sections 40] [--steps 10] [--size 64] [--device cpu]
    python bench/infer_scaling.py --flops-only [--flops-steps 25]
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
FLOPS_JSON = Path(__file__).resolve().parents[1] / "docs" / "results" / "infer_flops.json"  # quoted by docs


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    sections: int = 40
    steps: int = 10
    size: int = 64  # frame side in pixels
    device: str = "cpu"
    flops_only: bool = False  # only the FLOPs at framepack-f1 size
    flops_steps: int = 25  # Euler steps per section for the FLOPs

    def __post_init__(self) -> None:
        if self.sections < 10:
            raise ValueError("--sections must be >= 10 (first and last five sections are compared)")
        if self.flops_steps < 1:
            raise ValueError("--flops-steps must be >= 1")


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


def section_flops(preset: str = "framepack-f1", pixel_size=None, steps: int = 25) -> dict:
    """FLOPs of one section on meta: a step's forward with and without ψ's tokens, ψ's update, ψ₀."""
    from torch.utils.flop_counter import FlopCounterMode

    from mempack.inference_plan import _inference_trace, meta_components, section_inputs
    from mempack.model import MemoryPackTransformer
    from mempack.model.memorypack import MemoryPackConfig
    from mempack.presets import get_preset
    from mempack.train.plan import SIGLIP_IMAGE_TOKENS

    spec = get_preset(preset)
    pixel_size = tuple(pixel_size or spec.default_bucket)
    latent_hw = (pixel_size[0] // spec.vae_spatial, pixel_size[1] // spec.vae_spatial)
    image_tokens = SIGLIP_IMAGE_TOKENS if spec.image_embed_dim == 1152 else 4
    parts = meta_components(spec)
    model = MemoryPackTransformer(parts["transformer"], parts["semantic_pack"], MemoryPackConfig(preset=spec.name))
    context = image_tokens + spec.max_prompt_tokens  # the backbone trims its context to this by `.item()`

    def count(fn, scalar: int = context) -> int:
        with _inference_trace(scalar), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    with _inference_trace(context):
        cond, packed, section = section_inputs(model, spec, latent_hw, image_tokens)
        memory = model.update_memory(model.initial_memory(cond), section)
    psi_tokens = memory.tokens.shape[1]  # all real on meta (ψ keeps every token at inference)
    t = torch.full((1,), 0.5, device="meta")
    flops = {
        "forward_f1": count(lambda: model(section, t, cond, packed, None, 10.0)),
        "forward_with_psi": count(lambda: model(section, t, cond, packed, memory, 10.0), context + psi_tokens),
        "psi_update": count(lambda: model.update_memory(memory, section)),
        "psi_initial": count(lambda: model.initial_memory(cond)),
    }
    per_section_f1 = steps * flops["forward_f1"]
    per_section_ours = steps * flops["forward_with_psi"] + flops["psi_update"]
    return {
        "preset": spec.name,
        "pixel_size": list(pixel_size),
        "steps": steps,
        "memory_tokens": psi_tokens,
        "flops": flops,
        "per_section_f1": per_section_f1,
        "per_section_memorypack": per_section_ours,
        "overhead": per_section_ours / per_section_f1 - 1,
    }


def print_flops(result: dict) -> None:
    f = result["flops"]
    print(
        f"\nFLOPs of one section, {result['preset']} at {result['pixel_size'][0]}x{result['pixel_size'][1]}, "
        f"{result['steps']} steps, {result['memory_tokens']} psi tokens (meta device, no weights)"
    )
    rows = [
        ("F1 forward (one step)", f["forward_f1"]),
        ("forward with psi tokens", f["forward_with_psi"]),
        ("psi update (per section)", f["psi_update"]),
        ("psi_0 (once per video)", f["psi_initial"]),
        ("section, diffusers F1", result["per_section_f1"]),
        ("section, MemoryPack", result["per_section_memorypack"]),
    ]
    for name, value in rows:
        print(f"{name:>26} {value / 1e12:12.3f} TFLOP")
    print(f"{'MemoryPack overhead':>26} {100 * result['overhead']:11.2f} %")


def summarise(seconds: list[float], window: int = 5) -> dict:
    """First/last `window` sections' median (robust to a noisy single section) and their ratio."""
    first, last = statistics.median(seconds[:window]), statistics.median(seconds[-window:])
    return {"first_s": first, "last_s": last, "last_over_first": last / first, "mean_s": statistics.fmean(seconds)}


def main() -> None:
    from mempack.config import parse_config

    args = parse_config(Options, None, __doc__.splitlines()[0])
    RESULTS.mkdir(parents=True, exist_ok=True)
    flops = section_flops(steps=args.flops_steps)
    print_flops(flops)
    FLOPS_JSON.write_text(json.dumps(flops, indent=2) + "\n")
    print(f"wrote {FLOPS_JSON}")
    if args.flops_only:
        return

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

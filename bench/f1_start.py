"""Does stage 1 start from F1? ψ's gate at F1's block width, and the start latent with the real VAE config, on CPU.

1. **gate**: the `f1-scaled` preset cut to 2 dual- and 2 single-stream blocks (FramePack-F1's blocks: head
   width 128, F1's RoPE axes; random weights standing in for F1's) with a freshly built SemanticPack, gated (as
   built now) and ungated (as before): how far ψ₀ and ψ₁ move the backbone's prediction from the backbone
   alone, as max |Δ| and relative RMS.
2. **start latent**: diffusers' default `AutoencoderKLHunyuanVideo` (HunyuanVideo's VAE config, random
   weights) on a small synthetic 17-frame stream (one temporal tile, whose GroupNorm latent 0 shares): the
   stream's latent 0 against frame 0 encoded alone, beside the latent's std. bench/gpu_check.py repeats it
   at 480x832 on a GPU.

Prints a table and writes bench/results/f1_start.json.

    python bench/f1_start.py [--size 32]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    size: int = 32  # pixel side of the VAE check's frames (multiple of 8)
    json: str = str(RESULTS / "f1_start.json")

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 8:
            raise ValueError("--size must be a multiple of 8, at least 16")


def parse_args(argv=None):
    from mempack.config import parse_config

    return parse_config(Options, argv, __doc__.splitlines()[0])


def gate_effect() -> list[dict]:
    """Prediction change of a fresh SemanticPack (gated / ungated) against the backbone alone, for ψ₀ and ψ₁."""
    import torch

    from mempack.model import Conditioning, MemoryPackTransformer, SemanticPack, build_backbone, pack_history
    from mempack.presets import get_preset

    base = get_preset("f1-scaled")  # F1's blocks at F1's head width, 2 + 2 of them: enough to see the effect
    preset = dataclasses.replace(base, transformer={**base.transformer, "num_layers": 2, "num_single_layers": 2})
    torch.manual_seed(0)
    backbone = build_backbone(preset).eval()
    g = torch.Generator().manual_seed(1)
    h = w = 8
    cond = Conditioning(
        torch.randn(1, preset.max_prompt_tokens, preset.text_embed_dim, generator=g),
        torch.ones(1, preset.max_prompt_tokens, dtype=torch.int64),
        torch.randn(1, preset.pooled_dim, generator=g),
        torch.randn(1, 4, preset.image_embed_dim, generator=g),
        torch.randn(1, preset.latent_channels, 1, h, w, generator=g),
    )
    history = torch.randn(1, preset.latent_channels, 19, h, w, generator=g)
    noisy = torch.randn(1, preset.latent_channels, 9, h, w, generator=g)
    segment = torch.randn(1, preset.latent_channels, 9, h, w, generator=g)
    t = torch.tensor([0.6])
    rows = []
    for gated in (True, False):
        torch.manual_seed(2)  # the same SemanticPack weights either way (the gate draws no random numbers)
        sp = SemanticPack(**{**preset.semantic_pack, "context_gate": gated})
        model = MemoryPackTransformer(backbone, sp).eval()
        packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
        with torch.no_grad():
            alone = model(noisy, t, cond, packed, None)
            psi0 = model.initial_memory(cond)
            for name, memory in (("psi0", psi0), ("psi1", model.update_memory(psi0, segment))):
                delta = model(noisy, t, cond, packed, memory) - alone
                rows.append(
                    {
                        "gated": gated,
                        "memory": name,
                        "tokens": int(memory.mask.sum()),
                        "max_abs": delta.abs().max().item(),
                        "relative_rms": (delta.square().mean() / alone.square().mean()).sqrt().item(),
                        "output_rms": alone.square().mean().sqrt().item(),
                    }
                )
        del model
    return rows


def start_latent_gap(size: int) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from mempack.encoders import VideoEncoders
    from mempack.presets import get_preset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import synthetic_video

    torch.manual_seed(0)
    encoders = VideoEncoders(get_preset("framepack-f1"), {"vae": AutoencoderKLHunyuanVideo()}, "cpu", torch.float32)
    video = synthetic_video(17, size, size)
    began = time.perf_counter()
    stream = encoders.encode_video(video)[0]
    alone = encoders.encode_image_latent(video[:1])[0]
    gap = (stream[:, :1] - alone).abs()
    return {
        "vae": "HunyuanVideo VAE config (diffusers default), random weights",
        "frames": 17,
        "size": size,
        "max_abs_gap": gap.max().item(),
        "mean_abs_gap": gap.mean().item(),
        "latent_std": stream.std().item(),
        "latent0_std": float(np.std(stream[:, :1].numpy())),
        "seconds": time.perf_counter() - began,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    began = time.perf_counter()
    result = {"gate": gate_effect(), "start_latent": start_latent_gap(args.size)}
    result["seconds"] = time.perf_counter() - began
    print("fresh SemanticPack on f1-scaled (F1's blocks, random weights): prediction change against the backbone alone")
    print(f"  {'gate':<9}{'memory':<8}{'psi tokens':>11}{'max |delta|':>13}{'rel. RMS':>11}")
    for row in result["gate"]:
        print(
            f"  {'gated' if row['gated'] else 'ungated':<9}{row['memory']:<8}{row['tokens']:>11}"
            f"{row['max_abs']:>13.2e}{row['relative_rms']:>11.2e}"
        )
    v = result["start_latent"]
    print(
        f"start latent, {v['vae']}, {v['frames']} frames of {v['size']}x{v['size']}: stream latent 0 vs frame 0 "
        f"alone: max |gap| {v['max_abs_gap']:.4f}, mean {v['mean_abs_gap']:.4f}; latent std {v['latent_std']:.4f}"
    )
    print(f"total {result['seconds']:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

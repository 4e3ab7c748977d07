"""Named size presets shared by the backbone, SemanticPack and the encoders.

One place decides the widths that must agree across components (latent channels, text width,
pooled width, image-token width), so a `tiny` VAE always feeds a `tiny` transformer. `tiny` is
random-init and runs in seconds on a CPU; `framepack-f1` is the real FramePack-F1 configuration
(HunyuanVideo VAE, Llama + CLIP text, SigLIP vision) whose weights load from a local folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Widths and config dicts for one named model size."""

    name: str
    latent_channels: int
    vae_spatial: int
    vae_temporal: int
    text_embed_dim: int
    pooled_dim: int
    image_embed_dim: int
    max_prompt_tokens: int
    transformer: dict[str, Any] = field(default_factory=dict)
    semantic_pack: dict[str, Any] = field(default_factory=dict)


TINY = Preset(
    name="tiny",
    latent_channels=16,
    vae_spatial=8,
    vae_temporal=4,
    text_embed_dim=32,
    pooled_dim=32,
    image_embed_dim=32,
    max_prompt_tokens=16,
    transformer=dict(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=32,
        pooled_projection_dim=32,
        rope_theta=256.0,
        rope_axes_dim=(4, 6, 6),
        image_condition_type=None,
        has_image_proj=True,
        image_proj_dim=32,
        has_clean_x_embedder=True,
    ),
    semantic_pack=dict(
        latent_channels=16,
        text_embed_dim=32,
        image_embed_dim=32,
        context_dim=32,
        dim=32,
        num_heads=2,
        patch_size=2,
        window_frames=3,
        tokens_per_window=4,
        memorize_layers=1,
    ),
)

FRAMEPACK_F1 = Preset(
    name="framepack-f1",
    latent_channels=16,
    vae_spatial=8,
    vae_temporal=4,
    text_embed_dim=4096,
    pooled_dim=768,
    image_embed_dim=1152,
    max_prompt_tokens=256,
    # lllyasviel/FramePack_F1_I2V_HY_20250503 in diffusers layout.
    transformer=dict(
        in_channels=16,
        out_channels=16,
        num_attention_heads=24,
        attention_head_dim=128,
        num_layers=20,
        num_single_layers=40,
        num_refiner_layers=2,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=4096,
        pooled_projection_dim=768,
        rope_theta=256.0,
        rope_axes_dim=(16, 56, 56),
        image_condition_type=None,
        has_image_proj=True,
        image_proj_dim=1152,
        has_clean_x_embedder=True,
    ),
    semantic_pack=dict(
        latent_channels=16,
        text_embed_dim=4096,
        image_embed_dim=1152,
        context_dim=3072,
        dim=1024,
        num_heads=16,
        patch_size=4,
        window_frames=3,
        tokens_per_window=64,
        memorize_layers=2,
    ),
)

# FramePack-F1's blocks (head width 128, F1's RoPE axes, dual- then single-stream layers) at ~0.4 B
# parameters, with tiny's encoder widths so it trains on a `tiny` prep output: for measuring on CPU
# how memory scales (ZeRO-3 build, step, checkpoint, export) and projecting to `framepack-f1`.
F1_SCALED = Preset(
    name="f1-scaled",
    latent_channels=TINY.latent_channels,
    vae_spatial=TINY.vae_spatial,
    vae_temporal=TINY.vae_temporal,
    text_embed_dim=TINY.text_embed_dim,
    pooled_dim=TINY.pooled_dim,
    image_embed_dim=TINY.image_embed_dim,
    max_prompt_tokens=TINY.max_prompt_tokens,
    transformer={**FRAMEPACK_F1.transformer, "num_attention_heads": 8, "num_layers": 4, "num_single_layers": 16,
                 "num_refiner_layers": 1, "text_embed_dim": TINY.text_embed_dim,
                 "pooled_projection_dim": TINY.pooled_dim, "image_proj_dim": TINY.image_embed_dim},
    semantic_pack={**TINY.semantic_pack, "context_dim": 1024, "dim": 256, "num_heads": 4},
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, FRAMEPACK_F1, F1_SCALED)}

# Frames per model section: 9 latent frames = 33 pixel frames with the 4x temporal VAE.
SECTION_LATENT_FRAMES = 9


def get_preset(name: "str | Preset") -> Preset:
    """Look a preset up by name, with an error that lists the valid names (a Preset passes through:
    scaled variants for measurements)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def pixel_frames_for_latent_frames(latent_frames: int, temporal: int = 4) -> int:
    """Pixel frames a causal video VAE needs for `latent_frames` latents (4k+1 rule)."""
    return (latent_frames - 1) * temporal + 1

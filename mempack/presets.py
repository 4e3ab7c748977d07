"""Named size presets, the one clock and the resolution buckets: read by prep, train and infer alike.

One place decides the widths that must agree across components (latent channels, text width,
pooled width, image-token width), so a `tiny` VAE always feeds a `tiny` transformer. `tiny` is
random-init and runs in seconds on a CPU; `framepack-f1` is the real FramePack-F1 configuration
(HunyuanVideo VAE, Llama + CLIP text, SigLIP vision) whose weights load from a local folder.

The clock is FramePack-F1's for every preset: 30 fps and sections of 9 latent frames, i.e. 36 frames
(1.2 s) per section; a video of n sections is 1 + 36·n frames (the start frame is a latent of its own,
as the causal VAE encodes it). `tiny` differs in size only, so what it trains and tests is the real
model's time axis. Resolutions come in aspect-ratio buckets around a target area (sides multiples of
16: the VAE's 8× and the transformer's 2×2 patches); a frame goes to the bucket nearest its aspect
ratio and is resized to cover it, then cropped, so it keeps its shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FPS = 30.0  # FramePack-F1 generates (and so trains) at 30 fps
SECTION_LATENT_FRAMES = 9  # latent frames per model section (F1's latent_window_size)
VAE_TEMPORAL = 4  # frames per latent frame of the causal video VAE (after the first frame)
SECTION_FRAMES = VAE_TEMPORAL * SECTION_LATENT_FRAMES  # 36 pixel frames = 1.2 s per section
BUCKET_MULTIPLE = 16  # bucket sides: VAE ×8, then the transformer's 2×2 patches

# FramePack's buckets at 640 (h, w): about 640² pixels each; portrait ones are the transposes.
_F1_LANDSCAPE = ((416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640))
F1_BUCKETS = _F1_LANDSCAPE + tuple((w, h) for h, w in reversed(_F1_LANDSCAPE))
# The same shape family around 64² pixels: tiny's tests stay fast while clips still keep their aspect.
TINY_BUCKETS = ((48, 96), (48, 80), (64, 64), (80, 48), (96, 48))


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
    buckets: tuple[tuple[int, int], ...] = F1_BUCKETS  # (height, width), multiples of BUCKET_MULTIPLE
    default_bucket: tuple[int, int] = (480, 832)  # when there is no image to match (the sample image)
    fps: float = FPS  # the one clock: every preset shares it (a field so code reads it from the preset)

    @property
    def section_frames(self) -> int:
        """Pixel frames per section: 9 latent frames × the VAE's temporal factor (36)."""
        return self.vae_temporal * SECTION_LATENT_FRAMES


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
    buckets=TINY_BUCKETS,
    default_bucket=(64, 64),
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
    buckets=TINY_BUCKETS,
    default_bucket=TINY.default_bucket,
    latent_channels=TINY.latent_channels,
    vae_spatial=TINY.vae_spatial,
    vae_temporal=TINY.vae_temporal,
    text_embed_dim=TINY.text_embed_dim,
    pooled_dim=TINY.pooled_dim,
    image_embed_dim=TINY.image_embed_dim,
    max_prompt_tokens=TINY.max_prompt_tokens,
    transformer={
        **FRAMEPACK_F1.transformer,
        "num_attention_heads": 8,
        "num_layers": 4,
        "num_single_layers": 16,
        "num_refiner_layers": 1,
        "text_embed_dim": TINY.text_embed_dim,
        "pooled_projection_dim": TINY.pooled_dim,
        "image_proj_dim": TINY.image_embed_dim,
    },
    semantic_pack={**TINY.semantic_pack, "context_dim": 1024, "dim": 256, "num_heads": 4},
)


def world_preset(width: int = 128, layers: int = 2) -> Preset:
    """The method-fidelity model (`mempack.fidelity`): tiny's encoders with a `width`-wide backbone (head width
    32, `layers` dual- and single-stream blocks each) and a SemanticPack half as wide. Tiny's 32-wide,
    one-block backbone cannot even hold a 2×2×16 latent patch in its width; this is the smallest size
    whose memory the synthetic world's benchmarks measure (default 128 × 2, `--width`/`--layers`)."""
    if width % 32 or width < 64 or layers < 1:
        raise ValueError(
            f"world_preset needs a width that is a multiple of 32, >= 64, and layers >= 1; got {width}, {layers}"
        )
    return dataclasses.replace(
        TINY,
        name=f"world-{width}x{layers}",
        transformer={
            **TINY.transformer,
            "num_attention_heads": width // 32,
            "attention_head_dim": 32,
            "rope_axes_dim": (8, 12, 12),
            "num_layers": layers,
            "num_single_layers": layers,
        },
        semantic_pack={**TINY.semantic_pack, "context_dim": width, "dim": width // 2, "num_heads": 4},
    )


WORLD = world_preset()  # the benchmark's default size (not a training preset: it has no prep output of its own)

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, FRAMEPACK_F1, F1_SCALED)}


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up by name, with an error that lists the valid names (a Preset passes through:
    scaled variants for measurements)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def frames_for_sections(sections: int, window: int = SECTION_LATENT_FRAMES, temporal: int = VAE_TEMPORAL) -> int:
    """Pixel frames of the start frame + `sections` sections: 1 + 36·n (prep's videos, infer's output)."""
    return temporal * sections * window + 1


def sections_for_frames(frames: int, window: int = SECTION_LATENT_FRAMES, temporal: int = VAE_TEMPORAL) -> int:
    """Fewest sections whose decoded video holds at least `frames` frames (inference: ceil)."""
    if frames < 1:
        raise ValueError(f"need at least one frame, got {frames}")
    per_section = temporal * window
    return max(1, -(-(frames - 1) // per_section))


def section_start_seconds(
    index: int, fps: float = FPS, window: int = SECTION_LATENT_FRAMES, temporal: int = VAE_TEMPORAL
) -> float:
    """Where new section `index` starts on the video's clock: n · 1.2 s at 30 fps (section 0 holds the
    start frame too, so section n's frames follow the first 1 + 36·n). Prompt timelines snap to these."""
    return index * temporal * window / fps


def whole_sections(frames: int, window: int = SECTION_LATENT_FRAMES, temporal: int = VAE_TEMPORAL) -> int:
    """Most whole sections a stream of `frames` frames holds after its start frame (prep: floor; may be 0)."""
    return max(0, (frames - 1) // (temporal * window))


def nearest_bucket(preset_name: str, height: int, width: int) -> tuple[int, int]:
    """The preset's (h, w) bucket nearest in aspect ratio to a `height`×`width` frame.

    FramePack's rule: the least |height·bucket_w − width·bucket_h| (cross-multiplied aspect ratios, no
    division); ties go to the first bucket listed.
    """
    if height < 1 or width < 1:
        raise ValueError(f"need a positive frame size, got {height}x{width}")
    buckets = get_preset(preset_name).buckets
    return min(buckets, key=lambda b: abs(height * b[1] - width * b[0]))

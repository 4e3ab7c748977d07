"""Will generation fit my GPU? Device memory of one request per offload mode, before any weight exists.

The training planner's approach (mempack.train.plan), for inference:

* **Weights** per component are counted on PyTorch's `meta` device: the transformer and ψ at the preset's
  size, and the encoders at the published configurations of the weights the preset loads (HunyuanVideo's
  VAE, its Llama-3-8B text encoder and CLIP-L, FramePack's SigLIP so400m). float8 storage is diffusers'
  own `enable_layerwise_casting` applied to the meta transformer, so the layers it skips are the ones
  counted at full width.
* **Activations** per stage come from running that stage on `meta` under a dispatch mode that tracks
  every tensor the stage creates until Python frees it: the peak of the bytes alive at once (no
  autograd in inference, so nothing else is kept). Attention is the fused kernel (no sequence² matrix).
  Stages: the Llama and CLIP prompt encodes, SigLIP, the VAE encode of the start frame, one Euler step
  of a section (ψ's tokens included) plus ψ's update, and the decode of one VAE tile of a section (the
  streamed decode holds one tile at a time).
* **Offload modes** (mempack.offload) decide which weights sit on the device during each stage:
  `none` all of them; `model` the stage's component (the transformer stays through a section's decode,
  the VAE comes in beside it); `group` the transformer's non-block layers plus one block (two with the
  CUDA stream's prefetch), other components two leaf modules; `sequential` one leaf module. ψ is on
  the device throughout.

Planning at the preset's real bucket (480x832 for framepack-f1) and with prompts that fill the tokenizer's
budget (the largest case). tests/test_inference_plan.py checks the section stage and the decode tile
(activation peaks) and the weights against a measured CPU run of a scaled preset; the start frame's VAE
encode misses there (the CPU's conv3d work buffer, a strict xfail with the numbers).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.model.memorypack import MemoryPackConfig, build_backbone, default_dtype
from mempack.model.semantic_pack import SemanticPack
from mempack.offload import FP8_STORAGE, OFFLOAD_MODES, WEIGHTS_DTYPES
from mempack.presets import Preset, get_preset
from mempack.train.plan import GB, GIB, SIGLIP_IMAGE_TOKENS, _FullPromptScalars, _FusedAttention, _meta_boolean_masks

GPU_SIZES_GB = (24, 48, 80)
# CUDA context (~0.5-1 GB) and the caching allocator's slack: a margin, not a measurement (no NCCL here,
# unlike training's 4 GB)
INFERENCE_MARGIN_BYTES = 2 * GB
# The published config.json of each encoder framepack-f1 loads (hunyuanvideo-community/HunyuanVideo's
# text_encoder and text_encoder_2, lllyasviel/flux_redux_bfl's image_encoder); the VAE is
# AutoencoderKLHunyuanVideo's defaults.
LLAMA_CONFIG = dict(
    vocab_size=128320,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
)
CLIP_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
)
SIGLIP_CONFIG = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
)
COMPONENTS = ("transformer", "semantic_pack", "vae", "text_encoder", "text_encoder_2", "image_encoder")
STAGE_COMPONENTS = {
    "llama": ("text_encoder",),
    "clip": ("text_encoder_2",),
    "siglip": ("image_encoder",),
    "vae_encode": ("vae",),
    "section": ("transformer",),
    "decode": ("vae",),
}


# ----- live-tensor peak ---------------------------------------------------------------------------
class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once, counting what is created inside the mode.

    Each storage is counted once (views share it) and released when the last Python tensor on it is
    freed; tensors that existed before (weights, inputs) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage key -> [bytes, tensors alive on it]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        known = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (_key(t) in self.live or _key(t) not in known):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key = _key(t)
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@contextmanager
def _inference_trace(scalar: int):
    """Meta tracing as the training planner does it: fused attention, all-True masks, a fixed `.item()`."""
    with torch.no_grad(), _meta_boolean_masks(), _FullPromptScalars(scalar), _FusedAttention():
        yield


def peak_bytes(fn, scalar: int = 1) -> int:
    """Peak live bytes of the tensors `fn()` creates (on meta: nothing is allocated)."""
    with _inference_trace(scalar):
        tracker = PeakLiveBytes()
        with tracker:
            result = fn()
        del result
    return tracker.peak


# ----- components on meta ---------------------------------------------------------------------------
def meta_components(preset: str | Preset, dtype: torch.dtype = torch.bfloat16) -> dict[str, nn.Module]:
    """The pipeline's modules at the preset's size on `meta`: nothing allocated, every shape real."""
    preset = get_preset(preset)
    with torch.device("meta"), default_dtype(dtype):  # built in `dtype`: diffusers warns on a later cast
        if preset.image_embed_dim == 1152:  # the real encoders' widths: the published configurations
            from diffusers import AutoencoderKLHunyuanVideo
            from transformers import (
                CLIPTextConfig,
                CLIPTextModel,
                LlamaConfig,
                LlamaModel,
                SiglipVisionConfig,
                SiglipVisionModel,
            )

            encoders = dict(
                vae=AutoencoderKLHunyuanVideo(),
                text_encoder=LlamaModel(LlamaConfig(**LLAMA_CONFIG)),
                text_encoder_2=CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_CONFIG)),
                image_encoder=SiglipVisionModel(SiglipVisionConfig(**SIGLIP_CONFIG)),
            )
        else:  # tiny widths: the tiny encoders
            from mempack.encoders import _tiny_components

            encoders = {k: v for k, v in _tiny_components(preset, 0).items() if isinstance(v, nn.Module)}
        semantic_pack = SemanticPack(**preset.semantic_pack)
    backbone = build_backbone(preset, "meta", dtype)
    modules = dict(transformer=backbone, semantic_pack=semantic_pack, **encoders)
    return {name: module.eval() for name, module in modules.items()}


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def largest_leaf_bytes(module: nn.Module) -> int:
    """The largest module's own weights: what leaf-by-leaf offloading holds on the device at once."""
    return max((module_bytes_own(m) for m in module.modules()), default=0)


def module_bytes_own(module: nn.Module) -> int:
    return sum(
        t.numel() * t.element_size() for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    )


def group_bytes(backbone: nn.Module, prefetch: bool = True) -> int:
    """Block-level group offload of the transformer: its non-block layers plus one block (two with the
    next one prefetched on a CUDA stream)."""
    blocks = [*backbone.transformer_blocks, *backbone.single_transformer_blocks]
    in_blocks = sum(module_bytes(b) for b in blocks)
    return module_bytes(backbone) - in_blocks + (2 if prefetch else 1) * max(module_bytes(b) for b in blocks)


# ----- stages ---------------------------------------------------------------------------------------
def _trace_text(components: dict, preset: Preset) -> dict[str, int]:
    from mempack.encoders import CLIP_MAX_TOKENS, prompt_template_for

    crop = int(prompt_template_for(preset).get("crop_start") or 0)
    tokens = preset.max_prompt_tokens + crop
    ids = torch.zeros(1, tokens, dtype=torch.int64, device="meta")
    llama = peak_bytes(
        lambda: (
            components["text_encoder"](
                input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
            ).hidden_states
        ),
        tokens,
    )
    clip_ids = torch.zeros(1, CLIP_MAX_TOKENS, dtype=torch.int64, device="meta")
    clip = peak_bytes(lambda: components["text_encoder_2"](clip_ids).pooler_output, CLIP_MAX_TOKENS)
    return {"llama": llama, "clip": clip}


def _trace_siglip(components: dict, dtype: torch.dtype) -> int:
    side = components["image_encoder"].config.image_size
    pixels = torch.zeros(1, 3, side, side, device="meta", dtype=dtype)
    return peak_bytes(lambda: components["image_encoder"](pixel_values=pixels).last_hidden_state)


def _vae_tiling(vae, pixel_size: tuple[int, int]) -> None:
    from mempack.encoders import TILE_ABOVE_PIXELS

    vae.enable_tiling() if pixel_size[0] * pixel_size[1] > TILE_ABOVE_PIXELS else vae.disable_tiling()


def _trace_vae(components: dict, preset: Preset, pixel_size: tuple[int, int], dtype: torch.dtype) -> dict[str, int]:
    """The start frame's encode and one decode tile (5 latent frames: 17 frames), the paths the pipeline takes."""
    vae = components["vae"]
    _vae_tiling(vae, pixel_size)
    h, w = pixel_size
    frame = torch.zeros(1, 3, 1, h, w, device="meta", dtype=dtype)

    def encode():
        if vae.use_tiling and (h > vae.tile_sample_min_height or w > vae.tile_sample_min_width):
            return vae.tiled_encode(frame)
        return vae.quant_conv(vae.encoder(frame))

    tile_latents = vae.tile_sample_min_num_frames // vae.temporal_compression_ratio + 1
    tile = torch.zeros(
        1,
        preset.latent_channels,
        tile_latents,
        h // preset.vae_spatial,
        w // preset.vae_spatial,
        device="meta",
        dtype=dtype,
    )

    def decode():
        min_h = vae.tile_sample_min_height // vae.spatial_compression_ratio
        min_w = vae.tile_sample_min_width // vae.spatial_compression_ratio
        if vae.use_tiling and (tile.shape[-1] > min_w or tile.shape[-2] > min_h):
            return vae.tiled_decode(tile, return_dict=True).sample
        return vae.decoder(vae.post_quant_conv(tile))

    return {"vae_encode": peak_bytes(encode), "decode": peak_bytes(decode)}


def section_inputs(
    model: MemoryPackTransformer,
    preset: Preset,
    latent_hw: tuple[int, int],
    image_tokens: int,
    device="meta",
    dtype: torch.dtype = torch.bfloat16,
    generator: torch.Generator | None = None,
):
    """One section's inputs at full history: conditioning, packed history, ψ after one update, noise."""
    h, w, c = *latent_hw, preset.latent_channels
    prompt = preset.max_prompt_tokens

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    cond = Conditioning(
        rand(1, prompt, preset.text_embed_dim),
        torch.ones(1, prompt, dtype=torch.int64, device=device),
        rand(1, preset.pooled_dim),
        rand(1, image_tokens, preset.image_embed_dim),
        rand(1, c, 1, h, w),
    )
    history = rand(1, c, model.config.layout.context_frames, h, w)
    section = rand(1, c, model.config.window, h, w)
    packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
    return cond, packed, section


def _trace_section(
    model: MemoryPackTransformer, preset: Preset, latent_hw, image_tokens: int, dtype: torch.dtype
) -> int:
    """One Euler step's forward (ψ tokens joined) and ψ's update after the section: the larger peak."""
    with _inference_trace(image_tokens + preset.max_prompt_tokens):
        cond, packed, section = section_inputs(model, preset, latent_hw, image_tokens, dtype=dtype)
        memory = model.update_memory(model.initial_memory(cond), section)
    # the backbone trims its context (batch 1) to the mask's sum by `.item()`: ψ's tokens are part of it
    scalar = image_tokens + preset.max_prompt_tokens + (memory.tokens.shape[1] if memory is not None else 0)
    step = peak_bytes(lambda: model(section, torch.full((1,), 0.5, device="meta"), cond, packed, memory, 10.0), scalar)
    update = peak_bytes(lambda: model.update_memory(memory, section).tokens, scalar)
    return max(step, update)


# ----- the plan -------------------------------------------------------------------------------------
@dataclass
class InferencePlan:
    """Device memory of one generation request, per component and stage, and per offload mode."""

    preset: str
    pixel_size: tuple[int, int]
    dtype: str
    weights_dtype: str
    weights: dict[str, int]  # bytes per component as stored
    leaf: dict[str, int]  # largest leaf module per component (sequential / leaf-level group offload)
    transformer_group: int  # block-level group offload: non-block layers + the block(s) on the device
    cast_buffer: int  # fp8: one layer cast up to the compute dtype during its call
    activations: dict[str, int] = field(default_factory=dict)  # peak bytes per stage

    def stage_weights(self, mode: str, stage: str) -> int:
        """Weights on the device while `stage` runs under `mode` (ψ always)."""
        parts = STAGE_COMPONENTS[stage]
        if mode == "none":
            on = sum(self.weights.values())
        elif mode == "model":
            on = sum(self.weights[p] for p in parts) + (self.weights["transformer"] if stage == "decode" else 0)
        elif mode == "group":
            on = sum(self.transformer_group if p == "transformer" else 2 * self.leaf[p] for p in parts)
        elif mode == "sequential":
            on = sum(self.leaf[p] for p in parts)
        else:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {mode!r}")
        if mode != "none":
            on += self.weights["semantic_pack"]
        if "transformer" in parts or (mode in ("none", "model") and stage == "decode"):
            on += self.cast_buffer
        return on

    def peak(self, mode: str) -> tuple[int, str]:
        """(peak device bytes, the stage that sets it) under `mode`."""
        return max((self.stage_weights(mode, s) + self.activations[s], s) for s in STAGE_COMPONENTS)

    def fits(self, mode: str, gpu_gb: float) -> bool:
        return self.peak(mode)[0] + INFERENCE_MARGIN_BYTES <= gpu_gb * GB

    def best(self, gpu_gb: float) -> str | None:
        """The fastest mode that fits: none, then model, group, sequential."""
        return next((m for m in OFFLOAD_MODES if self.fits(m, gpu_gb)), None)

    def to_dict(self, gpu_sizes=GPU_SIZES_GB) -> dict:
        out = {
            "preset": self.preset,
            "pixel_size": list(self.pixel_size),
            "dtype": self.dtype,
            "weights_dtype": self.weights_dtype,
            "weights_bytes": self.weights,
            "activation_bytes": self.activations,
            "margin_bytes": INFERENCE_MARGIN_BYTES,
        }
        out["peak_bytes"] = {m: self.peak(m)[0] for m in OFFLOAD_MODES}
        out["peak_stage"] = {m: self.peak(m)[1] for m in OFFLOAD_MODES}
        out["best_mode"] = {str(g): self.best(g) for g in gpu_sizes}
        return out


def plan_inference(
    preset: str | Preset = "framepack-f1",
    pixel_size: tuple[int, int] | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    weights_dtype: str = "auto",
    image_tokens: int | None = None,
    prefetch: bool = True,
) -> InferencePlan:
    """Plan one request at `pixel_size` (default: the preset's default bucket, 480x832 for framepack-f1)."""
    return plan_storages(
        preset, pixel_size, dtype=dtype, weights_dtypes=(weights_dtype,), image_tokens=image_tokens, prefetch=prefetch
    )[0]


def plan_storages(
    preset: str | Preset = "framepack-f1",
    pixel_size: tuple[int, int] | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    weights_dtypes: tuple[str, ...] = WEIGHTS_DTYPES,
    image_tokens: int | None = None,
    prefetch: bool = True,
) -> list[InferencePlan]:
    """One plan per weight storage, in the order asked; the stages are traced once for all of them
    (activations do not depend on how the weights are stored, and tracing is most of a plan's time)."""
    preset = get_preset(preset)
    pixel_size = tuple(pixel_size or preset.default_bucket)
    s = preset.vae_spatial
    if pixel_size[0] % (2 * s) or pixel_size[1] % (2 * s):
        raise ValueError(f"{pixel_size[0]}x{pixel_size[1]} is not a multiple of {2 * s} (VAE x{s}, 2x2 patches)")
    for name in weights_dtypes:
        if name not in WEIGHTS_DTYPES:
            raise ValueError(f"weights dtype must be one of {WEIGHTS_DTYPES}, got {name!r}")
    latent_hw = (pixel_size[0] // s, pixel_size[1] // s)
    if image_tokens is None:
        image_tokens = SIGLIP_IMAGE_TOKENS if preset.image_embed_dim == 1152 else 4
    components = meta_components(preset, dtype)
    model = MemoryPackTransformer(
        components["transformer"], components["semantic_pack"], MemoryPackConfig(preset=preset.name)
    )
    activations = {"section": _trace_section(model, preset, latent_hw, image_tokens, dtype)}
    activations.update(_trace_text(components, preset))
    activations["siglip"] = _trace_siglip(components, dtype)
    activations.update(_trace_vae(components, preset, pixel_size, dtype))
    plans = {}
    # "auto" first: float8 casting is applied to the meta transformer in place and cannot be undone
    for name in sorted(set(weights_dtypes), key=WEIGHTS_DTYPES.index):
        cast_buffer = 0
        if name == "fp8":
            cast_buffer = largest_leaf_bytes(components["transformer"])  # in the compute dtype, before casting
            components["transformer"].enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=dtype)
        plans[name] = InferencePlan(
            preset.name,
            pixel_size,
            str(dtype).replace("torch.", ""),
            name,
            {c: module_bytes(components[c]) for c in COMPONENTS},
            {c: largest_leaf_bytes(components[c]) for c in COMPONENTS},
            group_bytes(components["transformer"], prefetch),
            cast_buffer,
            dict(activations),
        )
    return [plans[name] for name in weights_dtypes]


def format_plan(plans: list[InferencePlan], gpu_gb: float | None = None) -> str:
    """The table `infer.py --plan` prints: weights, activations, then each mode's peak (and fit)."""

    def gib(b):
        return f"{b / GIB:7.2f} GiB" if b >= GIB else f"{b / 2**20:7.1f} MiB"

    first = plans[0]
    lines = [
        f"inference memory plan: preset {first.preset}, {first.pixel_size[0]}x{first.pixel_size[1]} px, "
        f"{first.dtype} (+{INFERENCE_MARGIN_BYTES / GB:.0f} GB runtime margin to fit)",
        "  weights (bf16 unless stated)",
    ]
    names = {
        "transformer": "transformer (F1 MM-DiT)",
        "semantic_pack": "SemanticPack (psi)",
        "vae": "VAE",
        "text_encoder": "Llama text encoder",
        "text_encoder_2": "CLIP text encoder",
        "image_encoder": "SigLIP",
    }
    for name in COMPONENTS:
        extra = "".join(
            f"   {p.weights_dtype}: {gib(p.weights[name])}" for p in plans[1:] if p.weights[name] != first.weights[name]
        )
        lines.append(f"    {names[name]:<26}{gib(first.weights[name])}{extra}")
    lines.append("  activations (peak per stage)")
    for stage, value in first.activations.items():
        lines.append(f"    {stage:<26}{gib(value)}")
    sizes = (gpu_gb,) if gpu_gb else GPU_SIZES_GB
    header = "  peak device memory  " + "".join(f"{'offload=' + m:>20}" for m in OFFLOAD_MODES)
    lines.append(header)
    for plan in plans:
        row = "".join(f"{gib(plan.peak(m)[0]):>20}" for m in OFFLOAD_MODES)
        lines.append(f"    weights {plan.weights_dtype:<10}{row}")
    for size in sizes:
        for plan in plans:
            fit = ", ".join(f"{m} {'yes' if plan.fits(m, size) else 'no'}" for m in OFFLOAD_MODES)
            best = plan.best(size)
            lines.append(
                f"  {size:g} GB, weights {plan.weights_dtype}: {fit}  -> "
                f"{'--offload ' + best if best else 'does not fit'}"
            )
    return "\n".join(lines)

"""VAE, text and image encoders: `tiny` random presets and real weights from a local folder.

Real layout (HunyuanVideo in diffusers layout + FramePack's SigLIP), pointed at with `--encoders DIR`:
`vae/` (AutoencoderKLHunyuanVideo), `text_encoder/` (LlamaModel) + `tokenizer/`, `text_encoder_2/`
(CLIPTextModel) + `tokenizer_2/`, `image_encoder/` (SiglipVisionModel) + `feature_extractor/`
(SiglipImageProcessor). Everything loads with `local_files_only=True`: nothing is downloaded.

The `tiny` preset is the same classes at toy widths (matching `mempack.presets.TINY`) with random
weights from a seed; its tokenizers are built in-process with the `tokenizers` library (a byte-level
vocabulary: any text, including non-ASCII, tokenizes without a vocab file), since no hub is reachable.
Encoding follows diffusers' `HunyuanVideoFramepackPipeline`: the prompt wrapped in the preset's template,
the Llama hidden state two layers before the last with the template's prefix cropped off, CLIP's pooled
output, SigLIP's last hidden state, VAE latents times the scaling factor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mempack.presets import Preset, get_preset

log = logging.getLogger(__name__)

LLAMA_SKIP_LAYERS = 2  # HunyuanVideo reads hidden_states[-(2 + 1)]
CLIP_MAX_TOKENS = 77
SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder")
COMPONENTS = (*SUBFOLDERS, "feature_extractor")  # a pipeline's encoder components, by their diffusers names
# Above this many pixels per frame the VAE tiles spatially (diffusers' tiles are 256 px with overlap):
# 480x832 sections decode in bounded memory; small clips stay untiled and bit-reproducible.
TILE_ABOVE_PIXELS = 512 * 512
TINY_PROMPT_TEMPLATE = {"template": "{}", "crop_start": 0}
PIXEL_CHUNK_FRAMES = 64  # decoded frames converted to uint8 (and moved off the device) at a time
VAE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_vae_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The VAE's dtype by name; "auto": fp32 on a CPU, fp16 on a GPU, as FramePack and diffusers run the
    HunyuanVideo VAE (in bf16, the transformer's dtype, its 8-bit mantissa bands smooth gradients)."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in VAE_DTYPES:
        raise ValueError(f"vae dtype must be auto or one of {', '.join(VAE_DTYPES)}, got {name!r}")
    return VAE_DTYPES[name]


@dataclass
class PromptEmbedding:
    """Llama token states + mask (padded to the preset's length) and CLIP's pooled embedding."""

    prompt_embeds: torch.Tensor  # [B, L, text_embed_dim]
    prompt_mask: torch.Tensor  # [B, L] int64
    pooled: torch.Tensor  # [B, pooled_dim]


def prompt_template_for(preset: Preset) -> dict[str, Any]:
    """The prompt wrapper the text encoder was trained with; `crop_start` tokens are its prefix.

    Real HunyuanVideo weights expect diffusers' system-prompt template (prefix of 95 Llama tokens);
    the tiny tokenizer has no such training, so its template is the bare prompt.
    """
    if preset.name == "tiny":
        return dict(TINY_PROMPT_TEMPLATE)
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import DEFAULT_PROMPT_TEMPLATE

    return dict(DEFAULT_PROMPT_TEMPLATE)


def _byte_level_tokenizer(model_max_length: int, add_eos: bool):
    """A 256-byte vocabulary plus specials, built offline.

    Like the real tokenizers it prepends BOS (Llama) and, for CLIP, appends EOS: CLIPTextModel pools the
    state at the first EOS, and under its causal mask any earlier position would ignore the prompt's end.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split("", "isolated")]
    )
    tok.decoder = decoders.ByteLevel()
    eos = " </s>" if add_eos else ""
    tok.post_processor = processors.TemplateProcessing(
        single=f"<s> $A{eos}",
        pair=f"<s> $A $B{eos}",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="</s>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def _image_processor_class():
    """SigLIP's PIL image processor: works without torchvision (not installed on CPU machines)."""
    try:
        from transformers import SiglipImageProcessorPil

        return SiglipImageProcessorPil
    except ImportError:  # older transformers: the default class is PIL-based already
        from transformers import SiglipImageProcessor

        return SiglipImageProcessor


def _tiny_components(preset: Preset, seed: int) -> dict:
    """Random-init components of the real classes at the tiny preset's widths."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    tokenizer = _byte_level_tokenizer(512, add_eos=False)  # = Llama's positions; prompts pad to the preset
    tokenizer_2 = _byte_level_tokenizer(CLIP_MAX_TOKENS, add_eos=True)
    vocab = len(tokenizer)
    with torch.random.fork_rng(devices=[]):  # seed the weights without moving the caller's RNG
        torch.manual_seed(seed)
        vae = AutoencoderKLHunyuanVideo(  # diffusers' unit-test shape: 4 down blocks, 8 channels each
            latent_channels=preset.latent_channels,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=preset.vae_spatial,
            temporal_compression_ratio=preset.vae_temporal,
        )
        text_encoder = LlamaModel(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=preset.text_embed_dim,
                intermediate_size=2 * preset.text_embed_dim,
                num_hidden_layers=3,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=preset.pooled_dim,
                intermediate_size=2 * preset.pooled_dim,
                projection_dim=preset.pooled_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=CLIP_MAX_TOKENS,
                pad_token_id=tokenizer_2.pad_token_id,
                bos_token_id=tokenizer_2.bos_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
            )
        )
        image_encoder = SiglipVisionModel(
            SiglipVisionConfig(
                hidden_size=preset.image_embed_dim,
                intermediate_size=2 * preset.image_embed_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            )
        )
    feature_extractor = _image_processor_class()(size={"height": 32, "width": 32})
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
    )


def _feature_extractor_dir(root: Path) -> Path:
    """`feature_extractor/`, or the image encoder's own folder when the processor config sits there."""
    if (root / "feature_extractor").is_dir():
        return root / "feature_extractor"
    if (root / "image_encoder" / "preprocessor_config.json").is_file():
        return root / "image_encoder"
    raise FileNotFoundError(
        f"encoder weights folder {root} lacks subfolder: feature_extractor (SiglipImageProcessor config)"
    )


def _load_components(root: Path, dtype: torch.dtype, vae: torch.dtype) -> dict:
    """Real components from a local folder in diffusers/transformers layout."""
    if not root.is_dir():
        raise FileNotFoundError(f"encoder weights folder not found: {root}")
    missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"encoder weights folder {root} lacks subfolder(s): {', '.join(missing)}")
    extractor_dir = _feature_extractor_dir(root)

    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, SiglipVisionModel

    local = dict(local_files_only=True)
    log.info("loading encoders from %s (%s, VAE %s)", root, dtype, vae)
    return dict(
        vae=AutoencoderKLHunyuanVideo.from_pretrained(root / "vae", torch_dtype=vae, **local),
        text_encoder=LlamaModel.from_pretrained(root / "text_encoder", dtype=dtype, **local),
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer", **local),
        text_encoder_2=CLIPTextModel.from_pretrained(root / "text_encoder_2", dtype=dtype, **local),
        tokenizer_2=AutoTokenizer.from_pretrained(root / "tokenizer_2", **local),
        image_encoder=SiglipVisionModel.from_pretrained(root / "image_encoder", dtype=dtype, **local),
        feature_extractor=_image_processor_class().from_pretrained(extractor_dir, **local),
    )


def _check_widths(preset: Preset, components: dict) -> None:
    """Loaded weights must produce the widths the preset's transformer expects; say which do not."""
    found = {
        "latent_channels": components["vae"].config.latent_channels,
        "text_embed_dim": components["text_encoder"].config.hidden_size,
        "pooled_dim": components["text_encoder_2"].config.hidden_size,  # pooler_output is pre-projection
        "image_embed_dim": components["image_encoder"].config.hidden_size,
    }
    wrong = [
        f"{k}={v} (preset {preset.name!r} wants {getattr(preset, k)})"
        for k, v in found.items()
        if v != getattr(preset, k)
    ]
    if wrong:
        raise ValueError("encoder weights do not match the preset: " + ", ".join(wrong))


def onload(module: torch.nn.Module) -> None:
    """Bring a CPU-offloaded module to its execution device before a call that is not `forward`.

    diffusers wraps the VAE's `encode`/`decode` with accelerate's hook (`apply_forward_hook`); the tiled
    encode and the section decode call its encoder/decoder directly, so they trigger the hook themselves
    (without it, model offload on a GPU would run the VAE's CPU weights on device inputs).
    """
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


def _as_uint8_tensor(array, ndim: int, what: str) -> torch.Tensor:
    """numpy or torch uint8 → torch, with a leading batch axis added when it is missing."""
    if isinstance(array, torch.Tensor):
        x = array
    else:  # Parquet buffers are read-only and slices may run backwards; torch wants neither
        arr = np.ascontiguousarray(array)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if x.dtype != torch.uint8:
        raise ValueError(f"{what} must be uint8 RGB (0..255), got {x.dtype}")
    if x.ndim == ndim - 1:
        x = x.unsqueeze(0)
    if x.ndim != ndim or x.shape[-1] != 3:
        raise ValueError(f"{what} must be [..., 3] with {ndim - 1} or {ndim} axes, got {tuple(x.shape)}")
    return x


class VideoEncoders:
    """Everything between pixels/text and the transformer's inputs, on one device: the text and image
    encoders in `dtype`, the VAE in `vae_dtype` (default `resolve_vae_dtype("auto")`: fp32 on a CPU, fp16 on a GPU)."""

    def __init__(
        self,
        preset: Preset,
        components: dict,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        vae_tiling: bool | None = None,
        place: bool = True,
        vae_dtype: torch.dtype | None = None,
    ):
        """`place=False` leaves the modules where they are: a diffusers pipeline (and its CPU-offload
        hooks) owns their placement, and `device` is only where inputs go."""
        self.preset = preset
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_dtype = vae_dtype if vae_dtype is not None else resolve_vae_dtype("auto", self.device)
        self.vae_tiling = vae_tiling  # None: tile frames above TILE_ABOVE_PIXELS
        self.prompt_template = prompt_template_for(preset)
        for name, value in components.items():
            if isinstance(value, torch.nn.Module) and place:
                value = value.to(self.device)
                want = self.vae_dtype if name == "vae" else dtype
                if value.dtype != want:  # loaded weights already are `want`; casting again only warns
                    value = value.to(want)
                value = value.eval()
            setattr(self, name, value)
        self.vae.enable_slicing()  # one sample at a time: same numbers, bounded memory for batches

    @classmethod
    def build(
        cls,
        preset: str = "tiny",
        path: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        vae_dtype: torch.dtype | None = None,
    ) -> VideoEncoders:
        """`tiny` random encoders (path None) or real ones loaded from `path`, checked against the preset;
        `vae_dtype` None: `resolve_vae_dtype("auto", device)`."""
        spec = get_preset(preset)
        vae = vae_dtype if vae_dtype is not None else resolve_vae_dtype("auto", device)
        if path is None:
            if preset != "tiny":
                raise ValueError(f"preset {preset!r} has no random init here: pass the weights folder (--encoders DIR)")
            components = _tiny_components(spec, seed)
        else:
            components = _load_components(Path(path), dtype, vae)
            _check_widths(spec, components)
        return cls(spec, components, device, dtype, vae_dtype=vae)

    def save_pretrained(self, root: str | Path) -> Path:
        """Write the real layout, so a saved tiny set loads through the same path as real weights."""
        root = Path(root)
        for name in COMPONENTS:
            getattr(self, name).save_pretrained(root / name)
        return root

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def _set_tiling(self, height: int, width: int) -> None:
        """Spatial VAE tiling for large frames only (it blends tile seams, so it changes numbers)."""
        tile = self.vae_tiling if self.vae_tiling is not None else height * width > TILE_ABOVE_PIXELS
        self.vae.enable_tiling() if tile else self.vae.disable_tiling()

    @torch.no_grad()
    def encode_video(self, frames) -> torch.Tensor:
        """uint8 frames [T,H,W,3] or [B,T,H,W,3] (T = 4k+1, sides multiples of 8) → [B, C, k+1, H/8, W/8].

        Each sample is ONE causal stream, FramePack-F1's latent contract: latent 0 covers the first frame,
        latent j frames 4j−3 … 4j. Latent 0 is not the first frame encoded alone: the VAE's GroupNorm
        statistics span the temporal tile, so later frames reach it (`encode_image_latent` is the image
        alone). Uses the posterior mode, not a sample, so re-running data
        prep reproduces the same latents. Memory is bounded by one temporal tile (see `_encode_stream`),
        so a minute of 480p costs its uint8 frames plus a 17-frame working set, not a float copy of it all.
        """
        x = _as_uint8_tensor(frames, 5, "frames")
        t, h, w = x.shape[1:4]
        s = self.preset.vae_spatial
        if (t - 1) % self.preset.vae_temporal or h % s or w % s:
            raise ValueError(f"need 4k+1 frames and sides divisible by {s}, got {t} frames of {h}x{w}")
        self._set_tiling(h, w)
        return torch.cat([self._encode_stream(sample) for sample in x.split(1)])

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [1, T, H, W, 3] → the VAE's input [1, 3, T, H, W] in [-1, 1], on the device, in its dtype."""
        return (frames.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0).to(self.vae_dtype)

    def _tile_means(self, frames: torch.Tensor) -> torch.Tensor:
        """Posterior means of one temporal tile: the VAE's own per-tile path (spatially tiled or not)."""
        vae, x = self.vae, self._pixels(frames)
        onload(vae)
        h, w = x.shape[-2:]
        if vae.use_tiling and (h > vae.tile_sample_min_height or w > vae.tile_sample_min_width):
            moments = vae.tiled_encode(x)
        else:
            moments = vae.quant_conv(vae.encoder(x))
        return moments[:, : moments.shape[1] // 2]  # the mean half; blending below is per channel

    def _encode_stream(self, frames: torch.Tensor) -> torch.Tensor:
        """One sample's scaled latents, equal to `vae.encode(whole stream).latent_dist.mode()`.

        diffusers' AutoencoderKLHunyuanVideo encodes a stream longer than `tile_sample_min_num_frames`
        (16) in temporal tiles of 17 frames every 12 (3 latents), drops each later tile's first latent
        and blends the overlap with the previous tile. That *is* the whole-video encode for any length
        (the VAE's causal attention and GroupNorm see one tile at a time), so this loop replays it tile by
        tile, converting only the tile's frames to float and moving each result to the CPU at once;
        tests/test_encoders.py checks it equals `vae.encode` on the whole float tensor.
        """
        vae = self.vae
        t = frames.shape[1]
        scale = self.scaling_factor
        if not (vae.use_framewise_encoding and t > vae.tile_sample_min_num_frames):
            return (self._tile_means(frames) * scale).float().cpu()
        temporal = self.preset.vae_temporal
        span, stride = vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames
        latent_stride = stride // temporal
        blend = span // temporal - latent_stride
        latent_frames = (t - 1) // temporal + 1
        pieces, kept, previous = [], 0, None
        for first in range(0, t, stride):
            tile = self._tile_means(frames[:, first : first + span + 1])
            if previous is None:
                keep = tile[:, :, : latent_stride + 1]
            else:
                tile = vae.blend_t(previous, tile[:, :, 1:], blend)  # in place, as diffusers does
                keep = tile[:, :, :latent_stride]
            keep = keep[:, :, : latent_frames - kept]
            pieces.append((keep * scale).float().cpu())
            kept += keep.shape[2]
            previous = tile
        return torch.cat(pieces, dim=2)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents [B, C, T', h, w] → uint8 frames [B, 4(T'−1)+1, 8h, 8w, 3]."""
        s = self.preset.vae_spatial
        self._set_tiling(latents.shape[-2] * s, latents.shape[-1] * s)
        video = self.vae.decode(latents.to(self.device, self.vae_dtype) / self.scaling_factor).sample
        return pixels_to_uint8(video)

    @torch.no_grad()
    def encode_image_latent(self, images) -> torch.Tensor:
        """uint8 [B, H, W, 3] → the start latent [B, C, 1, H/8, W/8] (a one-frame video)."""
        return self.encode_video(_as_uint8_tensor(images, 4, "images").unsqueeze(1))

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str] | str) -> PromptEmbedding:
        """Llama states (template prefix cropped, padded to max_prompt_tokens) + mask, and CLIP's pooled output."""
        prompts = [prompts] if isinstance(prompts, str) else [p or "" for p in prompts]
        length, crop = self.preset.max_prompt_tokens, int(self.prompt_template.get("crop_start") or 0)
        wrapped = [self.prompt_template["template"].format(p) for p in prompts]
        llama_in = self.tokenizer(
            wrapped, max_length=length + crop, padding="max_length", truncation=True, return_tensors="pt"
        )
        self._warn_if_truncated(wrapped, length, crop)
        ids, mask = llama_in.input_ids.to(self.device), llama_in.attention_mask.to(self.device)
        states = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        embeds, mask = states[-(LLAMA_SKIP_LAYERS + 1)][:, crop:], mask[:, crop:].clone()
        mask[mask.sum(dim=1) == 0, 0] = 1  # a tokenizer that leaves nothing after the crop: keep one key
        clip_in = self.tokenizer_2(
            prompts, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True, return_tensors="pt"
        )
        pooled = self.text_encoder_2(clip_in.input_ids.to(self.device)).pooler_output
        return PromptEmbedding(embeds.float(), mask.long(), pooled.float())

    def _warn_if_truncated(self, wrapped: list[str], length: int, crop: int) -> None:
        """Long captions (MiraData's dense ones) would otherwise lose their end silently."""
        lengths = [len(ids) - crop for ids in self.tokenizer(wrapped).input_ids]
        over = [n for n in lengths if n > length]
        if over:
            log.warning(
                "%d of %d prompts truncated to %d text tokens (longest had %d)",
                len(over),
                len(lengths),
                length,
                max(over),
            )

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        """uint8 [B, H, W, 3] (any size) → SigLIP tokens [B, N, image_embed_dim]."""
        arr = _as_uint8_tensor(images, 4, "images").cpu().numpy()
        inputs = self.feature_extractor(images=list(arr), return_tensors="pt", input_data_format="channels_last")
        pixels = inputs.pixel_values.to(self.device, self.dtype)
        return self.image_encoder(pixel_values=pixels).last_hidden_state.float()


def pixels_to_uint8(video: torch.Tensor) -> np.ndarray:
    """VAE output [B, 3, T, H, W] in [-1, 1] → uint8 frames [B, T, H, W, 3] on the CPU.

    A few frames at a time: float copies of a whole minute of 480p video would need ~7 GB each.
    """
    frames = torch.empty(video.shape, dtype=torch.uint8)
    for start in range(0, video.shape[2], PIXEL_CHUNK_FRAMES):
        chunk = video[:, :, start : start + PIXEL_CHUNK_FRAMES].float().clamp(-1, 1)
        frames[:, :, start : start + PIXEL_CHUNK_FRAMES] = ((chunk + 1) * 127.5).round().to(torch.uint8).cpu()
    return frames.permute(0, 2, 3, 4, 1).numpy()


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] → [T, height, width, 3]: scale to cover, then crop the centre.

    OpenCV's area filter when shrinking (antialiased, as a video bucket from 640 px sources needs) and
    bilinear when enlarging; one frame at a time, so a clip never exists as a float copy.
    """
    import cv2

    frames = np.asarray(frames)
    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    size_w, size_h = max(width, round(w * scale)), max(height, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    top, left = (size_h - height) // 2, (size_w - width) // 2
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (size_w, size_h), interpolation=interpolation)[
            top : top + height, left : left + width
        ]
    return out

"""VAE, text and image encoders: `tiny` random presets and real weights from a local folder.

Real layout (HunyuanVideo in diffusers layout + FramePack's SigLIP), pointed at with `--encoders DIR`:
`vae/` (AutoencoderKLHunyuanVideo), `text_encoder/` (LlamaModel) + `tokenizer/`, `text_encoder_2/`
(CLIPTextModel) + `tokenizer_2/`, `image_encoder/` (SiglipVisionModel) + `feature_extractor/`
(SiglipImageProcessor). Everything loads with `local_files_only=True`: nothing is downloaded.

The `tiny` preset is the same classes at toy widths (matching `mempack.presets.TINY`) with random
weights from a seed; its tokenizers are built in-process with the `tokenizers` library (a byte-level
vocabulary: any text, including non-ASCII, tokenizes without a vocab file), since no hub is reachable.
Encoding follows diffusers' FramePack pipeline: Llama hidden state two layers before the last, CLIP's
pooled output, SigLIP's last hidden state, VAE latents times the scaling factor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mempack.presets import Preset, get_preset

log = logging.getLogger(__name__)

LLAMA_SKIP_LAYERS = 2  # HunyuanVideo reads hidden_states[-(2 + 1)]
CLIP_MAX_TOKENS = 77
SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder")


@dataclass
class PromptEmbedding:
    """Llama token states + mask (padded to the preset's length) and CLIP's pooled embedding."""

    prompt_embeds: torch.Tensor  # [B, L, text_embed_dim]
    prompt_mask: torch.Tensor  # [B, L] int64
    pooled: torch.Tensor  # [B, pooled_dim]


def _byte_level_tokenizer(model_max_length: int):
    """A tokenizer with a 256-byte vocabulary plus special tokens, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
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
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="</s>",
        model_max_length=model_max_length,
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
        CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer(preset.max_prompt_tokens)
    tokenizer_2 = _byte_level_tokenizer(CLIP_MAX_TOKENS)
    vocab = len(tokenizer)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=preset.latent_channels, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=preset.vae_spatial,
        temporal_compression_ratio=preset.vae_temporal,
    )
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=vocab, hidden_size=preset.text_embed_dim, intermediate_size=2 * preset.text_embed_dim,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=preset.pooled_dim, intermediate_size=2 * preset.pooled_dim,
        projection_dim=preset.pooled_dim, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_TOKENS, pad_token_id=tokenizer_2.pad_token_id,
        bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
    ))
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=preset.image_embed_dim, intermediate_size=2 * preset.image_embed_dim, num_hidden_layers=2,
        num_attention_heads=2, image_size=32, patch_size=16,
    ))
    feature_extractor = _image_processor_class()(size={"height": 32, "width": 32})
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                tokenizer_2=tokenizer_2, image_encoder=image_encoder, feature_extractor=feature_extractor)


def _load_components(root: Path, dtype: torch.dtype) -> dict:
    """Real components from a local folder in diffusers/transformers layout."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import (
        AutoTokenizer, CLIPTextModel, LlamaModel, SiglipVisionModel,
    )

    if not root.is_dir():
        raise FileNotFoundError(f"encoder weights folder not found: {root}")
    missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"encoder weights folder {root} lacks subfolder(s): {', '.join(missing)}")
    local = dict(local_files_only=True)
    extractor_dir = root / "feature_extractor"
    return dict(
        vae=AutoencoderKLHunyuanVideo.from_pretrained(root / "vae", torch_dtype=dtype, **local),
        text_encoder=LlamaModel.from_pretrained(root / "text_encoder", dtype=dtype, **local),
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer", **local),
        text_encoder_2=CLIPTextModel.from_pretrained(root / "text_encoder_2", dtype=dtype, **local),
        tokenizer_2=AutoTokenizer.from_pretrained(root / "tokenizer_2", **local),
        image_encoder=SiglipVisionModel.from_pretrained(root / "image_encoder", dtype=dtype, **local),
        feature_extractor=_image_processor_class().from_pretrained(
            extractor_dir if extractor_dir.is_dir() else root / "image_encoder", **local
        ),
    )


def _as_video_batch(frames) -> torch.Tensor:
    """uint8 [T,H,W,3] or [B,T,H,W,3] (numpy or torch) → float [B, 3, T, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3] or [B, T, H, W, 3], got {tuple(x.shape)}")
    return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


class VideoEncoders:
    """Everything between pixels/text and the transformer's inputs, on one device and dtype."""

    def __init__(self, preset: Preset, components: dict, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.preset = preset
        self.device = torch.device(device)
        self.dtype = dtype
        for name, value in components.items():
            if isinstance(value, torch.nn.Module):
                value = value.to(device=self.device, dtype=dtype).eval()
            setattr(self, name, value)

    @classmethod
    def build(cls, preset: str = "tiny", path: str | Path | None = None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, seed: int = 0) -> "VideoEncoders":
        """`tiny` random encoders (path None) or real ones loaded from `path`."""
        spec = get_preset(preset)
        if path is None:
            if preset != "tiny":
                raise ValueError(f"preset {preset!r} has no random init here: pass the weights folder (--encoders DIR)")
            components = _tiny_components(spec, seed)
        else:
            components = _load_components(Path(path), dtype)
        return cls(spec, components, device, dtype)

    def save_pretrained(self, root: str | Path) -> Path:
        """Write the real layout, so a saved tiny set loads through the same path as real weights."""
        root = Path(root)
        for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
                     "feature_extractor"):
            getattr(self, name).save_pretrained(root / name)
        return root

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.inference_mode()
    def encode_video(self, frames) -> torch.Tensor:
        """uint8 frames (T = 4k+1, H and W multiples of 8) → scaled latents [B, C, k+1, H/8, W/8] (float32)."""
        x = _as_video_batch(frames).to(self.device, self.dtype)
        t, h, w = x.shape[2:]
        if (t - 1) % self.preset.vae_temporal or h % self.preset.vae_spatial or w % self.preset.vae_spatial:
            raise ValueError(f"need 4k+1 frames and sides divisible by 8, got {t} frames of {h}x{w}")
        latents = self.vae.encode(x).latent_dist.mode()
        return (latents * self.scaling_factor).float()

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents [B, C, T', h, w] → uint8 frames [B, 4(T'−1)+1, 8h, 8w, 3]."""
        video = self.vae.decode(latents.to(self.device, self.dtype) / self.scaling_factor).sample
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().numpy()

    @torch.inference_mode()
    def encode_image_latent(self, images) -> torch.Tensor:
        """uint8 [B, H, W, 3] → the start latent [B, C, 1, H/8, W/8] (a one-frame video)."""
        x = torch.as_tensor(np.asarray(images))
        if x.ndim == 3:
            x = x.unsqueeze(0)
        return self.encode_video(x.unsqueeze(1))

    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbedding:
        """Llama states (padded to max_prompt_tokens) + mask, and CLIP's pooled embedding."""
        prompts = [p or "" for p in prompts]
        length = self.preset.max_prompt_tokens
        llama_in = self.tokenizer(prompts, max_length=length, padding="max_length", truncation=True,
                                  return_tensors="pt")
        ids, mask = llama_in.input_ids.to(self.device), llama_in.attention_mask.to(self.device)
        if mask.sum(dim=1).min() == 0:  # an empty prompt still needs one real token to attend to
            mask[:, 0] = 1
        states = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        embeds = states[-(LLAMA_SKIP_LAYERS + 1)]
        clip_in = self.tokenizer_2(prompts, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True,
                                   return_tensors="pt")
        pooled = self.text_encoder_2(clip_in.input_ids.to(self.device)).pooler_output
        return PromptEmbedding(embeds.float(), mask.long(), pooled.float())

    @torch.inference_mode()
    def encode_image(self, images) -> torch.Tensor:
        """uint8 [B, H, W, 3] (any size) → SigLIP tokens [B, N, image_embed_dim]."""
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        inputs = self.feature_extractor(images=list(arr), return_tensors="pt")
        pixels = inputs.pixel_values.to(self.device, self.dtype)
        return self.image_encoder(pixel_values=pixels).last_hidden_state.float()


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] → [T, height, width, 3]: scale to cover, then crop the centre."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    scale = max(height / x.shape[2], width / x.shape[3])
    size = (max(height, round(x.shape[2] * scale)), max(width, round(x.shape[3] * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
    x = x[:, :, top: top + height, left: left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

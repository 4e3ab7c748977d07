"""Precision as diffusers and FramePack run it: timesteps reach the backbone in fp32 whatever the model's
dtype, and the VAE runs in its own dtype (fp32 on a CPU, fp16 on a GPU by default), set through prep's
config, the pipeline loader and the inference CLI, while the transformer stays bf16."""

from __future__ import annotations

import pytest
import torch

from mempack.encoders import VideoEncoders, resolve_vae_dtype
from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.presets import TINY

C, H, W = TINY.latent_channels, 8, 8


def test_a_bf16_model_embeds_its_timestep_in_fp32():
    model = MemoryPackTransformer.from_preset("tiny", seed=0, dtype=torch.bfloat16)
    seen = []
    hook = model.backbone.time_text_embed.time_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(
        prompt_embeds=torch.randn(1, TINY.max_prompt_tokens, TINY.text_embed_dim, generator=g),
        prompt_mask=torch.ones(1, TINY.max_prompt_tokens, dtype=torch.int64),
        pooled=torch.randn(1, TINY.pooled_dim, generator=g),
        image_embeds=torch.randn(1, 4, TINY.image_embed_dim, generator=g),
        start_latent=torch.randn(1, C, 1, H, W, generator=g),
    )
    with torch.no_grad():
        v = model(
            torch.randn(1, C, 9, H, W, generator=g),
            torch.tensor([0.123]),
            cond,
            pack_history(cond.start_latent, None),
            model.initial_memory(cond),
        )
    hook.remove()
    assert torch.isfinite(v.float()).all()
    timestep, guidance = seen  # the time embedding, then the distilled-guidance embedding (bf16, as diffusers)
    expected = torch.tensor([1000.0]) * (1 - torch.tensor([0.123]))  # 877.0 in fp32
    assert timestep.dtype == torch.float32 and torch.equal(timestep, expected)
    assert expected.to(torch.bfloat16).float().item() == 876.0  # what the bf16 cast used to pass
    assert guidance.dtype == torch.bfloat16


def test_the_vae_dtype_defaults_to_one_that_does_not_band():
    assert resolve_vae_dtype("auto", "cpu") == torch.float32
    assert resolve_vae_dtype("auto", "cuda") == torch.float16  # FramePack's and diffusers' choice on a GPU
    assert resolve_vae_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="vae dtype must be auto or one of fp32, fp16, bf16"):
        resolve_vae_dtype("fp8")


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_encoders_run_the_vae_in_its_dtype_and_the_rest_in_the_model_s():
    bf16 = VideoEncoders.build("tiny", dtype=torch.bfloat16)
    assert _dtypes(bf16.vae) == {torch.float32} and _dtypes(bf16.text_encoder) == {torch.bfloat16}
    assert _dtypes(bf16.image_encoder) == {torch.bfloat16}
    clip = torch.randint(0, 256, (1, 5, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fp32 = VideoEncoders.build("tiny", dtype=torch.float32)
    assert torch.equal(bf16.encode_video(clip), fp32.encode_video(clip))  # the VAE is fp32 in both
    half = VideoEncoders.build("tiny", dtype=torch.bfloat16, vae_dtype=torch.float16)
    assert _dtypes(half.vae) == {torch.float16} and half.vae_dtype == torch.float16


def test_pipelines_load_the_transformer_in_bf16_and_the_vae_as_set(tmp_path):
    from mempack.export import load_pipeline

    pipe = load_pipeline(None, preset="tiny", dtype=torch.bfloat16)
    assert _dtypes(pipe.transformer) == {torch.bfloat16} and _dtypes(pipe.vae) == {torch.float32}
    assert pipe.encoders().vae_dtype == torch.float32 and pipe.encoders().dtype == torch.bfloat16
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(tmp_path / "pipe", dtype=torch.bfloat16, vae_dtype=torch.float16)
    assert _dtypes(loaded.transformer) == {torch.bfloat16} and _dtypes(loaded.vae) == {torch.float16}
    assert _dtypes(loaded.text_encoder) == {torch.bfloat16}


def test_prep_and_inference_take_the_vae_dtype_setting():
    from data_prep.encode import ClipEncoder
    from data_prep.job import PrepConfig, check_config
    from mempack.inference import InferenceError, InferenceRequest, run_inference

    assert _dtypes(ClipEncoder(vae_dtype="fp16").encoders.vae) == {torch.float16}
    assert _dtypes(ClipEncoder().encoders.vae) == {torch.float32}  # auto, on a CPU
    with pytest.raises(ValueError, match="vae_dtype='fp8'"):
        check_config(PrepConfig(vae_dtype="fp8"))
    with pytest.raises(InferenceError, match="vae dtype must be"):
        run_inference(InferenceRequest(vae_dtype="fp8", device="cpu"))

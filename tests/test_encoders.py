"""Tiny encoders: the real classes at toy widths, their shapes, determinism and local-path loading."""

import numpy as np
import pytest
import torch

import mempack.encoders as enc_mod
from mempack.encoders import VideoEncoders, resize_center_crop
from mempack.presets import TINY


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, encoders):
    return encoders.save_pretrained(tmp_path_factory.mktemp("weights") / "enc")


def test_video_latents_have_the_vae_compression(encoders, clip):
    latents = encoders.encode_video(clip)
    assert latents.shape == (1, TINY.latent_channels, 3, 8, 8) and latents.dtype == torch.float32
    frames = encoders.decode_latents(latents)
    assert frames.shape == (1, 9, 64, 64, 3) and frames.dtype == np.uint8


def test_a_batch_encodes_like_its_items(encoders, clip):
    batch = np.stack([clip, clip[::-1]])
    together = encoders.encode_video(torch.from_numpy(batch))
    frozen = np.frombuffer(clip[::-1].tobytes(), dtype=np.uint8).reshape(clip.shape)  # as read from Parquet
    apart = torch.cat([encoders.encode_video(clip), encoders.encode_video(frozen)])
    assert together.shape == (2, TINY.latent_channels, 3, 8, 8)
    torch.testing.assert_close(together, apart)


def test_bad_frames_are_refused(encoders, clip):
    with pytest.raises(ValueError, match="4k\\+1"):
        encoders.encode_video(clip[:8])
    with pytest.raises(ValueError, match="divisible by 8"):
        encoders.encode_video(clip[:, :60])
    with pytest.raises(ValueError, match="uint8"):
        encoders.encode_video(clip.astype(np.float32))


def test_same_seed_same_latents_and_the_callers_rng_is_untouched(encoders, clip):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again = VideoEncoders.build("tiny", seed=0)
    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.equal(again.encode_video(clip), encoders.encode_video(clip))
    other = VideoEncoders.build("tiny", seed=1)
    assert not torch.equal(other.encode_video(clip), encoders.encode_video(clip))


def test_prompt_embeddings_are_padded_with_a_counting_mask(encoders):
    emb = encoders.encode_prompt(["a red ball", "", "Straße café"])
    assert emb.prompt_embeds.shape == (3, TINY.max_prompt_tokens, TINY.text_embed_dim)
    assert emb.pooled.shape == (3, TINY.pooled_dim)
    assert emb.prompt_mask.dtype == torch.int64
    # byte-level tokens, one per UTF-8 byte, after a BOS (so an empty prompt still has one token)
    assert emb.prompt_mask.sum(dim=1).tolist() == [1 + len("a red ball"), 1, 1 + len("Straße café".encode())]
    assert emb.prompt_mask[0, :11].eq(1).all() and emb.prompt_mask[0, 11:].eq(0).all()  # right padding


def test_pooled_embedding_sees_the_whole_prompt(encoders):
    # CLIP pools at EOS under a causal mask: prompts differing only at the end must differ
    emb = encoders.encode_prompt(["a red ball", "a red bull"])
    assert (emb.pooled[0] - emb.pooled[1]).abs().max() > 1e-4
    assert torch.equal(emb.prompt_embeds[0, :7], emb.prompt_embeds[1, :7])  # shared prefix, causal Llama


def test_long_prompts_are_truncated_to_the_preset_length(encoders, caplog):
    emb = encoders.encode_prompt(["x" * 40])
    assert emb.prompt_mask.sum().item() == TINY.max_prompt_tokens
    assert "truncated" in caplog.text


def test_template_prefix_is_cropped_like_diffusers(encoders, monkeypatch):
    monkeypatch.setattr(encoders, "prompt_template", {"template": "ab{}", "crop_start": 3})  # BOS a b
    emb = encoders.encode_prompt(["hello"])
    assert emb.prompt_embeds.shape == (1, TINY.max_prompt_tokens, TINY.text_embed_dim)
    assert emb.prompt_mask.sum().item() == len("hello")
    # reference: unpadded forward of the whole templated prompt, layer -3, prefix dropped
    ids = encoders.tokenizer(["abhello"], return_tensors="pt").input_ids
    assert ids.shape[1] == 3 + len("hello")
    with torch.no_grad():
        ref = encoders.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-3][:, 3:]
    torch.testing.assert_close(emb.prompt_embeds[:, :5], ref, atol=1e-5, rtol=1e-5)


def test_image_tokens_and_start_latent(encoders, clip):
    tokens = encoders.encode_image(clip[:2, :40, :50])
    assert tokens.shape == (2, (32 // 8) ** 2, TINY.image_embed_dim)
    assert torch.equal(encoders.encode_image(clip[0, :40, :50])[0], tokens[0])  # unbatched input
    start = encoders.encode_image_latent(clip[0])
    assert start.shape == (1, TINY.latent_channels, 1, 8, 8)
    # a one-frame video (GroupNorm spans time, so it is not the clip's first latent frame)
    assert torch.equal(start, encoders.encode_video(clip[:1]))


def test_vae_tiles_only_large_frames(encoders, monkeypatch):
    monkeypatch.setattr(enc_mod, "TILE_ABOVE_PIXELS", 256 * 256)
    big = np.random.default_rng(1).integers(0, 256, (1, 264, 264, 3), dtype=np.uint8)
    assert encoders.encode_image_latent(big).shape == (1, TINY.latent_channels, 1, 33, 33)
    assert encoders.vae.use_tiling
    encoders.encode_image_latent(big[:, :64, :64])
    assert not encoders.vae.use_tiling


def test_saved_tiny_encoders_reload_from_the_real_layout(saved, encoders, clip):
    assert sorted(p.name for p in saved.iterdir()) == sorted(enc_mod.SUBFOLDERS + ("feature_extractor",))
    loaded = VideoEncoders.build("tiny", path=saved)
    assert torch.equal(loaded.encode_video(clip), encoders.encode_video(clip))
    a, b = loaded.encode_prompt(["hello", ""]), encoders.encode_prompt(["hello", ""])
    assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled, b.pooled)
    assert torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.equal(loaded.encode_image(clip[:1]), encoders.encode_image(clip[:1]))


def test_weights_of_another_width_are_refused(saved):
    with pytest.raises(ValueError, match="text_embed_dim=32"):
        VideoEncoders.build("framepack-f1", path=saved)


def test_missing_weights_name_the_missing_subfolder(tmp_path, saved):
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        VideoEncoders.build("tiny", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        VideoEncoders.build("tiny", path=tmp_path / "nope")
    partial = tmp_path / "partial"
    for name in enc_mod.SUBFOLDERS:
        (partial / name).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="feature_extractor"):
        VideoEncoders.build("tiny", path=partial)


def test_bfloat16_encoders_return_float32(clip):
    bf16 = VideoEncoders.build("tiny", dtype=torch.bfloat16)
    latents = bf16.encode_video(clip)
    assert latents.dtype == torch.float32 and latents.shape == (1, TINY.latent_channels, 3, 8, 8)
    assert bf16.encode_prompt(["a"]).prompt_embeds.dtype == torch.float32
    assert bf16.decode_latents(latents).shape == (1, 9, 64, 64, 3)


def test_resize_center_crop_keeps_the_centre():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 20:60] = 255  # a white band in the middle half
    out = resize_center_crop(frames, 32, 32)
    assert out.shape == (2, 32, 32, 3) and out[:, :, 8:24].min() > 200


def test_long_videos_convert_to_uint8_in_chunks_with_the_same_frames(encoders):
    """Past PIXEL_CHUNK_FRAMES decoded frames the conversion runs chunk by chunk; the frames are unchanged."""
    from mempack.encoders import PIXEL_CHUNK_FRAMES

    latents = torch.randn(1, 16, 40, 8, 8, generator=torch.Generator().manual_seed(3))
    frames = encoders.decode_latents(latents)
    assert frames.shape == (1, 157, 64, 64, 3) and 157 > 2 * PIXEL_CHUNK_FRAMES
    with torch.inference_mode():
        whole = encoders.vae.decode(latents / encoders.scaling_factor).sample
    expected = ((whole.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_array_equal(frames, expected)


@pytest.mark.parametrize("frames", [1, 17, 37, 109])
def test_a_stream_encodes_tile_by_tile_exactly_as_the_whole_video(encoders, frames):
    """The bounded-memory stream encode equals diffusers' encode of the whole float video, bit for bit.

    Past 16 frames the VAE works in 17-frame temporal tiles (blended); 109 frames = 1 + 3 sections span 9.
    """
    video = np.random.default_rng(frames).integers(0, 256, (frames, 48, 80, 3), dtype=np.uint8)
    streamed = encoders.encode_video(video)
    x = torch.from_numpy(video)[None].permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        whole = encoders.vae.encode(x).latent_dist.mode() * encoders.scaling_factor
    assert streamed.shape == (1, TINY.latent_channels, (frames - 1) // 4 + 1, 6, 10)
    assert torch.equal(streamed, whole)


def test_a_spatially_tiled_stream_equals_the_tiled_whole_encode():
    """Above TILE_ABOVE_PIXELS the VAE also tiles space (as at 480x832): still the whole encode's numbers."""
    small = VideoEncoders.build("tiny", seed=0)
    small.vae_tiling = True
    small.vae.enable_tiling(
        tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24, tile_sample_stride_width=24
    )  # tiles of 32 px, as 256-px tiles sit on 480x832
    video = np.random.default_rng(1).integers(0, 256, (37, 48, 80, 3), dtype=np.uint8)
    streamed = small.encode_video(video)
    x = torch.from_numpy(video)[None].permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        whole = small.vae.encode(x).latent_dist.mode() * small.scaling_factor
    assert torch.equal(streamed, whole)


def test_a_frame_keeps_its_aspect_ratio_in_its_bucket():
    """1080p-shaped frames go to the nearest bucket, scaled uniformly: a square stays a square."""
    from mempack.presets import nearest_bucket

    frames = np.zeros((1, 90, 160, 3), dtype=np.uint8)  # 16:9
    frames[:, 29:61, 64:96] = 255  # a 32x32 square in the middle
    bucket = nearest_bucket("tiny", 90, 160)
    out = resize_center_crop(frames, *bucket)
    assert bucket == (48, 80) and out.shape == (1, 48, 80, 3)
    rows, cols = np.nonzero(out[0, :, :, 0] > 127)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(height - width) <= 1 and abs(height - 32 * 48 / 90) <= 1  # scale max(48/90, 80/160)

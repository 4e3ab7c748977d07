"""Tiny encoders: the real classes at toy widths, their shapes, determinism and local-path loading."""

import numpy as np
import pytest
import torch

from mempack.encoders import VideoEncoders, resize_center_crop
from mempack.presets import TINY


@pytest.fixture(scope="module")
def encoders() -> VideoEncoders:
    return VideoEncoders.build("tiny", seed=0)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)


def test_video_latents_have_the_vae_compression(encoders, clip):
    latents = encoders.encode_video(clip)
    assert latents.shape == (1, TINY.latent_channels, 3, 8, 8) and latents.dtype == torch.float32
    frames = encoders.decode_latents(latents)
    assert frames.shape == (1, 9, 64, 64, 3) and frames.dtype == np.uint8


def test_bad_frame_counts_are_refused(encoders, clip):
    with pytest.raises(ValueError, match="4k\\+1"):
        encoders.encode_video(clip[:8])


def test_same_seed_same_latents(encoders, clip):
    again = VideoEncoders.build("tiny", seed=0)
    assert torch.equal(again.encode_video(clip), encoders.encode_video(clip))
    other = VideoEncoders.build("tiny", seed=1)
    assert not torch.equal(other.encode_video(clip), encoders.encode_video(clip))


def test_prompt_embeddings_are_padded_with_a_counting_mask(encoders):
    emb = encoders.encode_prompt(["a red ball", "", "Straße café"])
    assert emb.prompt_embeds.shape == (3, TINY.max_prompt_tokens, TINY.text_embed_dim)
    assert emb.pooled.shape == (3, TINY.pooled_dim)
    # byte-level tokens: one per UTF-8 byte; an empty prompt keeps one token to attend to
    assert emb.prompt_mask.sum(dim=1).tolist() == [len("a red ball"), 1, len("Straße café".encode())]


def test_image_tokens_and_start_latent(encoders, clip):
    tokens = encoders.encode_image(clip[:2, :40, :50])
    assert tokens.shape[0] == 2 and tokens.shape[2] == TINY.image_embed_dim
    start = encoders.encode_image_latent(clip[0])
    assert start.shape == (1, TINY.latent_channels, 1, 8, 8)


def test_saved_tiny_encoders_reload_from_the_real_layout(tmp_path, encoders, clip):
    encoders.save_pretrained(tmp_path / "enc")
    loaded = VideoEncoders.build("tiny", path=tmp_path / "enc")
    assert torch.equal(loaded.encode_video(clip), encoders.encode_video(clip))
    a, b = loaded.encode_prompt(["hello"]), encoders.encode_prompt(["hello"])
    assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled, b.pooled)
    assert torch.equal(loaded.encode_image(clip[:1]), encoders.encode_image(clip[:1]))


def test_missing_weights_name_the_missing_subfolder(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        VideoEncoders.build("tiny", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        VideoEncoders.build("tiny", path=tmp_path / "nope")


def test_resize_center_crop_keeps_the_centre():
    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 20:60] = 255  # a white band in the middle half
    out = resize_center_crop(frames, 32, 32)
    assert out.shape == (2, 32, 32, 3) and out[:, :, 8:24].min() > 200

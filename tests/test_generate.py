"""Section-by-section generation: diffusers reference, determinism, flat cost, absolute RoPE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline
from torch.utils.flop_counter import FlopCounterMode

from mempack import flow
from mempack.inference import conditioning
from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.sample import SAMPLE_PROMPT, sample_image
from mempack.sampling import (
    GenerationConfig,
    frames_for_sections,
    generate,
    sample_section,
    section_times,
    sections_for_frames,
)
from tests.test_model import open_gate


@pytest.fixture(scope="module")
def cond(encoders) -> Conditioning:
    return conditioning(encoders, sample_image(32, 32), SAMPLE_PROMPT)


def test_reference_matches_diffusers_vanilla_f1_sampling(encoders):
    """SemanticPack off + relative RoPE: our sampler is diffusers' F1 ("vanilla") sampler."""
    model = MemoryPackTransformer.from_preset("tiny", seed=3, use_semantic_pack=False, rope="relative").eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True)
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=encoders.text_encoder,
        tokenizer=encoders.tokenizer,
        transformer=model.backbone,
        vae=encoders.vae,
        scheduler=scheduler,
        text_encoder_2=encoders.text_encoder_2,
        tokenizer_2=encoders.tokenizer_2,
        image_encoder=encoders.image_encoder,
        feature_extractor=encoders.feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    image = sample_image(32, 32)
    text = encoders.encode_prompt([SAMPLE_PROMPT])
    sections, steps, guidance, seed = 3, 4, 10.0, 7
    # the pipeline makes the image tokens from [-1, 1] floats and *samples* the image latent from the
    # seeded generator before any noise; take both from it, so only the section sampler is compared
    pixels = pipe.video_processor.preprocess(image, 32, 32)
    image_embeds = pipe.encode_image(pixels, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    start = pipe.prepare_image_latents(pixels, dtype=torch.float32, device="cpu", generator=generator)
    ours = generate(
        model,
        Conditioning(text.prompt_embeds, text.prompt_mask, text.pooled, image_embeds, start),
        GenerationConfig(sections=sections, steps=steps, guidance=guidance, seed=seed),
        progress=False,
        generator=generator,
    )
    theirs = pipe(
        image=image,
        prompt_embeds=text.prompt_embeds,
        prompt_attention_mask=text.prompt_mask,
        pooled_prompt_embeds=text.pooled,
        height=32,
        width=32,
        num_frames=33 * sections,
        latent_window_size=9,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        sampling_type="vanilla",
    ).frames[-1]
    assert theirs.shape == ours.latents.shape == (1, 16, 1 + 9 * sections, 4, 4)
    # the only difference: diffusers feeds timestep = 1000·σ from float64 sigmas, we compute
    # 1000·(1 − t) in float32, a ~1e-5 relative change of the timestep embedding
    torch.testing.assert_close(ours.latents, theirs.float(), atol=2e-4, rtol=0)


def test_same_seed_same_video_other_seed_other_video(cond):
    model = MemoryPackTransformer.from_preset("tiny", seed=0).eval()
    config = GenerationConfig(sections=3, steps=3, seed=11)
    a = generate(model, cond, config, progress=False).latents
    b = generate(model, cond, config, progress=False).latents
    c = generate(model, cond, GenerationConfig(sections=3, steps=3, seed=12), progress=False).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, :, 1:], c[:, :, 1:])
    assert torch.equal(a[:, :, :1], cond.start_latent)  # the video starts at the image latent


def test_memory_changes_the_video_and_no_memory_runs(cond):
    model = open_gate(MemoryPackTransformer.from_preset("tiny", seed=0)).eval()  # ψ read, as after training
    with_memory = generate(model, cond, GenerationConfig(sections=3, steps=2), progress=False).latents
    without = generate(model, cond, GenerationConfig(sections=3, steps=2, use_memory=False), progress=False).latents
    assert with_memory.shape == without.shape
    assert not torch.allclose(with_memory[:, :, 1:], without[:, :, 1:])


def test_bounded_tail_equals_whole_history_with_absolute_rope(cond):
    """Keeping only the recent sections (plus a frame offset) gives exactly the whole-history result."""
    model = open_gate(MemoryPackTransformer.from_preset("tiny", seed=0)).eval()
    config = GenerationConfig(sections=5, steps=2, seed=5)
    ours = generate(model, cond, config, progress=False).latents
    g = torch.Generator().manual_seed(config.seed)
    shape = (1, 16, 9, *cond.start_latent.shape[-2:])
    times = section_times(model, shape, config.steps)
    history = None
    with torch.no_grad():
        memory = model.initial_memory(cond)
        for _ in range(config.sections):
            packed = pack_history(cond.start_latent, history, model.config.layout, "absolute")
            x = sample_section(model, cond, packed, memory, torch.randn(shape, generator=g), times, config.guidance)
            memory = model.update_memory(memory, x)
            history = x if history is None else torch.cat([history, x], dim=2)
    assert torch.equal(ours[:, :, 1:], history)


def test_section_cost_does_not_grow_with_the_video(cond):
    """Counted FLOPs (not wall time): identical for every section once ψ has its steady shape."""
    model = MemoryPackTransformer.from_preset("tiny", seed=0).eval()
    flops: list[int] = []
    counter = FlopCounterMode(display=False)
    with counter:
        generate(
            model,
            cond,
            GenerationConfig(sections=8, steps=1),
            progress=False,
            on_section=lambda n, x: flops.append(counter.get_total_flops()),
        )
    per_section = np.diff([0, *flops])
    assert per_section[0] > 0
    # section 1 attends to ψ₀ (prompt ⊕ image tokens); from section 2 on ψ is Squeeze's fixed-size output
    assert len(set(per_section[1:].tolist())) == 1, per_section


def test_frames_and_sections_arithmetic():
    assert frames_for_sections(1, 9) == 37 and frames_for_sections(10, 9) == 361
    assert sections_for_frames(37, 9) == 1 and sections_for_frames(38, 9) == 2 and sections_for_frames(1, 9) == 1
    with pytest.raises(ValueError):
        sections_for_frames(0, 9)


def test_sampling_times_follow_f1_shift():
    mu = flow.dynamic_shift_mu(9 * 4 * 4 // 4)
    times = flow.sampling_times(4, mu)
    sigma = np.linspace(1, 0, 5)[:-1]
    expected = np.exp(mu) / (np.exp(mu) + (1 / sigma - 1))
    np.testing.assert_allclose(1 - times[:-1].numpy(), expected, rtol=1e-6)
    assert times[-1] == 1.0


def test_continuing_a_video_equals_generating_it_in_one_go(cond):
    """A prefix becomes the history and feeds ψ section by section: continuing the first 3 sections of a
    5-section video (with the noise stream where it was) reproduces sections 4 and 5 exactly."""
    model = open_gate(MemoryPackTransformer.from_preset("tiny", seed=0)).eval()  # ψ read, as after training
    whole = generate(model, cond, GenerationConfig(sections=5, steps=2, seed=7), progress=False).latents
    g = torch.Generator().manual_seed(7)
    shape = (1, 16, 9, *cond.start_latent.shape[-2:])
    for _ in range(3):
        torch.randn(shape, generator=g)  # the noise of the three given sections
    prefix = whole[:, :, 1 : 1 + 27]
    continued = generate(
        model, cond, GenerationConfig(sections=2, steps=2), progress=False, generator=g, prefix=prefix
    ).latents
    assert continued.shape == whole.shape
    torch.testing.assert_close(continued, whole, atol=1e-6, rtol=0)
    # without the prefix's ψ updates the continuation differs: the memory really read the given video
    g2 = torch.Generator().manual_seed(7)
    for _ in range(3):
        torch.randn(shape, generator=g2)
    no_memory = generate(
        model,
        cond,
        GenerationConfig(sections=2, steps=2, use_memory=False),
        progress=False,
        generator=g2,
        prefix=prefix,
    ).latents
    assert not torch.allclose(no_memory[:, :, -18:], whole[:, :, -18:])

"""Teacher, direct and student forcing on the tiny model: what each clip is conditioned on."""

from itertools import pairwise

import pytest
import torch

from mempack import flow
from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.presets import TINY
from mempack.sampling import sample_section, section_times
from mempack.train.forcing import ForcingConfig, resolve_mode, student_sample, video_clip_steps
from tests.test_model import open_gate

C, H, W, WINDOW, CLIPS = 16, 8, 8, 9, 3


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    model = open_gate(MemoryPackTransformer.from_preset("tiny", seed=0))  # ψ read, as after training
    cond = Conditioning(
        torch.randn(1, TINY.max_prompt_tokens, TINY.text_embed_dim, generator=g),
        torch.ones(1, TINY.max_prompt_tokens, dtype=torch.int64),
        torch.randn(1, TINY.pooled_dim, generator=g),
        torch.randn(1, 4, TINY.image_embed_dim, generator=g),
        torch.randn(1, C, 1, H, W, generator=g),
    )
    clips = torch.randn(CLIPS, C, WINDOW, H, W, generator=g)
    return model, cond, clips


def test_direct_forcing_conditions_each_clip_on_the_previous_one_step_estimate(setup):
    model, cond, clips = setup
    steps = list(
        video_clip_steps(model, clips, cond, ForcingConfig(mode="direct"), generator=torch.Generator().manual_seed(1))
    )
    assert [s.index for s in steps] == [0, 1, 2]
    assert steps[0].history is None
    for prev, cur in pairwise(steps):
        expected = flow.one_step_estimate(prev.x_t, prev.velocity, prev.t)  # x_t + (1 - t) v
        torch.testing.assert_close(cur.history[:, :, -WINDOW:], expected, atol=0, rtol=0)
        assert not torch.allclose(cur.history[:, :, -WINDOW:], clips[prev.index : prev.index + 1])
    torch.testing.assert_close(steps[2].history[:, :, :WINDOW], steps[0].estimate, atol=0, rtol=0)


def test_teacher_forcing_conditions_on_ground_truth(setup):
    model, cond, clips = setup
    steps = list(video_clip_steps(model, clips, cond, ForcingConfig(mode="teacher")))
    torch.testing.assert_close(steps[2].history, torch.cat([clips[0:1], clips[1:2]], dim=2), atol=0, rtol=0)
    sampled = list(video_clip_steps(model, clips, cond, ForcingConfig(mode="teacher"), only_clip=2))
    assert len(sampled) == 1 and sampled[0].index == 2
    torch.testing.assert_close(sampled[0].history, steps[2].history, atol=0, rtol=0)


def test_student_forcing_conditions_on_a_sampled_clip(setup):
    model, cond, clips = setup
    steps = list(
        video_clip_steps(
            model,
            clips[:2],
            cond,
            ForcingConfig(mode="student", student_steps=2),
            generator=torch.Generator().manual_seed(2),
        )
    )
    history = steps[1].history
    assert history.shape == clips[:1].shape
    assert not torch.allclose(history, clips[:1]) and not torch.allclose(history, steps[0].estimate)


def test_losses_backpropagate_per_clip_into_semantic_pack(setup):
    model, cond, clips = setup
    model.zero_grad()
    for step in video_clip_steps(model, clips, cond, ForcingConfig(mode="teacher")):
        step.loss.backward(retain_graph=step.retain_graph)  # later clips' losses go through this ψ graph
    assert model.semantic_pack.squeeze.attn.in_proj_weight.grad.abs().sum() > 0
    assert model.backbone.proj_out.weight.grad.abs().sum() > 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="forcing mode"):
        ForcingConfig(mode="professor")


def _memorize_outputs(model):
    """Every Memorize output of the next forward passes, with its gradient kept."""
    outputs = []

    def keep(module, args, out):
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)

    return outputs, model.semantic_pack.memorize.register_forward_hook(keep)


@pytest.mark.parametrize("window", [1, 3, -1])
def test_a_clips_loss_reaches_the_memory_written_window_sections_before(setup, window):
    """Truncated BPTT through ψ: clip n's loss trains Memorize on clips n−1 … n−window, not older."""
    model, cond, _ = setup
    g = torch.Generator().manual_seed(4)
    clips = torch.randn(6, C, WINDOW, H, W, generator=g)
    n = 5
    model.zero_grad()
    outputs, handle = _memorize_outputs(model)
    try:
        (step,) = video_clip_steps(
            model, clips, cond, ForcingConfig(mode="teacher", memory_grad_window=window), generator=g, only_clip=n
        )
        step.loss.backward()
    finally:
        handle.remove()
    assert len(outputs) == n  # one ψ update per earlier clip
    reach = n if window < 0 else window
    for j, out in enumerate(outputs):
        if j >= n - reach:
            assert out.grad is not None and out.grad.abs().sum() > 0, f"clip {j} gets no gradient"
        else:
            assert not out.requires_grad, f"clip {j} lies outside the window {window}"
    psi0_trained = model.semantic_pack.text_in.weight.grad
    if reach >= n:  # ψ₀ inside the window: the prompt/image projection learns through the whole chain
        assert psi0_trained is not None and psi0_trained.abs().sum() > 0
    else:
        assert psi0_trained is None or psi0_trained.abs().sum() == 0


def test_every_clip_trained_keeps_the_memory_graph_across_clips(setup):
    """All clips trained (one optimizer step per video): clip 2's loss reaches clip 0's Memorize."""
    model, cond, clips = setup
    model.zero_grad()
    outputs, handle = _memorize_outputs(model)
    try:
        steps = video_clip_steps(model, clips, cond, ForcingConfig(mode="teacher", memory_grad_window=4))
        for step in steps:
            if step.index < 2:
                assert step.retain_graph
                step.loss.backward(retain_graph=True)
                continue
            grads_before = outputs[0].grad.clone()
            step.loss.backward()
    finally:
        handle.remove()
    assert not torch.equal(outputs[0].grad, grads_before)  # clip 2's loss added to clip 0's Memorize grad


def test_student_forcing_samples_with_the_inference_sampler(setup):
    model, cond, clips = setup
    config = ForcingConfig(mode="student", student_steps=3, sample_guidance=7.0)
    shape = tuple(clips[:1].shape)
    memory = model.initial_memory(cond)
    ours = student_sample(
        model,
        cond,
        clips[:1],
        memory,
        shape,
        config.student_steps,
        config.sample_guidance,
        torch.Generator().manual_seed(9),
    )
    times = section_times(model, shape, 3)  # F1's dynamic shift, as generate() uses
    assert not torch.allclose(times, torch.linspace(0, 1, 4))
    packed = pack_history(cond.start_latent, clips[:1], model.config.layout, model.config.rope)
    reference = sample_section(
        model, cond, packed, memory, torch.randn(shape, generator=torch.Generator().manual_seed(9)), times, 7.0
    )
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)


def test_batched_videos_train_like_single_ones(setup):
    model, cond, clips = setup
    both = torch.stack([clips, clips.flip(0)])  # [B=2, N, C, T, h, w]
    cond2 = Conditioning(
        *(
            torch.cat([v, v])
            for v in (cond.prompt_embeds, cond.prompt_mask, cond.pooled, cond.image_embeds, cond.start_latent)
        )
    )
    steps = list(video_clip_steps(model, both, cond2, ForcingConfig(mode="direct")))
    assert [s.index for s in steps] == [0, 1, 2]
    assert steps[2].history.shape == (2, C, 2 * WINDOW, H, W) and steps[0].t.shape == (2,)


def test_each_stage_has_an_explicit_default_and_every_mode_is_allowed():
    assert resolve_mode(None, 1) == "teacher" and resolve_mode(None, 2) == "direct"
    assert resolve_mode("teacher", 2) == "teacher"  # the head-only teacher control is not rewritten
    assert resolve_mode("student", 1) == "student"
    with pytest.raises(ValueError, match="forcing mode"):
        resolve_mode("professor", 2)

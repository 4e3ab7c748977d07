"""Teacher, direct and student forcing on the tiny model: what each clip is conditioned on."""

import pytest
import torch

from mempack import flow
from mempack.forcing import ForcingConfig, video_clip_steps
from mempack.model import Conditioning, MemoryPackTransformer
from mempack.presets import TINY

C, H, W, WINDOW, CLIPS = 16, 8, 8, 9, 3


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    model = MemoryPackTransformer.from_preset("tiny", seed=0)
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
    steps = list(video_clip_steps(model, clips, cond, ForcingConfig(mode="direct"),
                                  generator=torch.Generator().manual_seed(1)))
    assert [s.index for s in steps] == [0, 1, 2]
    assert steps[0].history is None
    for prev, cur in zip(steps, steps[1:]):
        expected = flow.one_step_estimate(prev.x_t, prev.velocity, prev.t)  # x_t + (1 - t) v
        torch.testing.assert_close(cur.history[:, :, -WINDOW:], expected, atol=0, rtol=0)
        assert not torch.allclose(cur.history[:, :, -WINDOW:], clips[prev.index: prev.index + 1])
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
    steps = list(video_clip_steps(model, clips[:2], cond, ForcingConfig(mode="student", student_steps=2),
                                  generator=torch.Generator().manual_seed(2)))
    history = steps[1].history
    assert history.shape == clips[:1].shape
    assert not torch.allclose(history, clips[:1]) and not torch.allclose(history, steps[0].estimate)


def test_losses_backpropagate_per_clip_into_semantic_pack(setup):
    model, cond, clips = setup
    model.zero_grad()
    for step in video_clip_steps(model, clips, cond, ForcingConfig(mode="teacher")):
        step.loss.backward()
    assert model.semantic_pack.squeeze.attn.in_proj_weight.grad.abs().sum() > 0
    assert model.backbone.proj_out.weight.grad.abs().sum() > 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="forcing mode"):
        ForcingConfig(mode="professor")

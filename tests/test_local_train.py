"""The in-process trainer runs the Ray loop's per-video step: what it trains, how often it steps, and
that the loss really falls on the synthetic world."""

import pytest
import torch

from mempack.fidelity.world import World, WorldConfig
from mempack.model import MemoryPackTransformer
from mempack.train.config import DataConfig, OptimConfig, TrainConfig
from mempack.train.forcing import ForcingConfig
from mempack.train.in_process import LocalTrainConfig, train_in_process
from mempack.train.step import clips_trained_per_video, samples_one_clip, trained_clip


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(absence=(1, 2)))


def test_stage_one_loss_falls_on_the_world(world):
    model = MemoryPackTransformer.from_preset("tiny", seed=0)

    def videos(step):
        v = world.video(step % 8)
        return v.clips(), world.conditioning(v)

    result = train_in_process(model, videos, LocalTrainConfig(stage=1, steps=60, lr=2e-3))
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert result.clips == 60 and result.skipped == 0  # stage-1 teacher: one sampled clip per video


def test_stage_two_trains_only_the_head_with_one_optimizer_step_per_video(world):
    model = MemoryPackTransformer.from_preset("tiny", seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    videos = [(v.clips()[:n], world.conditioning(v)) for v, n in ((world.video(1), 3), (world.video(2), 1))]
    steps = []
    original = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = counting
    try:
        result = train_in_process(
            model, videos, LocalTrainConfig(stage=2, steps=2, lr=1e-3, forcing=ForcingConfig(mode="direct"))
        )
    finally:
        torch.optim.AdamW.step = original
    assert len(steps) == 2 and result.clips == 1 + 3  # curriculum: the 1-clip video first, then all 3 clips
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {
        "backbone.norm_out.linear.weight",
        "backbone.norm_out.linear.bias",
        "backbone.proj_out.weight",
        "backbone.proj_out.bias",
    }


def test_stage_two_can_train_the_whole_network_on_the_same_clips(world):
    """`trainable="all"`: the paper's head-only choice as an ablation; the clips trained stay stage 2's."""
    video = world.video(4)
    clips = video.clips()[:3]
    model = MemoryPackTransformer.from_preset("tiny", seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_in_process(
        model,
        [(clips, world.conditioning(video))],
        LocalTrainConfig(stage=2, steps=1, lr=1e-3, trainable="all", forcing=ForcingConfig(mode="teacher")),
    )
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert result.clips == 3  # every clip, as stage 2 trains them
    assert "backbone.proj_out.weight" in changed and "backbone.x_embedder.proj.weight" in changed
    assert any(n.startswith("backbone.transformer_blocks.") for n in changed)
    assert TrainConfig(stage=2).resolved_trainable() == "head" and TrainConfig(stage=1).resolved_trainable() == "all"
    assert TrainConfig(stage=2, optim=OptimConfig(trainable="all")).resolved_trainable() == "all"
    with pytest.raises(ValueError, match="trainable must be one of"):
        TrainConfig(stage=2, optim=OptimConfig(trainable="backbone"))


def test_which_clips_a_step_trains_follows_stage_and_mode():
    g = torch.Generator().manual_seed(0)
    assert samples_one_clip(1, "teacher") and not samples_one_clip(2, "teacher")
    assert not samples_one_clip(1, "direct")  # stage 1 honours --conditioning: all clips, in order
    assert clips_trained_per_video(1, "teacher", 7) == 1 and clips_trained_per_video(2, "student", 7) == 7
    assert 0 <= trained_clip(1, "teacher", 7, g) < 7 and trained_clip(2, "direct", 7, g) is None
    assert TrainConfig(stage=1, forcing=ForcingConfig(mode="direct")).resolved_forcing().mode == "direct"
    assert TrainConfig(stage=2, forcing=ForcingConfig(mode="teacher")).resolved_forcing().mode == "teacher"
    assert TrainConfig(stage=2).resolved_forcing().mode == "direct"


def test_a_chosen_clip_replaces_the_uniform_draw_and_memory_learns_only_from_late_clips(world):
    """The first clip is generated before any ψ update, so training only it leaves Memorize untouched;
    training the last one reaches it. `memory_lr` gives Memorize its own rate."""
    video = world.video(3, absence=2)
    clips, cond = video.clips(), world.conditioning(video)
    changed = {}
    for name, pick in (("first", lambda n: 0), ("last", lambda n: n - 1)):
        model = MemoryPackTransformer.from_preset("tiny", seed=2)
        before = model.semantic_pack.patchify.weight.detach().clone()
        seen = []
        result = train_in_process(
            model,
            [(clips, cond)],
            LocalTrainConfig(stage=1, steps=2, lr=1e-3, memory_lr=1e-4),
            pick_clip=lambda n, pick=pick, seen=seen: seen.append(n) or pick(n),
        )
        assert seen == [clips.shape[0]] * 2 and result.clips == 2
        changed[name] = (model.semantic_pack.patchify.weight - before).abs().max().item()
    assert changed["first"] == 0.0
    assert 0.0 < changed["last"] < 3e-4  # two Adam steps of about memory_lr each (at lr they would reach 2e-3)


def test_stage_one_clip_policies_need_no_knowledge_of_the_video(world):
    """uniform: each clip equally; late: clip i ∝ i + 1; all: every clip, at that many micro-steps. The same
    policy runs in the Ray loop (TrainConfig.stage1_clips) and here (LocalTrainConfig.stage1_clips)."""
    g = torch.Generator().manual_seed(0)
    draws = {
        p: torch.bincount(torch.tensor([trained_clip(1, "teacher", 4, g, p) for _ in range(4000)]), minlength=4)
        for p in ("uniform", "late")
    }
    expected = {"uniform": torch.full((4,), 0.25), "late": torch.tensor([1, 2, 3, 4]) / 10}
    for policy, counts in draws.items():  # 4,000 draws: each share within 0.03 (> 4 standard errors)
        torch.testing.assert_close(counts / 4000, expected[policy].float(), atol=0.03, rtol=0)
    assert trained_clip(1, "teacher", 4, g, "all") is None and clips_trained_per_video(1, "teacher", 4, "all") == 4
    assert samples_one_clip(1, "teacher", "late") and not samples_one_clip(1, "teacher", "all")
    video = world.video(5, absence=1)
    model = MemoryPackTransformer.from_preset("tiny", seed=3)
    result = train_in_process(
        model,
        [(video.clips(), world.conditioning(video))],
        LocalTrainConfig(stage=1, steps=1, lr=1e-3, stage1_clips="all"),
    )
    assert result.clips == video.sections  # every clip of the video, teacher-forced
    assert TrainConfig(data=DataConfig(stage1_clips="late")).data.stage1_clips == "late"
    for bad in (
        lambda: TrainConfig(data=DataConfig(stage1_clips="return")),
        lambda: LocalTrainConfig(stage1_clips="return"),
    ):
        with pytest.raises(ValueError, match="stage1_clips must be one of"):
            bad()

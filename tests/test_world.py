"""The synthetic world: its ground truth, its scorer and its renderer, checked against what it drew."""

import numpy as np
import pytest
import torch

from mempack.fidelity.world import CHANNELS, OBJECT, SECTION, World, WorldConfig


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(identities=5, absence=(3, 5), seed=1))


def test_a_video_is_start_plus_whole_sections_with_an_absence_longer_than_framepacks_window(world):
    video = world.video(7, absence=4)
    assert video.latents.shape == (CHANNELS, 1 + SECTION * video.sections, 8, 8)
    assert video.clips().shape == (video.sections, CHANNELS, SECTION, 8, 8)
    torch.testing.assert_close(video.clips()[2], video.latents[:, video.section_frames(2)])
    assert video.absence == 4 and video.absence * SECTION > 1 + 2 + 16
    assert world.detect(video.latents[:, 0]) == []  # never in the start latent
    first_in_view = min(f for f, pos in enumerate(video.positions) if pos is not None)
    assert first_in_view == video.section_frames(video.enter).start and video.enter >= world.config.enter[0] >= 1


def test_the_scorer_reads_back_what_was_drawn(world):
    for seed in range(6):
        video = world.video(seed)
        for f, pos in enumerate(video.positions):
            cells = {(y, x) for y, x, k in world.detect(video.latents[:, f]) if k == video.identity}
            if pos is None:
                assert not cells, f"frame {f}: object seen while out of view"
            else:
                y, x = pos
                assert cells == {(y + a, x + b) for a in range(OBJECT) for b in range(OBJECT)}
        lane = (world.config.height - OBJECT, world.config.height)
        assert world.identity_in(video.latents, video.section_frames(video.returns), rows=lane) == video.identity
        assert world.identity_in(video.latents, video.section_frames(video.leave), rows=lane) is None
        errors = world.frame_errors(video.latents, video.background)
        assert errors["total"].max() == pytest.approx(0.0, abs=1e-10)  # the truth has no error


def test_a_blend_of_identities_is_not_an_identity(world):
    video = world.video(3)
    frame = video.latents[:, video.section_frames(video.enter).start].clone()
    y, x = video.positions[video.section_frames(video.enter).start]
    frame[:, y, x] = world.codes[:3].mean(dim=0)  # what a model that does not remember would draw
    assert (y, x) not in {(a, b) for a, b, _ in world.detect(frame)}
    noisy = video.latents + torch.randn_like(video.latents, generator=None) * 2
    assert world.frame_errors(noisy, video.background)["background"].mean() > 1.0


def test_identity_is_never_in_the_conditions(world):
    a, b = world.video(0), world.video(1)
    ca, cb = world.conditioning(a), world.conditioning(b)
    torch.testing.assert_close(ca.prompt_embeds, cb.prompt_embeds)  # one sentence for every video
    assert not torch.allclose(ca.image_embeds, cb.image_embeds)  # the start frame's background differs
    same_background = World(WorldConfig(identities=5, seed=1))
    # image features are a function of the start latent, which holds the background only
    ids = {}
    for seed in range(40):
        v = same_background.video(seed)
        ids.setdefault(v.identity, v)
    assert len(ids) >= 3
    for v in ids.values():
        assert world.detect(v.latents[:, 0]) == []


def test_render_is_a_fixed_palette_of_uint8_frames(world):
    video = world.video(2)
    rgb = world.render(video.latents, scale=4)
    assert rgb.shape == (video.latents.shape[1], 32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, world.render(video.latents, scale=4))
    start = video.section_frames(video.enter).start
    assert not np.array_equal(rgb[start], rgb[0])  # the object shows


@pytest.fixture(scope="module")
def moving():
    return World(WorldConfig(identities=5, absence=(3, 5), seed=1, camera="moving"))


def test_a_moving_camera_leaves_no_frame_equal_to_the_start_latent(moving, world):
    """Pan, zoom and lighting: after the start latent, every frame's background differs from it, and in every
    section by more energy than the object holds, so "section minus start latent" is mostly the camera.
    The objects, identities and events are the static video's of the same seed."""
    object_energy = float(moving.codes.square().sum(dim=1).mean()) * OBJECT * OBJECT
    for seed in range(6):
        video, still = moving.video(seed), world.video(seed)
        assert (video.identity, video.enter, video.leave, video.returns, video.positions) == (
            still.identity,
            still.enter,
            still.leave,
            still.returns,
            still.positions,
        )
        torch.testing.assert_close(video.latents[:, 0], still.latents[:, 0])  # the same start latent
        truth = moving.backgrounds(video, video.latents.shape[1])
        change = (truth - video.latents[:, :1]).square().sum(dim=(0, 2, 3))  # per frame
        start_energy = float(video.latents[:, 0].square().sum())
        assert float(change[1:].min()) > 0.01 * start_energy  # no frame after the start repeats it
        for k in range(video.sections):
            assert float(change[video.section_frames(k)].mean()) > object_energy, (seed, k)
        # the truth continues past the video's end (rollouts are longer), along the same path
        longer = moving.backgrounds(video, video.latents.shape[1] + 20)
        torch.testing.assert_close(longer[:, : truth.shape[1]], truth)
        assert float((longer[:, -1] - truth[:, -1]).square().sum()) > 0.01 * start_energy


def test_the_scorer_finds_objects_and_identities_exactly_under_a_moving_camera(moving):
    lane = (moving.config.height - OBJECT, moving.config.height)
    for seed in range(6):
        video = moving.video(seed)
        truth = moving.backgrounds(video, video.latents.shape[1])
        for f, pos in enumerate(video.positions):
            found = moving.detect(video.latents[:, f])
            cells = [(a, b) for a in range(OBJECT) for b in range(OBJECT)]
            expected = set() if pos is None else {(pos[0] + a, pos[1] + b) for a, b in cells}
            assert {(y, x) for y, x, k in found if k == video.identity} == expected, (seed, f)
            assert all(k == video.identity for _, _, k in found), (seed, f)  # the moving background is never an object
        assert moving.identity_in(video.latents, video.section_frames(video.returns), rows=lane) == video.identity
        assert moving.identity_in(video.latents, video.section_frames(video.leave), rows=lane) is None
        assert moving.frame_errors(video.latents, truth)["total"].max() == pytest.approx(0.0, abs=1e-10)
        # scored against the start latent as if the camera stood still, the same video is far off
        assert moving.frame_errors(video.latents, video.background)["background"][1:].mean() > 0.1
    rgb = moving.render(video.latents, scale=2)
    assert rgb.shape == (video.latents.shape[1], 16, 16, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[1], rgb[0])  # the frame after the start already moved


def test_minus_start_latent_is_the_object_alone_only_while_the_camera_stands_still(world, moving):
    """What SemanticPack's `memorize_input="minus_start_latent"` reads, on each camera: the object's share of
    the energy of (section − start latent) in the section it enters. A static camera leaves exactly the
    object (share 1); a moving one leaves mostly the camera's motion, as on real footage."""
    for seed in range(6):
        shares = {}
        for name, w in (("static", world), ("moving", moving)):
            video = w.video(seed)
            frames = video.section_frames(video.enter)
            difference = video.latents[:, frames] - video.latents[:, :1]
            mask = torch.zeros(difference.shape[1:], dtype=torch.bool)
            for k, f in enumerate(range(frames.start, frames.stop)):
                y, x = video.positions[f]
                mask[k, y : y + OBJECT, x : x + OBJECT] = True
            energy = difference.square().sum(dim=0)
            shares[name] = float(energy[mask].sum() / energy.sum())
        assert shares["static"] == pytest.approx(1.0, abs=1e-6), (seed, shares)
        assert shares["moving"] < 0.5, (seed, shares)


def test_every_knob_is_checked():
    with pytest.raises(ValueError, match="identities"):
        WorldConfig(identities=1)
    with pytest.raises(ValueError, match="absence"):
        WorldConfig(absence=(4, 2))
    with pytest.raises(ValueError, match="distractor"):
        WorldConfig(identities=2, distractors=2)
    with pytest.raises(ValueError, match="camera"):
        WorldConfig(camera="handheld")
    world = World(WorldConfig(distractors=2, identities=4, speed=(1, 2)))
    video = world.video(5)
    assert len(video.distractor_ids) == 2 and video.identity not in video.distractor_ids
    seen = {k for f in range(1, video.latents.shape[1]) for _, _, k in world.detect(video.latents[:, f])}
    assert set(video.distractor_ids) <= seen


def _small_model(world, oracle: bool):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from mempack.fidelity.oracle import OracleMemoryTransformer
    from mempack.model import MemoryPackTransformer, SemanticPack
    from mempack.model.memorypack import MemoryPackConfig
    from mempack.presets import TINY

    torch.manual_seed(0)
    backbone = HunyuanVideoFramepackTransformer3DModel(**TINY.transformer)
    memory = SemanticPack(**TINY.semantic_pack)
    if oracle:
        return OracleMemoryTransformer(backbone, memory, MemoryPackConfig(), world)
    return MemoryPackTransformer(backbone, memory, MemoryPackConfig())


def test_the_oracle_memory_holds_the_identity_last_seen_and_the_probe_reads_it(world):
    from mempack.fidelity.metrics import memory_probe

    oracle = _small_model(world, oracle=True)
    video = world.video(11, absence=4)
    memory = oracle.initial_memory(world.conditioning(video))
    assert memory.tokens.abs().sum() == 0  # nothing seen yet: the start latent never holds the object
    for section in range(video.returns):
        memory = oracle.update_memory(memory, video.latents[None, :, video.section_frames(section)])
        if section == video.enter:
            entered = memory.tokens.clone()
    code = memory.tokens[0, 0, :CHANNELS]
    torch.testing.assert_close(code, world.codes[video.identity])  # kept through 4 absent sections
    torch.testing.assert_close(memory.tokens, entered)
    assert memory.tokens[0, 0, CHANNELS:].abs().sum() == 0 and memory.step == video.returns
    # the read-out finds what the oracle holds, and finds nothing where ψ holds nothing of the identity
    assert memory_probe(oracle, world, [4], seed=5, videos=40) == {4: 1.0}
    blind = _small_model(world, oracle=False)
    with torch.no_grad():  # a memory that ignores the video: ψ₁ = Squeeze(Memorize = constant, ψ₀)
        blind.semantic_pack.patchify.weight.zero_()
        blind.semantic_pack.patchify.bias.zero_()
    assert memory_probe(blind, world, [4], seed=5, videos=40)[4] <= 0.5  # chance 0.2 (K = 5) on 10 test videos
    blind.config.use_semantic_pack = False
    assert memory_probe(blind, world, [4], seed=5, videos=40) is None


def test_a_forced_identity_changes_only_the_object_s_code(world):
    """Evaluation balances identities (`video(..., identity=k)`): the rest of the video is the seed's own."""
    drawn = world.video(21, absence=4)
    for k in range(world.config.identities):
        forced = world.video(21, absence=4, identity=k)
        assert forced.identity == k
        assert (forced.enter, forced.leave, forced.returns, forced.positions) == (
            drawn.enter,
            drawn.leave,
            drawn.returns,
            drawn.positions,
        )
        object_cells = torch.tensor([pos is not None for pos in forced.positions])
        torch.testing.assert_close(forced.background, drawn.background)
        same = (forced.latents == drawn.latents).all(dim=0).flatten(1).all(dim=1)  # per frame
        assert bool(same[~object_cells].all())  # frames without the object are identical
        lane = (world.config.height - OBJECT, world.config.height)
        assert world.identity_in(forced.latents, forced.section_frames(forced.returns), rows=lane) == k
    with pytest.raises(ValueError, match="identity must be in"):
        world.video(21, identity=world.config.identities)


def test_a_faint_oracle_holds_the_same_answer_under_a_constant_every_video_shares(world):
    """identity_share = 0.01: the code is 1 % of the token's energy, the rest one vector for every video."""
    from mempack.fidelity.metrics import memory_probe

    oracle = _small_model(world, oracle=True)
    oracle.identity_share = 0.01
    tokens = {}
    for seed in (11, 12, 13, 14, 15, 16):
        video = world.video(seed, absence=4)
        memory = oracle.initial_memory(world.conditioning(video))
        before = memory.tokens.clone()
        for section in range(video.returns):
            memory = oracle.update_memory(memory, video.latents[None, :, video.section_frames(section)])
        code = world.codes[video.identity]
        torch.testing.assert_close(memory.tokens[0, 0, :CHANNELS] - before[0, 0, :CHANNELS], code)
        torch.testing.assert_close(memory.tokens[0, 0, CHANNELS:], before[0, 0, CHANNELS:])
        constant_energy = float(before.square().sum())
        assert constant_energy == pytest.approx(99 * float(code.square().sum()), rel=1e-4)
        tokens[seed] = before
    assert all(torch.equal(t, tokens[11]) for t in tokens.values())  # the same in every video
    assert memory_probe(oracle, world, [4], seed=5, videos=40) == {4: 1.0}  # a read-out still finds it all
    with pytest.raises(ValueError, match="identity_share"):
        type(oracle)(oracle.backbone, oracle.semantic_pack, oracle.config, world, identity_share=0.0)


def test_memory_energy_says_how_loudly_psi_holds_the_identity(world):
    """An oracle's ψ varies only with the identity; a faint one holds it at a far smaller share of energy."""
    from mempack.fidelity.metrics import memory_energy

    oracle = _small_model(world, oracle=True)
    clean = memory_energy(oracle, world, [4], seed=5, videos=40)[4]
    assert clean["identity"] == pytest.approx(clean["varying"], rel=1e-6)  # nothing but the identity varies
    oracle.identity_share = 0.01
    faint = memory_energy(oracle, world, [4], seed=5, videos=40)[4]
    assert faint["identity"] == pytest.approx(faint["varying"], rel=1e-6)
    assert faint["identity"] < 0.1 * clean["identity"]
    model = _small_model(world, oracle=False)
    learned = memory_energy(model, world, [4], seed=5, videos=40)[4]
    assert 0 <= learned["identity"] < learned["varying"] < 1  # the background varies too
    with torch.no_grad():  # a silent projection (zero-initialised adapters start so): shares of nothing are 0
        for param in model.semantic_pack.to_context[1].parameters():
            param.zero_()
    assert memory_energy(model, world, [4], seed=5, videos=8) == {4: {"varying": 0.0, "identity": 0.0}}
    model.config.use_semantic_pack = False
    assert memory_energy(model, world, [4], seed=5, videos=40) is None


def test_exposure_gap_compares_own_and_true_history_under_the_same_noise(world):
    """Section 0 has no history: both passes draw it identically. The premise of the pairing: section 1
    generated from the rollout's own section 0 with the generator advanced one draw IS the rollout's."""
    from mempack.fidelity.metrics import exposure_gap
    from mempack.sampling import GenerationConfig, generate

    model = _small_model(world, oracle=False)
    result = exposure_gap(model, world, 3, seed=10, steps=2, absence=1)
    sections = [world.video(10 + v, absence=1).sections for v in range(3)]
    assert len(set(sections)) > 1  # videos of different lengths: the curves keep the sections all have
    assert len(result.rollout_curve) == len(result.teacher_curve) == min(sections) and len(result.per_video) == 3
    assert result.rollout_curve[0] == pytest.approx(result.teacher_curve[0], abs=1e-9)
    assert result.gap == pytest.approx(np.mean(result.per_video))
    video = world.video(7, absence=1)
    cond = world.conditioning(video)
    own = generate(model, cond, GenerationConfig(sections=2, steps=2, seed=3), progress=False).latents
    generator = torch.Generator().manual_seed(3)
    torch.randn((1, CHANNELS, SECTION, *own.shape[3:]), generator=generator)
    again = generate(
        model,
        cond,
        GenerationConfig(sections=1, steps=2),
        progress=False,
        prefix=own[:, :, 1 : 1 + SECTION],
        generator=generator,
    ).latents
    torch.testing.assert_close(again[:, :, 1 + SECTION :], own[:, :, 1 + SECTION :])

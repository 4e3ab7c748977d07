"""Positions past the trained length: the RoPE indices each section gets under each option, and that the
sampler and the pipeline feed exactly those to the backbone (docs/long_videos.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.process import ClipSpec
from mempack.inference import conditioning
from mempack.model import HistoryLayout, MemoryPackConfig, MemoryPackTransformer, pack_history, rope_indices
from mempack.model.history import DEFAULT_TRAINED_SECONDS, window_offset
from mempack.pipeline import MemoryPackPipeline
from mempack.sample import SAMPLE_PROMPT, sample_image
from mempack.sampling import GenerationConfig, generate

ROOT = Path(__file__).resolve().parents[1]
F1 = HistoryLayout()  # 1 + 2 + 16 history frames, sections of 9
TRAINED_13 = 1 + 9 * 13  # the benchmark's world: 13 sections = 118 latent frames


def indices(section: int, positions: str, trained_frames: int = TRAINED_13, rope: str = "absolute") -> dict:
    """The indices `pack_history` gives new section `section` of a generated video (no prefix)."""
    history = torch.zeros(1, 16, 9 * section, 2, 2)
    packed = pack_history(
        torch.zeros(1, 16, 1, 2, 2), history, F1, rope, positions=positions, trained_frames=trained_frames
    )
    return {
        "start": int(packed.indices_clean[0]),
        "4x": packed.indices_4x.tolist(),
        "2x": packed.indices_2x.tolist(),
        "1x": int(packed.indices_clean[1]),
        "noisy": packed.indices_latents.tolist(),
    }


# (section, option) → first 4x index, 2x, 1x, first noisy index; the start latent is always 0
EXPECTED = {
    (12, "absolute"): (90, [106, 107], 108, 109),  # the last trained section: every option agrees
    (12, "shift"): (90, [106, 107], 108, 109),
    (12, "wrap"): (90, [106, 107], 108, 109),
    (13, "absolute"): (99, [115, 116], 117, 118),  # L: the first section past the trained length
    (13, "shift"): (90, [106, 107], 108, 109),  # the newest frame on the last trained index, 117
    (13, "wrap"): (0, [16, 17], 18, 19),  # section 2's positions (the first with a full history)
    (14, "wrap"): (9, [25, 26], 27, 28),  # section 3's
    (25, "absolute"): (207, [223, 224], 225, 226),  # 2L − 1
    (25, "shift"): (90, [106, 107], 108, 109),
    (51, "absolute"): (441, [457, 458], 459, 460),  # 4L − 1: past the world model's longest wavelength (402)
    (51, "shift"): (90, [106, 107], 108, 109),
    (51, "wrap"): (45, [61, 62], 63, 64),  # 2 + (51 − 2) mod 11 = section 7
}


@pytest.mark.parametrize(("section", "positions"), sorted(EXPECTED))
def test_indices_each_section_gets(section, positions):
    first_4x, two_x, one_x, first_noisy = EXPECTED[(section, positions)]
    got = indices(section, positions)
    assert got["start"] == 0
    assert got["4x"] == list(range(first_4x, first_4x + 16))
    assert got["2x"] == two_x and got["1x"] == one_x
    assert got["noisy"] == list(range(first_noisy, first_noisy + 9))


def test_inside_the_trained_length_every_option_is_absolute():
    for section in range(13):
        absolute = indices(section, "absolute")
        assert indices(section, "shift") == absolute == indices(section, "wrap")
        assert absolute["noisy"][0] == 1 + 9 * section


def test_shift_and_wrap_keep_every_distance_training_saw():
    """Between history and section the spacing never changes; the start latent's distance stays in range."""
    for section in range(13, 60):
        for option in ("shift", "wrap"):
            got = indices(section, option)
            assert got["noisy"][0] - got["1x"] == 1 and got["1x"] - got["2x"][-1] == 1
            assert 19 <= got["noisy"][-1] - got["start"] <= TRAINED_13 - 1


def test_relative_layout_ignores_the_option():
    """F1's fixed layout has no positions past anything: arange(29) split [1, 16, 2, 1, 9], every section."""
    relative = indices(51, "absolute", rope="relative")
    assert relative == indices(51, "shift", rope="relative") == indices(51, "wrap", rope="relative")
    assert relative["4x"] == list(range(1, 17)) and relative["noisy"] == list(range(20, 29))


def test_offsets_with_a_continued_video_of_any_length():
    """A prefix that is no whole number of sections: shift still lands the newest frame on trained_frames − 1."""
    for context in (110, 113, 200, 1000):
        offset = window_offset(context, F1, "shift", TRAINED_13)
        assert context + 8 - offset == 117
        idx = rope_indices(context, F1, "absolute", offset)
        assert int(idx["indices_latents"][-1]) == 117


def test_bad_options_are_one_clear_error():
    with pytest.raises(ValueError, match="positions must be one of"):
        window_offset(100, F1, "cap", TRAINED_13)
    with pytest.raises(ValueError, match="positions must be one of"):
        GenerationConfig(positions="clamp")
    with pytest.raises(ValueError, match="positions must be one of"):
        MemoryPackConfig(positions="relative")
    with pytest.raises(ValueError, match="no section with a full history"):
        window_offset(100, F1, "shift", 27)  # 3 sections: none has 19 frames of history behind it
    with pytest.raises(ValueError, match="trained_sections"):
        MemoryPackConfig(trained_sections=0)


def test_default_trained_length_is_preps_cap_and_the_config_round_trips(tmp_path):
    assert ClipSpec().max_shot_seconds == DEFAULT_TRAINED_SECONDS  # one fact, two places: kept equal here
    assert MemoryPackConfig().trained_frames == 1 + 9 * 50  # 60 s = 50 sections of 1.2 s
    assert MemoryPackConfig().positions == "shift"
    MemoryPackConfig(positions="wrap", trained_sections=7).save(tmp_path)
    loaded = MemoryPackConfig.load(tmp_path)
    assert (loaded.positions, loaded.trained_sections, loaded.trained_frames) == ("wrap", 7, 64)


class NoisyIndices:
    """Records the first noisy index of every backbone forward (one per Euler step)."""

    def __init__(self, backbone):
        self.seen: list[int] = []
        self.handle = backbone.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.seen.append(int(kwargs["indices_latents"][0]))

    def close(self) -> list[int]:
        self.handle.remove()
        return self.seen


# a model trained on 4 sections (37 latent frames), 7 sections generated, one Euler step each
SAMPLED = {
    "absolute": [1, 10, 19, 28, 37, 46, 55],
    "shift": [1, 10, 19, 28, 28, 28, 28],
    "wrap": [1, 10, 19, 28, 19, 28, 19],  # period 37 − 19 = 18 frames: sections 2 and 3 in turn
}


@pytest.fixture(scope="module")
def model() -> MemoryPackTransformer:
    return MemoryPackTransformer.from_preset("tiny", seed=0, trained_sections=4).eval()


def test_generate_feeds_the_options_indices_and_diverges_only_past_the_trained_length(model, encoders):
    cond = conditioning(encoders, sample_image(32, 32), SAMPLE_PROMPT)
    videos = {}
    for option, expected in SAMPLED.items():
        recorder = NoisyIndices(model.backbone)
        config = GenerationConfig(sections=7, steps=1, positions=option)
        videos[option] = generate(model, cond, config, progress=False).latents
        assert recorder.close() == expected
    inside = slice(0, 1 + 9 * 4)  # the start latent and the 4 trained sections: bit for bit the same
    assert torch.equal(videos["shift"][:, :, inside], videos["absolute"][:, :, inside])
    assert torch.equal(videos["wrap"][:, :, inside], videos["absolute"][:, :, inside])
    past = slice(1 + 9 * 4, None)
    assert not torch.allclose(videos["shift"][:, :, past], videos["absolute"][:, :, past])
    # no option given: the model's own (mempack.json) default, "shift"
    recorder = NoisyIndices(model.backbone)
    generate(model, cond, GenerationConfig(sections=7, steps=1), progress=False)
    assert recorder.close() == SAMPLED["shift"]


def test_pipeline_argument_reaches_the_backbone(model, encoders):
    pipe = MemoryPackPipeline.from_model(model, encoders)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(sample_image(32, 32))
    for option in ("absolute", "wrap"):
        recorder = NoisyIndices(model.backbone)
        pipe(image, "a kite", num_frames=1 + 36 * 7, height=32, width=32, num_inference_steps=1,
             positions=option, output_type="latent")  # fmt: skip
        assert recorder.close() == SAMPLED[option]
    with pytest.raises(ValueError, match="positions must be one of"):
        pipe(image, "a kite", num_frames=37, height=32, width=32, positions="cap", output_type="latent")


def test_bench_quick_mode_writes_its_table(tmp_path, capsys):
    """The benchmark's plumbing (bench/long_positions.py --quick), not its science."""
    spec = importlib.util.spec_from_file_location("long_positions", ROOT / "bench" / "long_positions.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["long_positions"] = bench
    spec.loader.exec_module(bench)
    summary = bench.main(
        ["--quick", "--workers", "0", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "lp.json")]
    )
    assert summary["world"]["role"] == "report" and summary["trained_sections"] == 6
    options = summary["options"]
    assert set(options) == {"absolute", "shift", "wrap"}
    # inside the trained length the options give the same video: the same recall at L
    assert len({o["recall_1L"]["mean"] for o in options.values()}) == 1
    run = summary["runs"][0]
    curves = np.array([run[o]["curve"] for o in ("absolute", "shift", "wrap")])
    assert curves.shape == (3, 24) and np.allclose(curves[:, :6], curves[0, :6])
    assert "shift - absolute" in summary["paired"] and "positions" in capsys.readouterr().out

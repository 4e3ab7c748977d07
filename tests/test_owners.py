"""One owner per boundary file: `mempack.json` is written and read only through `MemoryPackConfig`, prep's
`summary.json` only through `mempack.schema.read_summary`; every user sees the same values."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from mempack.model.memorypack import CONFIG_NAME, MemoryPackConfig


def test_the_model_config_saves_and_loads_itself(tmp_path):
    config = MemoryPackConfig(preset="tiny", use_semantic_pack=False, rope="relative", frames_4x=8, window=5)
    assert config.save(tmp_path) == tmp_path / CONFIG_NAME
    assert MemoryPackConfig.saved_in(tmp_path) and not MemoryPackConfig.saved_in(tmp_path / "elsewhere")
    assert MemoryPackConfig.load(tmp_path) == config
    assert MemoryPackConfig.load(tmp_path).layout.window == 5


def test_a_config_with_a_key_this_version_does_not_know_is_refused(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**asdict(MemoryPackConfig()), "frames_8x": 4}))
    with pytest.raises(TypeError, match="frames_8x"):
        MemoryPackConfig.load(tmp_path)


def test_a_saved_model_reads_back_its_config_through_every_reader(tmp_path):
    """The model's export, the stage-2 planner and the loader's folder resolution see one config."""
    from mempack.model import MemoryPackTransformer
    from mempack.model.memorypack import pretrained_folders
    from mempack.train.config import TrainConfig
    from mempack.train.plan import _meta_model

    model = MemoryPackTransformer.from_preset("tiny", rope="relative", frames_4x=8)
    model.save_pretrained(tmp_path)
    assert MemoryPackConfig.load(tmp_path) == model.config
    assert pretrained_folders(tmp_path).saved_config == asdict(model.config)
    planned = _meta_model(TrainConfig(stage=2, init=str(tmp_path), preset="framepack-f1"))
    assert planned.config == model.config  # stage 2 keeps the export's choices, preset included


def test_prep_summary_has_one_reader_and_export_agrees_with_validation(tmp_path):
    from mempack.export import ExportError, encoders_of_prep
    from mempack.schema import data_encoders, read_summary

    assert read_summary(tmp_path) is None
    assert encoders_of_prep(tmp_path, "tiny").path is None  # no summary: the preset's random tiny set
    with pytest.raises(ExportError, match="summary.json"):
        encoders_of_prep(tmp_path, "framepack-f1")  # real weights must be named, never guessed
    summary = {"clips": 3, "config": {"preset": "tiny", "encoders": "/weights/enc", "encoder_seed": 7}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert read_summary(tmp_path) == summary
    spec = encoders_of_prep(tmp_path, "framepack-f1")
    assert (spec.preset, spec.path, spec.seed) == ("tiny", "/weights/enc", 7)
    assert data_encoders(tmp_path, "framepack-f1") == {"preset": "tiny", "path": "/weights/enc", "seed": 7}

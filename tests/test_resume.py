"""The resume rule is an explicit allow-list: settings that say how long or how a run is watched may change
on `--resume`, the ones that define what is trained may not, and every setting is in exactly one list."""

from __future__ import annotations

import dataclasses

import pytest

from mempack.train.checkpoint import (
    MAY_CHANGE_ON_RESUME,
    MUST_MATCH_ON_RESUME,
    ResumeMismatchError,
    check_or_write,
    config_digest,
)
from mempack.train.config import TrainConfig
from mempack.train.forcing import ForcingConfig


@pytest.fixture
def started(tmp_path):
    """A run that has started: its digest written (no Parquet files: the data digest is of an empty index)."""
    config = TrainConfig(stage=1, data=str(tmp_path / "data"), output=str(tmp_path / "run"))
    check_or_write(config, {}, tmp_path / "run", resume=False)
    return config, tmp_path / "run"


def test_every_setting_is_either_allowed_or_refused():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert MAY_CHANGE_ON_RESUME | MUST_MATCH_ON_RESUME == names
    assert not MAY_CHANGE_ON_RESUME & MUST_MATCH_ON_RESUME


def test_watching_and_length_settings_may_change(started):
    config, out = started
    watched = dataclasses.replace(
        config,
        progress_every=1,
        sample_every=5,
        sample_image="first.png",
        sample_prompt="a kite",
        sample_sections=3,
        sample_steps=2,
        register_model="mempack-f1",
        system_metrics=True,
        log_every=7,
        run_name="again",
        max_steps=400,
        epochs=2,
        checkpoint_every=3,
        cpus_per_worker=1.0,
        placement_strategy="SPREAD",
    )
    check_or_write(watched, {}, out, resume=True)  # no error: the same run, watched differently and longer


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 2e-5},
        {"seed": 1},
        {"preset": "framepack-f1"},
        {"zero_stage": 3},
        {"num_workers": 4},
        {"batch_size": 2},
        {"ema_decay": 0.999},
        {"forcing": ForcingConfig(mode="teacher")},
    ],
    ids=lambda change: next(iter(change)),
)
def test_run_defining_settings_must_match(started, change):
    config, out = started
    with pytest.raises(ResumeMismatchError, match=f"^--resume: {next(iter(change))} differ"):
        check_or_write(dataclasses.replace(config, **change), {}, out, resume=True)


def test_a_setting_in_neither_list_cannot_start_a_run():
    @dataclasses.dataclass
    class WithANewSetting(TrainConfig):
        new_knob: int = 0

    with pytest.raises(RuntimeError, match="new_knob"):
        config_digest(WithANewSetting())

"""The output tree has one owner (mempack/layout.py): every default path lies under one root, and a
changed root moves the whole tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from mempack import layout


def tree(root=layout.ROOT) -> dict[str, Path]:
    return {
        "prep": layout.prep_dir(root),
        "train": layout.train_dir(root),
        "stage1": layout.stage_dir(1, root),
        "stage2": layout.stage_dir(2, root),
        "infer": layout.infer_dir(root),
        "eval": layout.eval_dir(root),
        "mlflow": layout.mlflow_db(root),
    }


def test_every_default_of_every_stage_lies_under_the_one_root(tmp_path, monkeypatch):
    from data_prep.job import PrepConfig
    from mempack.inference import InferenceRequest
    from mempack.tracking import default_tracking_uri
    from mempack.train.config import TrainConfig

    defaults = {
        "prep output": PrepConfig().output,
        "train data": TrainConfig(stage=1).data.path,
        "stage 1 output": TrainConfig(stage=1).output,
        "stage 2 output": TrainConfig(stage=2).output,
        "infer out": InferenceRequest().out,
    }
    assert {k: Path(v).parts[0] for k, v in defaults.items()} == dict.fromkeys(defaults, "outputs")
    assert Path(defaults["prep output"]) == Path(defaults["train data"]) == layout.prep_dir()  # prep feeds training
    assert Path(defaults["stage 1 output"]).parent == Path(defaults["stage 2 output"]).parent == layout.train_dir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri in an earlier test sets it
    assert default_tracking_uri(tmp_path) == f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').resolve()}"
    assert all(p.parts[0] == "outputs" for p in tree().values())
    assert len(set(tree().values())) == len(tree())  # no two parts share a folder


def test_a_changed_root_moves_the_whole_tree(tmp_path):
    elsewhere = tmp_path / "runs" / "today"
    moved = tree(elsewhere)
    assert all(p.is_relative_to(elsewhere) for p in moved.values())
    assert {k: p.relative_to(elsewhere) for k, p in moved.items()} == {
        k: p.relative_to(layout.ROOT) for k, p in tree().items()
    }


def test_newest_export_prefers_stage_2_and_needs_a_finished_export(tmp_path):
    from mempack.model.memorypack import CONFIG_NAME

    train = layout.train_dir(tmp_path)
    assert layout.newest_export(train) is None
    for stage in (1, 2):
        (layout.stage_dir(stage, tmp_path) / layout.EXPORT_DIR).mkdir(parents=True)
    assert layout.newest_export(train) is None  # folders without the model config are no export
    (layout.stage_dir(1, tmp_path) / layout.EXPORT_DIR / CONFIG_NAME).write_text("{}")
    assert layout.newest_export(train) == layout.stage_dir(1, tmp_path) / "model"
    (layout.stage_dir(2, tmp_path) / layout.EXPORT_DIR / CONFIG_NAME).write_text("{}")
    assert layout.newest_export(train) == layout.stage_dir(2, tmp_path) / "model"


def test_only_stages_1_and_2_have_run_folders():
    with pytest.raises(ValueError, match="stage must be one of"):
        layout.stage_dir(3)

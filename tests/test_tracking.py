"""MLflow all the way: runs are linked (prep → training → eval), carry their source, keep artifacts beside
the store, end FAILED when their stage fails, and training's metrics survive a tracking server that goes away."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.train
from mlflow.tracking import MlflowClient

from mempack import tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating its schema costs seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def store(shared_store) -> str:
    return shared_store


def _make_store(uri: str) -> None:
    Path(uri.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)


def test_artifacts_land_beside_the_sqlite_store_not_in_the_working_folder(tmp_path, store, monkeypatch):
    _make_store(store)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "note.txt").write_text("hello")
    with tracking.tracked_run(store, "exp") as (client, run_id):
        client.log_artifact(run_id, str(tmp_path / "note.txt"))
    stored = list((Path(store.split(":///", 1)[1]).parent / "mlartifacts").rglob(f"{run_id}/**/note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    assert not (elsewhere / "mlruns").exists() and not any(elsewhere.iterdir())


def test_every_run_carries_its_git_commit_and_entry_point(store):
    _make_store(store)
    with tracking.tracked_run(store, "exp", entry_point="pipelines/x.py") as (client, run_id):
        pass
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.source.name"] == "pipelines/x.py" and tags["mlflow.source.type"] == "LOCAL"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI clones one): the exact commit, and whether it was dirty
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["mempack.git.dirty"] in ("true", "false")
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("error, status", [(ValueError("bad clip"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_stage_that_raises_ends_its_run_failed_and_says_why(store, error, status):
    _make_store(store)
    with pytest.raises(type(error)):
        with tracking.tracked_run(store, "exp") as (client, run_id):
            raise error
    run = client.get_run(run_id)
    assert run.info.status == status and run.info.end_time is not None
    assert run.data.tags["mempack.error"].startswith(type(error).__name__)


def test_model_references_resolve_to_the_training_run(store, tmp_path):
    _make_store(store)
    client, train_run = tracking.create_run(store, "train")
    client.set_terminated(train_run)
    export = tmp_path / "stage1" / "model"
    export.mkdir(parents=True)
    tracking.write_run_file(export.parent, train_run, store)  # what training leaves in its run folder
    client.create_registered_model("mempack-f1")
    version = client.create_model_version("mempack-f1", f"runs:/{train_run}/model", run_id=train_run)
    client.set_registered_model_alias("mempack-f1", "champion", version.version)
    for reference in (
        f"runs:/{train_run}/model",
        "models:/mempack-f1@champion",
        f"models:/mempack-f1/{version.version}",
        str(export),
        str(export.parent),
    ):
        assert tracking.resolve_model_run(reference, store) == train_run, reference
    assert tracking.resolve_model_run(tmp_path / "nowhere", store) is None


def _fake_prep_output(folder: Path, store: str) -> tuple[dict, str]:
    """A prep output's bookkeeping files as prep writes them (summary.json + the prep run's mlflow_run.json)."""
    folder.mkdir(parents=True)
    summary = {"schema_version": 3, "inputs": 2, "clips": 5, "wall_seconds": 1.5, "config": {"preset": "tiny"}}
    (folder / "summary.json").write_text(json.dumps(summary))
    client, prep_run = tracking.create_run(store, "prep")
    client.set_terminated(prep_run)
    tracking.write_run_file(folder, prep_run, store)
    return summary, prep_run


def test_training_input_records_the_prep_output_digest_and_run(store, tmp_path):
    _make_store(store)
    summary, prep_run = _fake_prep_output(tmp_path / "prep", store)
    with tracking.tracked_run(store, "train") as (client, run_id):
        digest = tracking.log_prep_input(client, run_id, tmp_path / "prep")
    run = client.get_run(run_id)
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == digest == tracking.prep_digest(summary)
    assert dataset_input.dataset.name == "prep:prep" and str(tmp_path / "prep") in dataset_input.dataset.source
    assert [t.value for t in dataset_input.tags if t.key == "mlflow.data.context"] == ["training"]
    assert run.data.tags["mempack.prep_run_id"] == prep_run and run.data.tags["mempack.data_digest"] == digest
    # the digest is of the data, not of the clock: a rerun that only took longer has the same digest
    assert tracking.prep_digest({**summary, "wall_seconds": 99.0}) == digest
    assert tracking.prep_digest({**summary, "clips": 6}) != digest


def test_evaluation_tags_the_model_run_and_a_failed_evaluation_ends_failed(store, tmp_path):
    _make_store(store)
    client, train_run = tracking.create_run(store, "train")
    client.set_terminated(train_run)
    not_a_video = tmp_path / "broken.mp4"
    not_a_video.write_text("not a video\n")
    result = subprocess.run(
        [
            sys.executable,
            "pipelines/evaluate.py",
            str(not_a_video),
            "--mlflow-uri",
            store,
            "--model",
            f"runs:/{train_run}/model",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    experiment = client.get_experiment_by_name("mempack-eval")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["mempack.model_run_id"] == train_run
    assert run.data.tags["mempack.model"] == f"runs:/{train_run}/model"


def test_prep_that_fails_ends_its_run_failed(store, tmp_path):
    from data_prep.job import PrepConfig
    from pipelines.prep import run_tracked

    _make_store(store)
    blocked = tmp_path / "a-file"
    blocked.write_text("the output cannot be a folder under a file")
    with pytest.raises(OSError):
        run_tracked([], PrepConfig(output=str(blocked / "prep")), store, "mempack-prep")
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("mempack-prep").experiment_id])
    assert run.info.status == "FAILED" and run.data.params["inputs"] == "0"
    assert run.data.tags["mlflow.source.name"] == "pipelines/prep.py"


@pytest.mark.slow
def test_training_that_fails_ends_failed_with_its_data_input_recorded(sample_prep, tmp_path, store):
    from mempack.train.config import (
        CheckpointConfig,
        DataConfig,
        DistributedConfig,
        ScheduleConfig,
        TrackingConfig,
        TrainConfig,
    )
    from mempack.train.trainer import run_training

    _make_store(store)
    prep_out = sample_prep[0]
    empty_weights = tmp_path / "weights"
    empty_weights.mkdir()  # exists (so setup passes) but holds no model: the workers fail to build it
    config = TrainConfig(
        stage=1,
        output=str(tmp_path / "run"),
        pretrained=str(empty_weights),
        data=DataConfig(path=str(prep_out)),
        schedule=ScheduleConfig(max_steps=1),
        distributed=DistributedConfig(num_workers=1),
        checkpoint=CheckpointConfig(max_failures=0),
        tracking=TrackingConfig(mlflow_uri=store, run_name="doomed"),
    )
    with pytest.raises(ray.train.TrainingFailedError):
        run_training(config)
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("mempack-train").experiment_id])
    assert run.info.status == "FAILED"
    summary = json.loads((prep_out / "summary.json").read_text())
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [tracking.prep_digest(summary)]
    assert "mlflow.source.git.commit" in run.data.tags or not (ROOT / ".git").exists()


# ---------------------------------------------------------------- an MLflow server that really goes away


@pytest.mark.slow
def test_metrics_survive_a_tracking_server_that_goes_away_and_comes_back(tmp_path, monkeypatch, caplog):
    from servers import start_mlflow_server, stop_group, wait_for

    from mempack.train.metrics import FAST_FAIL_ENV, MlflowRunLogger

    for key, value in FAST_FAIL_ENV.items():  # what the trainer gives its workers
        monkeypatch.setenv(key, value)
    backend, artifacts, log = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "server.log"
    server, url = start_mlflow_server(backend, artifacts, log)
    try:
        client, run_id = tracking.create_run(url, "outage")
        logger = MlflowRunLogger(
            url, run_id, retry_seconds=(0.5, 1.0), flush_timeout_s=60, spill_path=tmp_path / "unsent.jsonl"
        )
        logger.log({"loss": 1.0}, step=1)
        wait_for(lambda: logger.buffered == 0, 30, "the first metric sent")
        stop_group(server)  # the server goes away mid-run
        caplog.set_level(logging.WARNING, logger="mempack.train.metrics")
        slowest = 0.0
        for step in range(2, 12):  # training goes on: every log call returns at once
            start = time.perf_counter()
            logger.log({"loss": 1.0 / step}, step=step)
            slowest = max(slowest, time.perf_counter() - start)
        wait_for(lambda: logger.outages == 1, 60, "the outage to be noticed")
        assert slowest < 0.5 and logger.buffered > 0
        assert sum("MLflow unreachable" in r.message for r in caplog.records) == 1  # warned once, not per step
        server, _ = start_mlflow_server(backend, artifacts, log, port=int(url.rsplit(":", 1)[1]))  # it comes back
        wait_for(lambda: logger.buffered == 0, 60, "the kept metrics to be sent")
        logger.close()
        history = MlflowClient(url).get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, 12))  # nothing lost, nothing doubled
        assert any("reachable again" in r.message for r in caplog.records)
        assert not (tmp_path / "unsent.jsonl").exists() and logger.dropped == 0
    finally:
        stop_group(server)


def test_metrics_that_cannot_be_sent_are_spilled_to_a_file_and_replayable(tmp_path, store, monkeypatch):
    """No server at all until the end: close() gives up after its deadline and writes what it kept."""
    from conftest import free_port

    from mempack.train.metrics import FAST_FAIL_ENV, MlflowRunLogger, replay_spilled

    for key, value in FAST_FAIL_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    _make_store(store)
    client, run_id = tracking.create_run(store, "spill")
    spill = tmp_path / "unsent.jsonl"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    logger = MlflowRunLogger(dead, run_id, retry_seconds=(0.2,), flush_timeout_s=3, spill_path=spill, max_buffered=5)
    for step in range(8):
        logger.log({"loss": float(step)}, step=step)
    logger.close()
    rows = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4, 5, 6, 7] and logger.dropped == 3  # bounded buffer, counted
    assert replay_spilled(store, spill) == 5
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [3, 4, 5, 6, 7]

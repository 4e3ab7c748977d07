"""Shared fixtures: one local Ray per test session, never whatever cluster is running."""

from __future__ import annotations

import json
import os
import socket

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_prep(ray_local, tmp_path_factory, worker_id):
    """The built-in sample prepped once per test run: (output root, summary, config, sample folder, videos).

    One prep for all xdist workers (each would otherwise run its own: ~60 s of both cores): the first worker
    to need it preps into the run's common temp folder under a file lock, the others read what it wrote.
    The summary is the one on disk in every worker. Shared: tests must not change it (copy it first).
    `ray_local` stays a dependency: the tests that use this fixture also use the worker's Ray."""
    from filelock import FileLock

    from data_prep.job import PrepConfig, run_prep
    from data_prep.sources import load_inputs
    from mempack import layout
    from mempack.sample import SAMPLE_VIDEOS, make_sample

    # under xdist the base temp is <run>/popen-gwN, and <run> is this run's alone (never an earlier run's)
    shared = tmp_path_factory.getbasetemp().parent if worker_id != "master" else tmp_path_factory.mktemp("shared")
    folder, out = shared / "sample", shared / "sample_prep"
    config = PrepConfig(output=str(out))
    with FileLock(str(shared / "sample_prep.lock")):
        if not (out / layout.SUMMARY_FILE).is_file():
            make_sample(folder)
            run_prep(load_inputs(folder), config)
    summary = json.loads((out / layout.SUMMARY_FILE).read_text())
    return out, summary, config, folder, list(SAMPLE_VIDEOS)


@pytest.fixture(scope="session")
def uploaded_bytes():
    """Bytes in a local MLflow artifact store for a run: its own artifacts and its logged models', by file kind
    ("weights": safetensors/bin, "all")."""
    return _uploaded_bytes


def _uploaded_bytes(client, run_id: str) -> dict[str, int]:
    from pathlib import Path
    from urllib.parse import urlparse

    run = client.get_run(run_id)
    roots = [run.info.artifact_uri] + [
        m.artifact_location
        for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
    ]
    sizes = {"weights": 0, "all": 0}
    for root in roots:
        for f in Path(urlparse(root).path).rglob("*"):
            if f.is_file():
                sizes["all"] += f.stat().st_size
                sizes["weights"] += f.stat().st_size if f.suffix in (".safetensors", ".bin") else 0
    return sizes


# ------------------------------------------------------------------ shared tiny components (read-only)
TINY_MODEL_SEED = 1  # the weights of `tiny_export` (tests that compare against it build this seed)


@pytest.fixture(scope="session")
def encoders():
    """The tiny preset's seeded random encoders (the real classes at toy widths), built once per session.
    Shared: a test that changes them undoes it (monkeypatch, `remove_all_hooks`)."""
    from mempack.encoders import VideoEncoders

    return VideoEncoders.build("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A training run folder as training leaves it: `model/` is a complete pipeline export of the tiny
    weights (seed `TINY_MODEL_SEED`) with the tiny encoders (seed 0). Shared: tests must not change it."""
    from mempack import layout
    from mempack.export import EncoderSpec, export_pipeline
    from mempack.model import MemoryPackTransformer

    run = tmp_path_factory.mktemp("tiny_run")
    MemoryPackTransformer.from_preset("tiny", seed=TINY_MODEL_SEED).save_pretrained(run / "checkpoint")
    export_pipeline(run / "checkpoint", run / layout.EXPORT_DIR, EncoderSpec("tiny", None, 0))
    return run


# ------------------------------------------------------------------ scheduling under pytest-xdist
# `make test` runs two workers with --dist loadfile. xdist then hands out files by test count (its default
# "loadscope reorder"); SLOW_FIRST only orders the files inside that. Handing out the longest files first
# (--no-loadscope-reorder) was measured slower here: 1633 s against 1484 s of tests on 2 cores, the
# multi-process Ray/DeepSpeed files contending with each other (science guard 233 s against 61 s).
SLOW_FIRST = (
    "test_train.py",
    "test_cluster.py",
    "test_infer.py",
    "test_cluster_configs.py",
    "test_tracking.py",
    "test_plan.py",
    "test_train_scale.py",
    "test_science_guard.py",
    "test_shipped_commands.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: file order kept otherwise

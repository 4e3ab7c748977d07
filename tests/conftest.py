"""Shared fixtures: one local Ray per test session, never whatever cluster is running."""

from __future__ import annotations

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
def sample_prep(ray_local, tmp_path_factory):
    """The built-in sample prepped once per session: (output root, summary, config)."""
    from data_prep.job import PrepConfig, run_prep
    from mempack.sample import make_sample
    from data_prep.sources import load_inputs

    folder = tmp_path_factory.mktemp("sample")
    videos = make_sample(folder)
    out = tmp_path_factory.mktemp("prep")
    config = PrepConfig(output=str(out))
    summary = run_prep(load_inputs(folder), config)
    return out, summary, config, folder, videos

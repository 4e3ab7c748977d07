"""Training data at real size: one video is read from its own files and row groups, exactly as a full scan
reads it; the curriculum every worker follows (one progression, or the old cycle unchanged)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mempack.train.data import Bucket, curriculum, load_video, locate_videos, video_index

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("data_loading", ROOT / "bench" / "data_loading.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass (the flags) resolves its annotations through its module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A prep-shaped output of 54 videos of 1..18 clips, six shots per encoder batch, row groups of 16 rows:
    long videos span row groups and some files hold several videos."""
    root = tmp_path_factory.mktemp("prep")
    bench = _bench()
    bench.write_prep_output(root, lengths=18, resolutions=1, per_bucket=3, videos_per_file=6)
    return root, bench


def _holding(root: Path, video_id: str) -> dict[str, list[int]]:
    """Every file and row group that holds a row of the video, found by reading them all."""
    found = {}
    for path in sorted(p for table in ("clips", "videos") for p in (root / table).rglob("*.parquet")):
        parquet = pq.ParquetFile(path)
        groups = [
            g
            for g in range(parquet.num_row_groups)
            if video_id in parquet.read_row_group(g, columns=["video_id"]).column(0).to_pylist()
        ]
        if groups:
            found[str(path)] = groups
    return found


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a["video_id"] == b["video_id"]
    for key in a.keys() - {"video_id"}:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape and np.array_equal(a[key], b[key]), key


def test_reading_one_video_opens_only_the_files_that_hold_it_and_equals_the_full_scan(synthetic):
    root, bench = synthetic
    locations = locate_videos(root)
    all_files = len(list(root.rglob("*.parquet")))
    index = video_index(root)
    assert len(locations) == sum(len(v) for v in index.values()) == 54
    long = next(v for b, ids in index.items() if b.num_clips == 18 for v in ids)
    assert sum(len(g) for g in locations[long].clip_groups) >= 2  # 18 clips: at least two row groups of 16
    shared = [
        f
        for f in {f for w in locations.values() for f in w.clip_files}
        if sum(f in w.clip_files for w in locations.values()) > 1
    ]
    assert shared  # files that hold other videos' rows too
    sharing = next(v for v, w in locations.items() if shared[0] in w.clip_files)
    for video_id in (long, sharing, *(ids[0] for ids in list(index.values())[::6])):
        holding = _holding(root, video_id)
        fs, opened = bench.counting_filesystem()
        located = load_video(root, video_id, locations[video_id], filesystem=fs)
        assert sorted(opened) == sorted(holding), video_id  # its clip file(s) and video file, nothing else
        where = locations[video_id]
        assert {
            str(root / f): g
            for f, g in zip(where.clip_files + where.video_files, where.clip_groups + where.video_groups, strict=True)
        } == holding
        fs, opened = bench.counting_filesystem()
        scanned = load_video(root, video_id, filesystem=fs)
        assert len(set(opened)) == all_files  # the old read: every file of clips/ and videos/
        _assert_same(located, scanned)
        assert located["clips"].shape[0] == int(video_id.split(":")[1].split("x")[0])


def test_prep_writes_row_groups_of_the_contract_size_and_its_videos_read_alike(sample_prep):
    from mempack.schema import ROW_GROUP_ROWS

    root = Path(sample_prep[0])
    for path in root.glob("*/num_clips=*/*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        assert all(metadata.row_group(g).num_rows <= ROW_GROUP_ROWS for g in range(metadata.num_row_groups))
    locations = locate_videos(root)
    assert len(locations) == 4
    bench = _bench()
    for video_id, where in locations.items():
        fs, opened = bench.counting_filesystem()
        located = load_video(root, video_id, where, filesystem=fs)
        assert len(opened) == len(_holding(root, video_id)) == 2  # prep: one file per shot and table
        _assert_same(located, load_video(root, video_id))


INDEX = {Bucket(1, 48, 80): ["a"], Bucket(2, 48, 80): ["b", "c", "d"], Bucket(3, 80, 48): ["e"]}


def _old_order(index: dict, world: int, epochs: int) -> list[list[str]]:
    """What the per-bucket datasets fed rank 0 .. world-1 at each step: every epoch every bucket, short
    first, padded to the workers, row i to rank i % world."""
    order = []
    for _ in range(epochs):
        for ids in index.values():
            padded = [ids[i % len(ids)] for i in range(-(-len(ids) // world) * world)]
            order += [padded[k : k + world] for k in range(0, len(padded), world)]
    return order


def test_cycle_is_the_old_curriculum_unchanged():
    steps = curriculum(INDEX, max_steps=8, epochs=1000, group=2, kind="cycle")
    assert [list(s.videos) for s in steps] == _old_order(INDEX, 2, 2)[:8]
    assert [s.bucket for s in steps] == [0, 1, 1, 2, 0, 1, 1, 2]


def test_progression_runs_every_bucket_s_passes_before_the_next_and_ends_on_the_longest():
    steps = curriculum(INDEX, max_steps=100, epochs=3, group=2)
    assert [s.bucket for s in steps] == [0] * 3 + [1] * 6 + [2] * 3  # 3 passes each: 1 + 2 + 1 steps a pass
    assert [list(s.videos) for s in steps[3:5]] == [["b", "c"], ["d", "b"]]  # a pass: its videos, padded
    assert [list(s.videos) for s in steps[5:7]] == [["b", "c"], ["d", "b"]]  # the next pass starts again
    # a step budget of 6 (1.5 passes): shares 1.5, 3 and 1.5 steps, rounded by largest remainder
    assert [s.bucket for s in curriculum(INDEX, max_steps=6, epochs=1000, group=2)] == [0, 0, 1, 1, 1, 2]
    # every bucket's steps are consecutive and ascending: one progression
    buckets = [s.bucket for s in curriculum(INDEX, max_steps=37, epochs=1000, group=1)]
    assert buckets == sorted(buckets) and len(buckets) == 37 and set(buckets) == {0, 1, 2}


def test_in_process_training_follows_the_same_curriculum():
    import torch

    from mempack.train.in_process import _curriculum

    videos = [(torch.zeros(n, 1), None) for n in (3, 1, 2, 2, 1)]
    order = _curriculum(videos, 10)
    assert [videos[i][0].shape[0] for i in order] == [1] * 4 + [2] * 4 + [3] * 2
    assert order[:4] == [1, 4, 1, 4] and order[4:8] == [2, 3, 2, 3]


def test_each_worker_streams_its_share_of_every_step_in_order(synthetic, ray_local):
    """What the Ray loop iterates: rank r's videos of each step from `start` on, loaded, in step order."""
    from mempack.train.data import worker_videos

    root, _ = synthetic
    index, locations = video_index(root), locate_videos(root)
    steps = curriculum(index, max_steps=12, epochs=1000, group=2)
    for rank in (0, 1):
        rows = list(worker_videos(root, steps, rank, 2, locations, start=3).iter_rows())
        assert [r["step"] for r in rows] == list(range(3, 12))
        assert [r["video_id"] for r in rows] == [s.videos[rank] for s in steps[3:]]
        assert [r["clips"].shape[0] for r in rows] == [list(index)[s.bucket].num_clips for s in steps[3:]]


def test_a_row_out_of_step_order_stops_the_worker():
    from mempack.train.loop import _steps

    rows = [{"step": 4}, {"step": 4}, {"step": 5}, {"step": 5}]
    assert [(step, len(batch)) for step, batch in _steps(rows, 2, start=4)] == [(4, 2), (5, 2)]
    with pytest.raises(RuntimeError, match="row 2 is of step 6, expected 5"):
        list(_steps([{"step": 4}, {"step": 4}, {"step": 6}], 2, start=4))

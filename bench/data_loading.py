"""Training data loading at real size: files opened and time per video, and the start-up of 500 buckets.

A prep-shaped output is synthesised with the real schema writer (`mempack.schema.to_row_table`, prep's
row-group size, prep's layout: one file per encoder batch per `num_clips` folder, `table` and `num_clips`
as hive folders) at a tiny latent size: the I/O pattern is what is measured, not the bytes. Default:
clip counts 1..50 × 10 resolutions × 4 videos = 500 buckets, 2,000 videos, 51,000 clips.

- per video: `load_video` by a full scan (before: a `video_id` filter over every file of clips/ and
  videos/) against `load_video` with the video's location (after: its files, its row groups), through a
  pyarrow filesystem that counts the files opened; the two results are compared array by array;
- start-up with 500 buckets: before, one Ray Dataset per bucket (`from_items` + `map`, as the old
  `bucket_datasets`), each executed on its own (time to its first row, measured on a sample of buckets
  and scaled to all); after, `locate_videos` (driver, once), `curriculum` and `worker_videos` (one
  dataset per worker) to the first row.

Prints a table and writes bench/results/data_loading.json.

    python bench/data_loading.py [--lengths 50] [--resolutions 10] [--per-bucket 4] [--scan-videos 3]
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

RESULTS = Path(__file__).resolve().parent / "results"
LATENT = (16, 9, 2, 2)  # tiny: the layout of real clip rows, not their size


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    lengths: int = 50  # clip counts 1..N
    resolutions: int = 10
    per_bucket: int = 4  # videos per (clips, resolution) bucket
    videos_per_file: int = 1  # shots per encoder batch (prep: 1)
    scan_videos: int = 3  # videos read by full scan (slow)
    located_videos: int = 200
    sample_buckets: int = 5  # old per-bucket datasets executed
    workers: int = 8  # workers the curriculum is planned for
    steps: int = 20_000
    json: str = str(RESULTS / "data_loading.json")


class _CountingLocal(LocalFileSystem):
    """fsspec's local filesystem, recording every file opened."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []

    def _open(self, path, mode="rb", **kwargs):
        self.opened.append(str(path))
        return super()._open(path, mode=mode, **kwargs)


def counting_filesystem() -> tuple[pafs.PyFileSystem, list[str]]:
    """A pyarrow filesystem over the local one and the list it appends each opened path to."""
    local = _CountingLocal(skip_instance_cache=True)
    return pafs.PyFileSystem(pafs.FSSpecHandler(local)), local.opened


def write_prep_output(
    root: Path, lengths: int, resolutions: int, per_bucket: int, videos_per_file: int = 1, seed: int = 0
) -> dict:
    """clips/ and videos/ as prep writes them, for videos of 1..`lengths` clips at `resolutions` sizes,
    `per_bucket` videos each; `videos_per_file` shots per encoder batch (prep's encode_batch_size)."""
    from mempack.schema import ROW_GROUP_ROWS, SCHEMA_VERSION, pack_tensor, to_row_table

    rng = np.random.default_rng(seed)
    shots = [
        (n, 48 + 16 * r, 80, k) for n in range(1, lengths + 1) for r in range(resolutions) for k in range(per_bucket)
    ]
    random.Random(seed).shuffle(shots)  # prep's encoder batches arrive in no particular order
    condition = {
        name: rng.standard_normal(shape).astype(np.float16)
        for name, shape in (
            ("prompt_embeds", (16, 32)),
            ("pooled_prompt_embeds", (32,)),
            ("image_embeds", (16, 32)),
            ("image_latent", (16, 1, 2, 2)),
        )
    }
    files = clips = 0
    for batch_index in range(0, len(shots), videos_per_file):
        rows = {"clips": {}, "videos": {}}
        for n, h, w, k in shots[batch_index : batch_index + videos_per_file]:
            vid = f"synthetic:{n}x{h}x{w}:{k}"
            shot = dict(
                schema_version=SCHEMA_VERSION,
                input_id=vid,
                video_id=vid,
                source="synthetic",
                source_path=f"/data/{vid}.mp4",
                shot_index=0,
                num_clips=n,
                fps=30.0,
                source_fps=30.0,
                height=h,
                width=w,
                caption="a synthetic shot",
                dynamism=1.0,
            )
            rows["clips"].setdefault(n, []).extend(
                {
                    **shot,
                    "clip_index": s,
                    "num_frames": 36,
                    "start_frame": 1 + 36 * s,
                    "latent_dtype": "float16",
                    **pack_tensor("latents", rng.standard_normal(LATENT)),
                }
                for s in range(n)
            )
            rows["videos"].setdefault(n, []).append(
                {
                    **shot,
                    "start_frame": 0,
                    "num_frames": 1 + 36 * n,
                    **pack_tensor("prompt_mask", np.ones(16)),
                    **{name: v for name, value in condition.items() for name, v in pack_tensor(name, value).items()},
                }
            )
        for table, by_clips in rows.items():
            for n, table_rows in by_clips.items():
                folder = root / table / f"num_clips={n}"
                folder.mkdir(parents=True, exist_ok=True)
                data = to_row_table(table_rows).drop_columns(["table", "num_clips"])  # Ray writes them as folders
                pq.write_table(data, folder / f"batch{batch_index:06d}-0.parquet", row_group_size=ROW_GROUP_ROWS)
                files += 1
                clips += len(table_rows) if table == "clips" else 0
    return {
        "videos": len(shots),
        "clips": clips,
        "files": files,
        "buckets": lengths * resolutions,
        "videos_per_file": videos_per_file,
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) and np.asarray(a[k]).dtype == np.asarray(b[k]).dtype for k in a if k != "video_id"
    )


def per_video(root: Path, ids: list[str], scan_videos: int) -> dict:
    """Files opened and seconds per video, full scan vs located read, on the same videos."""
    from mempack.train.data import load_video, locate_videos

    began = time.perf_counter()
    locations = locate_videos(root)
    locate_s = time.perf_counter() - began
    rows = {}
    for mode, sample in (("scan", ids[:scan_videos]), ("located", ids)):
        fs, opened = counting_filesystem()
        seconds, files, loaded = [], [], {}
        for vid in sample:
            before, began = len(opened), time.perf_counter()
            loaded[vid] = load_video(root, vid, locations[vid] if mode == "located" else None, filesystem=fs)
            seconds.append(time.perf_counter() - began)
            files.append(len(opened) - before)
        rows[mode] = {
            "videos": len(sample),
            "files_per_video": statistics.mean(files),
            "ms_per_video": 1000 * statistics.median(seconds),
            "loaded": loaded,
        }
    equal = all(_same(rows["scan"]["loaded"][v], rows["located"]["loaded"][v]) for v in rows["scan"]["loaded"])
    for r in rows.values():
        del r["loaded"]
    return {
        **rows,
        "identical": equal,
        "locate_videos_s": locate_s,
        "files_ratio": rows["scan"]["files_per_video"] / rows["located"]["files_per_video"],
        "time_ratio": rows["scan"]["ms_per_video"] / rows["located"]["ms_per_video"],
    }


def _first_row_s(dataset) -> float:
    """Seconds to execute a dataset up to its first row (take(1) stops it there: nothing runs on)."""
    began = time.perf_counter()
    dataset.take(1)
    return time.perf_counter() - began


def _warm(row: dict) -> dict:
    import mempack.train.data  # noqa: F401

    return row


def startup(root: Path, sample_buckets: int, workers: int, steps: int) -> dict:
    """Seconds from the prep output to a worker's first video: one dataset per bucket vs one per worker."""
    import ray

    from mempack.train.data import curriculum, load_video, locate_videos, video_index, worker_videos

    index = video_index(root)
    # warm Ray's worker processes (each imports mempack and torch once) so neither design pays for it
    ray.data.range(8, override_num_blocks=8).map(_warm).take_all()
    began = time.perf_counter()
    old = {}
    for bucket, ids in index.items():  # the old bucket_datasets: one dataset per bucket, padded to the workers
        padded = [ids[i % len(ids)] for i in range(-(-len(ids) // workers) * workers)]
        items = [{"video_id": v, "order": i} for i, v in enumerate(padded)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        old[bucket] = ds.map(lambda r, root=str(root): {**load_video(root, r["video_id"]), "order": r["order"]})
    build_s = time.perf_counter() - began
    sample = list(old)[:: max(1, len(old) // sample_buckets)][:sample_buckets]
    first = [_first_row_s(old[b]) for b in sample]
    before = {
        "datasets": len(old),
        "build_s": build_s,
        "first_row_s_per_bucket": statistics.mean(first),
        "sampled_buckets": len(sample),
        "startup_s": build_s + statistics.mean(first),
        "bucket_starts_per_epoch_s": len(old) * statistics.mean(first),
    }

    began = time.perf_counter()
    locations = locate_videos(root)
    located = time.perf_counter()
    plan = curriculum(index, steps, 1000, workers)
    planned = time.perf_counter()
    dataset = worker_videos(root, plan, 0, workers, locations)
    built = time.perf_counter()
    first_row = _first_row_s(dataset)
    after = {
        "datasets": 1,
        "locate_videos_s": located - began,
        "curriculum_s": planned - located,
        "build_s": built - planned,
        "first_row_s": first_row,
        "startup_s": built - began + first_row,
        "steps": len(plan),
    }
    return {"buckets": len(index), "workers": workers, "before": before, "after": after}


def main(argv: list[str] | None = None) -> dict:
    from mempack.config import parse_config

    args = parse_config(Options, argv, __doc__.splitlines()[0])
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "prep"
        began = time.perf_counter()
        data = write_prep_output(root, args.lengths, args.resolutions, args.per_bucket, args.videos_per_file)
        data["write_s"] = time.perf_counter() - began
        ids = sorted(
            v
            for vs in __import__("mempack.train.data", fromlist=["video_index"]).video_index(root).values()
            for v in vs
        )
        random.Random(1).shuffle(ids)
        reads = per_video(root, ids[: args.located_videos], args.scan_videos)
        if not ray.is_initialized():
            os.environ.pop("RAY_ADDRESS", None)  # a local Ray of our own, never a running cluster
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        start = startup(root, args.sample_buckets, args.workers, args.steps)
    result = {"data": data, "per_video": reads, "startup": start}
    print(
        f"prep-shaped output: {data['clips']:,} clips, {data['videos']:,} videos, {data['files']:,} files, "
        f"{data['buckets']} buckets"
    )
    print(f"{'read one video':<24}{'videos':>8}{'files opened':>14}{'ms / video':>12}")
    for mode in ("scan", "located"):
        r = reads[mode]
        print(f"{mode:<24}{r['videos']:>8}{r['files_per_video']:>14.1f}{r['ms_per_video']:>12.1f}")
    print(
        f"ratio scan / located: files {reads['files_ratio']:.0f}x, time {reads['time_ratio']:.0f}x; "
        f"identical: {reads['identical']}; locate_videos once: {reads['locate_videos_s']:.2f} s"
    )
    b, a = start["before"], start["after"]
    print(
        f"start-up, {start['buckets']} buckets: before {b['startup_s']:.1f} s to the first video "
        f"({b['datasets']} datasets built in {b['build_s']:.1f} s, {b['first_row_s_per_bucket']:.2f} s to the first "
        f"row of each bucket = {b['bucket_starts_per_epoch_s']:.0f} s per epoch); after {a['startup_s']:.1f} s "
        f"(locate {a['locate_videos_s']:.2f} s, curriculum of {a['steps']:,} steps {a['curriculum_s']:.2f} s, "
        f"dataset {a['build_s']:.2f} s, first row {a['first_row_s']:.2f} s)"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

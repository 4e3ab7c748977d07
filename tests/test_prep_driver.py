"""The driver never loads tensor columns: validating, indexing and summarising a prep output of 50,000
clip rows grows its RSS by far less than the latents it holds (issue 12 §3: <= 200 MB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mempack.schema import CLIP_COLUMNS, ROW_SCHEMA, SCHEMA_VERSION, TENSOR_DTYPES, VIDEO_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CLIPS, PER_VIDEO, TENSOR_BYTES = 50_000, 5, 8192  # 50,000 x 8 KB = 410 MB of latents if anyone loads them

MEASURE = r"""
import json, sys
import pyarrow.dataset  # imported before the baseline: only the reading is measured
from data_prep.decode import peak_rss_bytes as peak  # VmHWM: ru_maxrss would carry pytest's own peak over exec
from data_prep.job import PrepConfig, summarise
from data_prep.sources import VideoInput
from mempack.train.data import check_dataset, video_index
from pathlib import Path

root = Path(sys.argv[1])
inputs = [VideoInput("folder", f"/raw/v{i}.mp4", f"v{i}") for i in range(int(sys.argv[2]))]
base = peak()
index = check_dataset(root)
index = video_index(root)
summary = summarise(root, inputs, PrepConfig(), 0.0)
small = peak()
import pyarrow.dataset as pads
latents = pads.dataset(root / "clips", format="parquet", partitioning="hive").to_table(columns=["latents"])
print(json.dumps({"videos": sum(len(v) for v in index.values()), "clips": summary["clips"],
                  "grew": small - base, "control": peak() - small}))
"""


def small_value(table: str, name: str, i: int, video: int):
    return {
        "schema_version": SCHEMA_VERSION,
        "input_id": f"folder:v{video}",
        "video_id": f"folder:v{video}:shot000",
        "source": "folder",
        "source_path": f"/raw/v{video}.mp4",
        "shot_index": 0,
        "clip_index": i % PER_VIDEO,
        "start_frame": 0,
        "num_frames": 37,
        "fps": 30.0,
        "source_fps": 30.0,
        "height": 64,
        "width": 64,
        "caption": "c",
        "dynamism": 1.0,
        "latent_dtype": "float16",
    }[name]


def write_table(folder: Path, columns: list[str], rows: range, video_of, chunk: int = 5000) -> None:
    """Parquet files of `columns` (num_clips is the hive folder, not a column); tensor columns hold
    TENSOR_BYTES of zeros per row (tiny on disk, full size once read)."""
    folder.mkdir(parents=True)
    blob = bytes(TENSOR_BYTES)
    for n, start in enumerate(range(rows.start, rows.stop, chunk)):
        ids = range(start, min(start + chunk, rows.stop))
        arrays = {}
        for name in columns:
            if name == "num_clips":
                continue
            kind = ROW_SCHEMA.field(name).type
            if name in TENSOR_DTYPES:
                arrays[name] = pa.array([blob] * len(ids), pa.binary())
            elif name.endswith("_shape"):
                arrays[name] = pa.array([[TENSOR_BYTES // TENSOR_DTYPES[name[:-6]].itemsize]] * len(ids), kind)
            else:
                arrays[name] = pa.array([small_value("", name, i, video_of(i)) for i in ids], kind)
        pq.write_table(pa.table(arrays), folder / f"part-{n}.parquet", compression="zstd")


def test_validating_and_indexing_50k_clips_keeps_the_driver_small(tmp_path):
    videos = CLIPS // PER_VIDEO
    write_table(tmp_path / "clips" / f"num_clips={PER_VIDEO}", CLIP_COLUMNS, range(CLIPS), lambda i: i // PER_VIDEO)
    write_table(tmp_path / "videos" / f"num_clips={PER_VIDEO}", VIDEO_COLUMNS, range(videos), lambda i: i)
    assert sum(f.stat().st_size for f in tmp_path.rglob("*.parquet")) < 50e6  # zeros compress on disk
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path), str(videos)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["videos"] == videos and measured["clips"] == CLIPS
    assert measured["grew"] <= 200e6, measured
    # the control: loading the one tensor column the driver must never read costs what it holds
    assert measured["control"] >= 0.9 * CLIPS * TENSOR_BYTES, measured
    print(
        f"driver RSS grew {measured['grew'] / 1e6:.0f} MB for {CLIPS} clips "
        f"(reading the latents column: +{measured['control'] / 1e6:.0f} MB)"
    )

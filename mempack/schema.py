"""The Parquet contract between prep and training, and pure-pyarrow readers for it.

Layout of a prep output root:
  clips/num_clips=K/*.parquet   one row per clip (= model section; a shot's clips are contiguous)
  videos/num_clips=K/*.parquet  one row per training video (= shot): prompt, image embeddings, start latent
  rejects/*.parquet             one row per rejected input or shot, its own columns only (REJECT_COLUMNS):
                                input_id, source_path, stage, reason, score
  warnings/*.parquet            one row per kept input that decoded only partly (WARNING_COLUMNS):
                                input_id, source_path, stage, reason (e.g. "truncated: ...")
  summary.json                  counts (accepted + rejected = inputs), buckets, rejects per reason, config

`input_id` (`source:source_id`, unique per input item) is on every clip, reject and warning row.

Version 3, FramePack-F1's latent contract with inference's start latent (version 2 stored the stream's
latent 0 as `image_latent`; version 1 encoded every 33-frame clip on its own at 8 fps):
- a training video is ONE causal VAE stream of 1 + 36·n frames at the one clock (30 fps, mempack.presets),
  at one resolution bucket (`height` × `width`, the same for its clips and its video row);
- `image_latent` is frame 0 encoded ALONE (a one-frame VAE call), exactly what inference computes from the
  image it is given; `image_embeds` is SigLIP of that frame. It is not the stream's latent 0, which the
  VAE's GroupNorm makes depend on frames 1–16 (data_prep/encode.py says by how much);
- clip s (`clip_index`) holds latents 1 + 9s … 9 + 9s of the stream, [C, 9, height/8, width/8];
  `start_frame` is the source frame of its first pixel frame, `fps` the clock, `source_fps` the file's;
- the video row's `num_frames` is 1 + 36·n and `num_clips` is n. A batch never mixes shapes: training
  groups videos by (num_clips, height, width).

Files and row groups: prep writes one file per encoder batch per `num_clips` folder (a video's rows are in
one file), in row groups of at most ROW_GROUP_ROWS rows, so training can read one video by its row groups
alone (mempack.train.data.locate_videos / load_video) instead of filtering the whole dataset.

Tensors are stored as raw little-endian bytes plus a shape column (`<name>` + `<name>_shape`), with
the dtype fixed per column (`TENSOR_DTYPES`). This keeps float16 exact (Ray Data silently pickles
bfloat16 tensor columns), lets clips, videos and rejects share one Arrow schema inside one streaming
write, and lets training read the data with pyarrow alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from mempack import layout

SCHEMA_VERSION = 3

TENSOR_DTYPES: dict[str, np.dtype] = {
    "frames": np.dtype(np.uint8),
    "latents": np.dtype(np.float16),
    "prompt_embeds": np.dtype(np.float16),
    "prompt_mask": np.dtype(np.int32),
    "pooled_prompt_embeds": np.dtype(np.float16),
    "image_embeds": np.dtype(np.float16),
    "image_latent": np.dtype(np.float16),
}

# Rows per Parquet row group, the unit a reader fetches. At FramePack-F1 size a clip row holds 16 × 9 ×
# 60 × 104 fp16 latents (1.8 MB at 480×832) and a video row ~4 MB of prompt and image embeddings, so a group
# is ~30 MB of clips (a minute-long video, 50 clips ≈ 90 MB, spans 3-4 groups) or ~60 MB of video rows:
# big enough for sequential reads, small enough that reading one video fetches little beyond its own rows.
ROW_GROUP_ROWS = 16

_SCALARS = [
    ("table", pa.string()),
    ("schema_version", pa.int32()),
    ("input_id", pa.string()),
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("source_path", pa.string()),
    ("shot_index", pa.int32()),
    ("clip_index", pa.int32()),
    ("num_clips", pa.int32()),
    ("start_frame", pa.int64()),
    ("num_frames", pa.int32()),
    ("fps", pa.float32()),
    ("source_fps", pa.float32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("caption", pa.string()),
    ("dynamism", pa.float32()),
    ("latent_dtype", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("score", pa.float64()),
]
# `frames` (a shot's stream, never written) may pass 2 GiB for a minute of 480p: 64-bit offsets for it
ROW_SCHEMA = pa.schema(
    _SCALARS
    + [
        f
        for name in TENSOR_DTYPES
        for f in (
            (name, pa.large_binary() if name == "frames" else pa.binary()),
            (f"{name}_shape", pa.list_(pa.int32())),
        )
    ]
)

CLIP_COLUMNS = [
    "schema_version",
    "input_id",
    "video_id",
    "source",
    "source_path",
    "shot_index",
    "clip_index",
    "num_clips",
    "start_frame",
    "num_frames",
    "fps",
    "source_fps",
    "height",
    "width",
    "caption",
    "dynamism",
    "latents",
    "latents_shape",
    "latent_dtype",
]
VIDEO_INDEX_COLUMNS = ["schema_version", "video_id", "num_clips", "height", "width"]  # no tensors: the driver's
VIDEO_COLUMNS = VIDEO_INDEX_COLUMNS + [
    "source_path",
    "start_frame",
    "num_frames",
    "fps",
    "source_fps",
    "caption",
    "prompt_embeds",
    "prompt_embeds_shape",
    "prompt_mask",
    "prompt_mask_shape",
    "pooled_prompt_embeds",
    "pooled_prompt_embeds_shape",
    "image_embeds",
    "image_embeds_shape",
    "image_latent",
    "image_latent_shape",
]
REJECT_COLUMNS = ["input_id", "source_path", "stage", "reason", "score"]
WARNING_COLUMNS = ["input_id", "source_path", "stage", "reason"]
OWN_COLUMNS = {"rejects": REJECT_COLUMNS, "warnings": WARNING_COLUMNS}


def own_schema(table: str) -> pa.Schema:
    """The schema of a small table (rejects, warnings): its own columns, not the shared row schema."""
    return pa.schema([ROW_SCHEMA.field(c) for c in OWN_COLUMNS[table]])


class SchemaVersionError(ValueError):
    """Data written by another schema version than this code reads."""


class DataContractError(SchemaVersionError):
    """Columns or tensor shapes that break the contract (a truncated, hand-edited or foreign file)."""


def check_columns(root: str | Path, table: str, columns: list[str]) -> None:
    """Every required column is in the table's Parquet schema (read from file footers, not data)."""
    path = Path(root) / table
    names = set(pads.dataset(path, format="parquet", partitioning="hive").schema.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataContractError(
            f"{path} lacks column(s) {', '.join(missing)}: not a complete mempack prep output; re-run prep"
        )


def unpack_checked(name: str, data: bytes | None, shape) -> np.ndarray:
    """`unpack_tensor`, with one clear error for a missing value or bytes that do not fill the shape."""
    if data is None or shape is None:
        raise DataContractError(f"column {name} is empty in a row that needs it")
    expected = int(np.prod([int(s) for s in shape])) * TENSOR_DTYPES[name].itemsize
    if len(data) != expected:
        raise DataContractError(
            f"column {name}: {len(data)} bytes do not hold shape {list(shape)} "
            f"of {TENSOR_DTYPES[name]} ({expected} bytes)"
        )
    return unpack_tensor(name, data, shape)


def pack_tensor(name: str, array) -> dict:
    """{name: bytes, name_shape: [..]} in the column's fixed dtype."""
    arr = np.ascontiguousarray(np.asarray(array), dtype=TENSOR_DTYPES[name])
    return {name: arr.tobytes(), f"{name}_shape": list(arr.shape)}


def unpack_tensor(name: str, data: bytes, shape) -> np.ndarray:
    """Inverse of `pack_tensor`."""
    return np.frombuffer(data, dtype=TENSOR_DTYPES[name]).reshape([int(s) for s in shape])


def to_row_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with any subset of the columns) → a table of exactly ROW_SCHEMA."""
    return pa.Table.from_pylist([{name: row.get(name) for name in ROW_SCHEMA.names} for row in rows], ROW_SCHEMA)


def _read(root: str | Path, table: str, columns: list[str], hive: bool = False) -> pa.Table:
    """The listed columns only (Parquet reads nothing else: a summary never loads a tensor column)."""
    path = Path(root) / table
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        raise FileNotFoundError(f"no {table} Parquet under {Path(root)} (run pipelines/prep.py first)")
    dataset = pads.dataset(path, format="parquet", partitioning="hive" if hive else None)
    names = set(dataset.schema.names)
    if "schema_version" in columns and "schema_version" not in names:
        raise SchemaVersionError(f"{path} has no schema_version column: not written by mempack prep")
    if "schema_version" in columns:  # the version first, from its own column: an old layout may lack others
        check_version(path, dataset.to_table(columns=["schema_version"]).column("schema_version").to_pylist())
    return dataset.to_table(columns=[c for c in columns if c in names])


def check_version(where: str | Path, versions) -> None:
    """One line for data another schema version wrote, saying to re-run prep."""
    found = set(versions)
    if found and found != {SCHEMA_VERSION}:
        raise SchemaVersionError(
            f"{where} holds prep output of schema_version {sorted(found, key=str)}, this mempack reads version "
            f"{SCHEMA_VERSION} (one causal VAE stream per video at 30 fps, resolution buckets, the start latent "
            "encoded from the first frame alone): "
            "re-run pipelines/prep.py into a new output"
        )


def read_clips(root: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All clip rows (all CLIP_COLUMNS, or just `columns` plus schema_version), sorted by (video_id, clip_index)
    when those columns are read."""
    wanted = CLIP_COLUMNS if columns is None else list(dict.fromkeys(["schema_version", *columns]))
    table = _read(root, "clips", wanted, hive=True)
    keys = [(k, "ascending") for k in ("video_id", "clip_index") if k in table.column_names]
    return table.sort_by(keys) if keys else table


def read_videos(root: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One row per training video (all VIDEO_COLUMNS, or just `columns` plus schema_version)."""
    wanted = VIDEO_COLUMNS if columns is None else list(dict.fromkeys(["schema_version", *columns]))
    return _read(root, "videos", wanted, hive=True)


def _read_own(root: str | Path, table: str) -> pa.Table:
    try:
        return _read(root, table, OWN_COLUMNS[table])
    except FileNotFoundError:
        return own_schema(table).empty_table()


def read_video_index(root: str | Path) -> pa.Table:
    """One row per training video, its small columns only (what the driver needs to group and shard)."""
    return _read(root, "videos", VIDEO_INDEX_COLUMNS, hive=True)


def read_rejects(root: str | Path) -> pa.Table:
    """Rejected inputs and shots with their stage and reason (empty table if nothing was rejected)."""
    return _read_own(root, "rejects")


def read_warnings(root: str | Path) -> pa.Table:
    """Kept inputs that decoded only partly, with where and why they stopped (empty if none)."""
    return _read_own(root, "warnings")


# What prep's summary.json says about the data (its one reader).


def summary_path(data: str | Path) -> Path:
    """Where a prep output keeps its summary (counts, buckets, the prep config)."""
    return Path(data) / layout.SUMMARY_FILE


def read_summary(data: str | Path) -> dict | None:
    """Prep's summary of the output folder `data`; None when it has none (data not made by prep)."""
    path = summary_path(data)
    return json.loads(path.read_text()) if path.is_file() else None


def _prep_config(data: str | Path) -> dict:
    return (read_summary(data) or {}).get("config", {})


def data_encoders(data: str | Path, preset: str) -> dict:
    """The encoders that made the training data ({"preset", "path", "seed"}): what inference and the
    validation samples must build (read from the prep summary; the preset's random set without one)."""
    prep = _prep_config(data)
    if not prep:
        return {"preset": preset, "path": None, "seed": 0}
    return {"preset": prep.get("preset", preset), "path": prep.get("encoders"), "seed": prep.get("encoder_seed", 0)}


def data_clip_settings(data: str | Path, preset: str = "tiny") -> dict:
    """Height, width and fps of the training videos (validation samples match them): the prep output's
    most common resolution bucket (the preset's default bucket without a summary), at the one clock."""
    from mempack.presets import get_preset

    summary = read_summary(data) or {}
    clock = get_preset(summary.get("config", {}).get("preset", preset))
    buckets = summary.get("resolution_buckets") or {}
    height, width = (int(v) for v in max(buckets, key=buckets.get).split("x")) if buckets else clock.default_bucket
    return {"height": height, "width": width, "fps": clock.fps}

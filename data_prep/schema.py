"""The Parquet contract between prep and training, and pure-pyarrow readers for it.

Layout of a prep output root:
  clips/num_clips=K/*.parquet   one row per clip (a shot's clips are contiguous sections)
  videos/num_clips=K/*.parquet  one row per training video (= shot): prompt, image embeddings, start latent
  rejects/*.parquet             one row per rejected input or shot, its own columns only (REJECT_COLUMNS):
                                input_id, source_path, stage, reason, score
  warnings/*.parquet            one row per kept input that decoded only partly (WARNING_COLUMNS):
                                input_id, source_path, stage, reason (e.g. "truncated: ...")
  summary.json                  counts (accepted + rejected = inputs), buckets, rejects per reason, config

`input_id` (`source:source_id`, unique per input item) is on every clip, reject and warning row.

Tensors are stored as raw little-endian bytes plus a shape column (`<name>` + `<name>_shape`), with
the dtype fixed per column (`TENSOR_DTYPES`). This keeps float16 exact (Ray Data silently pickles
bfloat16 tensor columns), lets clips, videos and rejects share one Arrow schema inside one streaming
write, and lets training read the data with pyarrow alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

SCHEMA_VERSION = 1

TENSOR_DTYPES: dict[str, np.dtype] = {
    "frames": np.dtype(np.uint8),
    "latents": np.dtype(np.float16),
    "prompt_embeds": np.dtype(np.float16),
    "prompt_mask": np.dtype(np.int32),
    "pooled_prompt_embeds": np.dtype(np.float16),
    "image_embeds": np.dtype(np.float16),
    "image_latent": np.dtype(np.float16),
}

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
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("caption", pa.string()),
    ("dynamism", pa.float32()),
    ("latent_dtype", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("score", pa.float64()),
]
ROW_SCHEMA = pa.schema(
    _SCALARS + [f for name in TENSOR_DTYPES for f in ((name, pa.binary()), (f"{name}_shape", pa.list_(pa.int32())))]
)

CLIP_COLUMNS = ["schema_version", "input_id", "video_id", "source", "source_path", "shot_index", "clip_index", "num_clips",
                "start_frame", "num_frames", "fps", "height", "width", "caption", "dynamism", "latents",
                "latents_shape", "latent_dtype"]
VIDEO_COLUMNS = ["schema_version", "video_id", "num_clips", "caption", "prompt_embeds", "prompt_embeds_shape",
                 "prompt_mask", "prompt_mask_shape", "pooled_prompt_embeds", "pooled_prompt_embeds_shape",
                 "image_embeds", "image_embeds_shape", "image_latent", "image_latent_shape"]
REJECT_COLUMNS = ["input_id", "source_path", "stage", "reason", "score"]
WARNING_COLUMNS = ["input_id", "source_path", "stage", "reason"]
OWN_COLUMNS = {"rejects": REJECT_COLUMNS, "warnings": WARNING_COLUMNS}


def own_schema(table: str) -> pa.Schema:
    """The schema of a small table (rejects, warnings): its own columns, not the shared row schema."""
    return pa.schema([ROW_SCHEMA.field(c) for c in OWN_COLUMNS[table]])


class SchemaVersionError(ValueError):
    """Data written by another schema version than this code reads."""


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
    result = dataset.to_table(columns=[c for c in columns if c in names])
    if "schema_version" in columns and result.num_rows:
        versions = set(result.column("schema_version").to_pylist())
        if versions != {SCHEMA_VERSION}:
            raise SchemaVersionError(
                f"{path} holds schema_version {sorted(versions, key=str)}, this mempack reads version {SCHEMA_VERSION}; "
                "re-run prep with this version"
            )
    return result


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


def read_rejects(root: str | Path) -> pa.Table:
    """Rejected inputs and shots with their stage and reason (empty table if nothing was rejected)."""
    return _read_own(root, "rejects")


def read_warnings(root: str | Path) -> pa.Table:
    """Kept inputs that decoded only partly, with where and why they stopped (empty if none)."""
    return _read_own(root, "warnings")

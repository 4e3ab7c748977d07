"""The Parquet contract between prep and training, and pure-pyarrow readers for it.

Layout of a prep output root:
  clips/num_clips=K/*.parquet   one row per clip (a shot's clips are contiguous sections)
  videos/num_clips=K/*.parquet  one row per training video (= shot): prompt, image embeddings, start latent
  rejects/*.parquet             one row per rejected input or shot: source_path, stage, reason, score
  summary.json                  counts, buckets, rejects per reason, wall time, config

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

CLIP_COLUMNS = ["schema_version", "video_id", "source", "source_path", "shot_index", "clip_index", "num_clips",
                "start_frame", "num_frames", "fps", "height", "width", "caption", "dynamism", "latents",
                "latents_shape", "latent_dtype"]
VIDEO_COLUMNS = ["schema_version", "video_id", "num_clips", "caption", "prompt_embeds", "prompt_embeds_shape",
                 "prompt_mask", "prompt_mask_shape", "pooled_prompt_embeds", "pooled_prompt_embeds_shape",
                 "image_embeds", "image_embeds_shape", "image_latent", "image_latent_shape"]
REJECT_COLUMNS = ["source_path", "stage", "reason", "score"]


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
        raise DataContractError(f"{path} lacks column(s) {', '.join(missing)}: not a complete mempack prep output; "
                                "re-run prep")


def unpack_checked(name: str, data: bytes | None, shape) -> np.ndarray:
    """`unpack_tensor`, with one clear error for a missing value or bytes that do not fill the shape."""
    if data is None or shape is None:
        raise DataContractError(f"column {name} is empty in a row that needs it")
    expected = int(np.prod([int(s) for s in shape])) * TENSOR_DTYPES[name].itemsize
    if len(data) != expected:
        raise DataContractError(f"column {name}: {len(data)} bytes do not hold shape {list(shape)} "
                                f"of {TENSOR_DTYPES[name]} ({expected} bytes)")
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


def read_clips(root: str | Path) -> pa.Table:
    """All clip rows, sorted by (video_id, clip_index)."""
    table = _read(root, "clips", CLIP_COLUMNS, hive=True)
    return table.sort_by([("video_id", "ascending"), ("clip_index", "ascending")])


def read_videos(root: str | Path) -> pa.Table:
    """One row per training video."""
    return _read(root, "videos", VIDEO_COLUMNS, hive=True)


def read_rejects(root: str | Path) -> pa.Table:
    """Rejected inputs with their stage and reason (empty table if nothing was rejected)."""
    try:
        return _read(root, "rejects", REJECT_COLUMNS)
    except FileNotFoundError:
        return pa.table({c: pa.array([], ROW_SCHEMA.field(c).type) for c in REJECT_COLUMNS})

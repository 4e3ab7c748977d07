"""Training data: prep's Parquet → per-video samples, in curriculum buckets, streamed by Ray Data.

A training video is a shot: its clips (sections of one VAE stream) in order plus its per-video
conditions. The driver reads only the small columns of `videos/` to build an index; Ray Data loads each
video's clips in its own tasks (`load_video`) and streams them to the workers. A bucket is the videos of
one (number of clips, height, width): the curriculum's length and the resolution bucket together, so a
batch never mixes shapes. Every bucket is its own dataset, padded to a multiple of the worker count, so
all workers take the same number of micro-steps per video and DeepSpeed's collectives stay in lockstep.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from data_prep.schema import SchemaVersionError, check_version, read_video_index, unpack_tensor
from mempack.model import Conditioning


class EmptyDatasetError(ValueError):
    """The prep output holds no training video."""


class Bucket(NamedTuple):
    """Videos that can share a batch: as many clips, at one resolution (pixels)."""

    num_clips: int
    height: int
    width: int

    @property
    def name(self) -> str:
        """The Ray Train dataset name of this bucket, e.g. `bucket_2_48x80`."""
        return f"bucket_{self.num_clips}_{self.height}x{self.width}"


def video_index(root: str | Path) -> dict[Bucket, list[str]]:
    """{Bucket: sorted video ids}, ascending by clips (one-clip videos first), then by shape."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data not found: {root} (run pipelines/prep.py or pass --data)")
    try:
        videos = read_video_index(root)
    except FileNotFoundError:
        raise EmptyDatasetError(f"{root} holds no training videos (videos/ is missing or empty)") from None
    if videos.num_rows == 0:
        raise EmptyDatasetError(f"{root} holds no training videos")
    buckets: dict[Bucket, list[str]] = defaultdict(list)
    columns = (videos.column(c).to_pylist() for c in ("video_id", "num_clips", "height", "width"))
    for vid, n, h, w in zip(*columns):
        buckets[Bucket(int(n), int(h), int(w))].append(vid)
    return {k: sorted(v) for k, v in sorted(buckets.items())}


def load_video(root: str | Path, video_id: str) -> dict:
    """One video's clips [N, C, T, H, W] (float16) and conditions, from the Parquet files."""
    root = Path(root)
    clips = pads.dataset(root / "clips", format="parquet", partitioning="hive").to_table(
        filter=pc.field("video_id") == video_id, columns=["schema_version", "clip_index", "latents", "latents_shape"])
    if clips.num_rows == 0:
        raise EmptyDatasetError(f"video {video_id} has no clips under {root}")
    check_version(root / "clips", clips.column("schema_version").to_pylist())
    rows = sorted(clips.to_pylist(), key=lambda r: r["clip_index"])
    latents = np.stack([unpack_tensor("latents", r["latents"], r["latents_shape"]) for r in rows])
    videos = pads.dataset(root / "videos", format="parquet", partitioning="hive")
    video = videos.to_table(filter=pc.field("video_id") == video_id).to_pylist()[0]
    check_version(root / "videos", [video["schema_version"]])
    if [r["clip_index"] for r in rows] != list(range(int(video["num_clips"]))):
        raise ValueError(f"video {video_id} has clips {[r['clip_index'] for r in rows]}, expected "
                         f"0..{int(video['num_clips']) - 1}: the prep output is incomplete (re-run pipelines/prep.py)")
    out = {"video_id": video_id, "clips": latents}
    for name in ("prompt_embeds", "prompt_mask", "pooled_prompt_embeds", "image_embeds", "image_latent"):
        out[name] = unpack_tensor(name, video[name], video[f"{name}_shape"])
    return out


def to_training_inputs(row: dict, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, Conditioning]:
    """A loaded video row → (clips [N, C, T, H, W], batch-1 Conditioning) on `device`."""
    def t(name):
        return torch.as_tensor(np.asarray(row[name])).unsqueeze(0)

    cond = Conditioning(
        prompt_embeds=t("prompt_embeds").to(device, dtype),
        prompt_mask=t("prompt_mask").long().to(device),
        pooled=t("pooled_prompt_embeds").to(device, dtype),
        image_embeds=t("image_embeds").to(device, dtype),
        start_latent=t("image_latent").to(device, dtype),
    )
    clips = torch.as_tensor(np.asarray(row["clips"])).to(device, dtype)
    return clips, cond


def check_dataset(root: str | Path) -> dict[Bucket, list[str]]:
    """Fail fast, on the driver, for a missing/empty/wrong-version dataset (small columns only)."""
    index = video_index(root)  # validates schema_version of every video row
    clips = pads.dataset(Path(root) / "clips", format="parquet", partitioning="hive")
    if "schema_version" not in clips.schema.names:
        raise SchemaVersionError(f"{Path(root) / 'clips'} has no schema_version column: not written by mempack prep")
    check_version(Path(root) / "clips", clips.to_table(columns=["schema_version"]).column("schema_version").to_pylist())
    return index


def bucket_datasets(root: str | Path, index: dict[Bucket, list[str]], world_size: int):
    """{bucket.name: ray.data.Dataset of loaded videos}, each padded to a multiple of `world_size`."""
    import ray

    root = str(Path(root).resolve())
    datasets = {}
    for bucket, ids in index.items():
        padded = [ids[i % len(ids)] for i in range(-(-len(ids) // world_size) * world_size)]
        items = [{"video_id": v, "order": i} for i, v in enumerate(padded)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        datasets[bucket.name] = ds.map(lambda r, root=root: {**load_video(root, r["video_id"]), "order": r["order"]})
    return datasets

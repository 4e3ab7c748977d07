"""Training data: prep's Parquet → per-video samples, in curriculum buckets, streamed by Ray Data.

A training video is a shot: its clips (sections) in order plus its per-video conditions. The driver
reads only the small `videos/` table to build an index (video_id, num_clips); Ray Data loads each
video's clips in its own tasks (`load_video`) and streams them to the workers. Every bucket (videos
with the same number of clips) is its own dataset, padded to a multiple of the worker count, so all
workers take the same number of micro-steps per video and DeepSpeed's collectives stay in lockstep.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from data_prep.schema import SchemaVersionError, read_clips, read_videos, unpack_tensor
from mempack.model import Conditioning


class EmptyDatasetError(ValueError):
    """The prep output holds no training video."""


def video_index(root: str | Path) -> dict[int, list[str]]:
    """{num_clips: sorted video ids}: the curriculum buckets, ascending (one-clip videos first)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data not found: {root} (run pipelines/prep.py or pass --data)")
    try:
        videos = read_videos(root, columns=["video_id", "num_clips"])  # never the tensor columns
    except FileNotFoundError:
        raise EmptyDatasetError(f"{root} holds no training videos (videos/ is missing or empty)") from None
    if videos.num_rows == 0:
        raise EmptyDatasetError(f"{root} holds no training videos")
    buckets: dict[int, list[str]] = defaultdict(list)
    for vid, n in zip(videos.column("video_id").to_pylist(), videos.column("num_clips").to_pylist()):
        buckets[int(n)].append(vid)
    return {k: sorted(v) for k, v in sorted(buckets.items())}


def load_video(root: str | Path, video_id: str) -> dict:
    """One video's clips [N, C, T, H, W] (float16) and conditions, from the Parquet files."""
    root = Path(root)
    clips = pads.dataset(root / "clips", format="parquet", partitioning="hive").to_table(
        filter=pc.field("video_id") == video_id, columns=["schema_version", "clip_index", "latents", "latents_shape"])
    if clips.num_rows == 0:
        raise EmptyDatasetError(f"video {video_id} has no clips under {root}")
    if set(clips.column("schema_version").to_pylist()) != {1}:
        raise SchemaVersionError(f"clips of {video_id} have an unknown schema_version")
    rows = sorted(clips.to_pylist(), key=lambda r: r["clip_index"])
    latents = np.stack([unpack_tensor("latents", r["latents"], r["latents_shape"]) for r in rows])
    video = pads.dataset(root / "videos", format="parquet", partitioning="hive").to_table(filter=pc.field("video_id") == video_id).to_pylist()[0]
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


def check_dataset(root: str | Path) -> dict[int, list[str]]:
    """Fail fast, on the driver, for a missing/empty/wrong-version dataset. Reads only small columns: a
    driver never holds the latents (50,000 clips grow its RSS by a few MB, tests/test_prep_driver.py)."""
    index = video_index(root)
    read_clips(root, columns=["video_id"])  # validates schema_version of every clip row (small columns only)
    return index


def bucket_datasets(root: str | Path, index: dict[int, list[str]], world_size: int):
    """{"bucket_K": ray.data.Dataset of loaded videos}, each padded to a multiple of `world_size`."""
    import ray

    root = str(Path(root).resolve())
    datasets = {}
    for k, ids in index.items():
        padded = [ids[i % len(ids)] for i in range(-(-len(ids) // world_size) * world_size)]
        items = [{"video_id": v, "order": i} for i, v in enumerate(padded)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        datasets[f"bucket_{k}"] = ds.map(lambda r, root=root: {**load_video(root, r["video_id"]), "order": r["order"]})
    return datasets

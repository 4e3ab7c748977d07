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

from mempack.schema import (
    CLIP_COLUMNS,
    VIDEO_COLUMNS,
    DataContractError,
    SchemaVersionError,
    check_columns,
    check_version,
    read_video_index,
    unpack_checked,
)
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
    shapes = {tuple(r["latents_shape"] or ()) for r in rows}
    if len(shapes) != 1:
        raise DataContractError(f"clips of {video_id} have different latent shapes {sorted(shapes)}")
    latents = np.stack([unpack_checked("latents", r["latents"], r["latents_shape"]) for r in rows])
    videos = pads.dataset(root / "videos", format="parquet", partitioning="hive")
    video = videos.to_table(filter=pc.field("video_id") == video_id).to_pylist()[0]
    check_version(root / "videos", [video["schema_version"]])
    if [r["clip_index"] for r in rows] != list(range(int(video["num_clips"]))):
        raise ValueError(f"video {video_id} has clips {[r['clip_index'] for r in rows]}, expected "
                         f"0..{int(video['num_clips']) - 1}: the prep output is incomplete (re-run pipelines/prep.py)")
    out = {"video_id": video_id, "clips": latents}
    for name in ("prompt_embeds", "prompt_mask", "pooled_prompt_embeds", "image_embeds", "image_latent"):
        out[name] = unpack_checked(name, video[name], video[f"{name}_shape"])
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


def collate_videos(items: list[tuple[torch.Tensor, Conditioning]]) -> tuple[torch.Tensor, Conditioning]:
    """Videos of one bucket → one batch: clips [B, N, C, T, h, w] and a batch-B Conditioning (one video
    stays [N, C, T, h, w], batch 1). Videos must share their layout (clips, latent size, prompt length),
    which prep's bucketing guarantees; anything else is an error, never silent padding."""
    if len(items) == 1:
        return items[0]
    clips = [c for c, _ in items]
    shapes = {tuple(c.shape) for c in clips}
    prompts = {tuple(cond.prompt_embeds.shape[1:]) for _, cond in items}
    images = {tuple(cond.image_embeds.shape[1:]) for _, cond in items}
    if len(shapes) != 1 or len(prompts) != 1 or len(images) != 1:
        raise DataContractError(f"a batch mixes layouts (clips {sorted(shapes)}, prompts {sorted(prompts)}, "
                                f"images {sorted(images)}): batch_size > 1 needs videos of one layout per bucket")
    conds = [cond for _, cond in items]
    return torch.stack(clips), Conditioning(
        prompt_embeds=torch.cat([c.prompt_embeds for c in conds]),
        prompt_mask=torch.cat([c.prompt_mask for c in conds]),
        pooled=torch.cat([c.pooled for c in conds]),
        image_embeds=torch.cat([c.image_embeds for c in conds]),
        start_latent=torch.cat([c.start_latent for c in conds]),
    )


def check_dataset(root: str | Path) -> dict[Bucket, list[str]]:
    """Fail fast, on the driver, for a missing/empty/wrong-version dataset (small columns only)."""
    index = video_index(root)  # validates schema_version of every video row
    clips = pads.dataset(Path(root) / "clips", format="parquet", partitioning="hive")
    if "schema_version" not in clips.schema.names:
        raise SchemaVersionError(f"{Path(root) / 'clips'} has no schema_version column: not written by mempack prep")
    check_version(Path(root) / "clips", clips.to_table(columns=["schema_version"]).column("schema_version").to_pylist())
    return index


def check_shapes(root: str | Path, preset) -> None:
    """The data's tensor shapes fit the model (`preset`'s widths) and each other, read from the small
    shape columns only (never the tensors): the prompt, pooled, image and latent widths; a 1-D prompt
    mask as long as the prompt; 4-D clip latents with the start latent's channels and size."""
    root = Path(root)
    check_columns(root, "videos", VIDEO_COLUMNS)
    check_columns(root, "clips", CLIP_COLUMNS)
    shape_cols = ["video_id", "prompt_embeds_shape", "prompt_mask_shape", "pooled_prompt_embeds_shape",
                  "image_embeds_shape", "image_latent_shape"]
    videos = pads.dataset(root / "videos", format="parquet", partitioning="hive").to_table(columns=shape_cols).to_pylist()
    start: dict[str, tuple[int, ...]] = {}
    for v in videos:
        vid = v["video_id"]
        prompt, mask, pooled = v["prompt_embeds_shape"], v["prompt_mask_shape"], v["pooled_prompt_embeds_shape"]
        image, latent = v["image_embeds_shape"], v["image_latent_shape"]
        problems = []
        if not (prompt and len(prompt) == 2 and prompt[1] == preset.text_embed_dim):
            problems.append(f"prompt_embeds {prompt} (want [L, {preset.text_embed_dim}])")
        if not (mask and list(mask) == [prompt[0] if prompt else None]):
            problems.append(f"prompt_mask {mask} (want [{prompt[0] if prompt else 'L'}])")
        if not (pooled and list(pooled) == [preset.pooled_dim]):
            problems.append(f"pooled_prompt_embeds {pooled} (want [{preset.pooled_dim}])")
        if not (image and len(image) == 2 and image[1] == preset.image_embed_dim):
            problems.append(f"image_embeds {image} (want [N, {preset.image_embed_dim}])")
        if not (latent and len(latent) == 4 and latent[0] == preset.latent_channels and latent[1] == 1):
            problems.append(f"image_latent {latent} (want [{preset.latent_channels}, 1, h, w])")
        if problems:
            raise DataContractError(f"video {vid} does not fit preset {preset.name}: {'; '.join(problems)}")
        start[vid] = tuple(latent)
    clips = pads.dataset(root / "clips", format="parquet", partitioning="hive").to_table(
        columns=["video_id", "latents_shape"]).to_pylist()
    for c in clips:
        shape, first = c["latents_shape"], start.get(c["video_id"])
        if not (shape and len(shape) == 4 and first and shape[0] == first[0] and tuple(shape[2:]) == first[2:]):
            raise DataContractError(f"a clip of video {c['video_id']} has latents {shape}, which do not match its "
                                    f"start latent {list(first) if first else 'missing'}")


def bucket_datasets(root: str | Path, index: dict[Bucket, list[str]], world_size: int, batch_size: int = 1):
    """{bucket.name: ray.data.Dataset of loaded videos}, each padded to a multiple of `world_size` ×
    `batch_size`, so every worker takes the same number of full batches (ZeRO's collectives stay in step)."""
    world_size = world_size * batch_size
    import ray

    root = str(Path(root).resolve())
    datasets = {}
    for bucket, ids in index.items():
        padded = [ids[i % len(ids)] for i in range(-(-len(ids) // world_size) * world_size)]
        items = [{"video_id": v, "order": i} for i, v in enumerate(padded)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        datasets[bucket.name] = ds.map(lambda r, root=root: {**load_video(root, r["video_id"]), "order": r["order"]})
    return datasets

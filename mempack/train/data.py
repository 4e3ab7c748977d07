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

from data_prep.schema import (
    CLIP_COLUMNS,
    VIDEO_COLUMNS,
    DataContractError,
    SchemaVersionError,
    check_columns,
    read_clips,
    read_videos,
    unpack_checked,
)
from mempack.model import Conditioning


class EmptyDatasetError(ValueError):
    """The prep output holds no training video."""


def video_index(root: str | Path) -> dict[int, list[str]]:
    """{num_clips: sorted video ids}: the curriculum buckets, ascending (one-clip videos first)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data not found: {root} (run pipelines/prep.py or pass --data)")
    try:
        videos = read_videos(root)
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
    shapes = {tuple(r["latents_shape"] or ()) for r in rows}
    if len(shapes) != 1:
        raise DataContractError(f"clips of {video_id} have different latent shapes {sorted(shapes)}")
    latents = np.stack([unpack_checked("latents", r["latents"], r["latents_shape"]) for r in rows])
    video = pads.dataset(root / "videos", format="parquet", partitioning="hive").to_table(filter=pc.field("video_id") == video_id).to_pylist()[0]
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


def check_dataset(root: str | Path) -> dict[int, list[str]]:
    """Fail fast, on the driver, for a missing/empty/wrong-version dataset."""
    index = video_index(root)
    read_clips(root)  # validates schema_version of every clip row
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


def bucket_datasets(root: str | Path, index: dict[int, list[str]], world_size: int, batch_size: int = 1):
    """{"bucket_K": ray.data.Dataset of loaded videos}, each padded to a multiple of `world_size` ×
    `batch_size`, so every worker takes the same number of full batches (ZeRO's collectives stay in step)."""
    world_size = world_size * batch_size
    import ray

    root = str(Path(root).resolve())
    datasets = {}
    for k, ids in index.items():
        padded = [ids[i % len(ids)] for i in range(-(-len(ids) // world_size) * world_size)]
        items = [{"video_id": v, "order": i} for i, v in enumerate(padded)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        datasets[f"bucket_{k}"] = ds.map(lambda r, root=root: {**load_video(root, r["video_id"]), "order": r["order"]})
    return datasets

"""Training data: prep's Parquet → per-video samples, in curriculum order, streamed by Ray Data.

A training video is a shot: its clips (sections of one VAE stream) in order plus its per-video
conditions. The driver reads only small columns: the videos' index (`video_index`), grouped into buckets
of one (number of clips, height, width), so a batch never mixes shapes, and where each video's rows are
(`locate_videos`: file and row groups). The run's steps follow one `curriculum` that every worker computes
alike; each worker streams its own videos (`worker_videos`), each loaded in a Ray Data task that opens only
its files and reads only its row groups (`load_video`). Every step trains videos of one bucket on every
worker, so all workers take the same micro-steps and DeepSpeed's collectives stay in lockstep.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from mempack.model import Conditioning
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
    for vid, n, h, w in zip(*columns, strict=True):
        buckets[Bucket(int(n), int(h), int(w))].append(vid)
    return {k: sorted(v) for k, v in sorted(buckets.items())}


class VideoRows(NamedTuple):
    """Where one video's rows are: its clip files and video file (relative to the prep root), each with the
    row groups holding the video's rows. Flat lists, so it rides in a Ray Data row as plain columns."""

    clip_files: list[str]
    clip_groups: list[list[int]]
    video_files: list[str]
    video_groups: list[list[int]]


def locate_videos(root: str | Path) -> dict[str, VideoRows]:
    """{video_id: VideoRows}, from the `video_id` column of every row group of clips/ and videos/: read once
    on the driver (footers and one small column), so that `load_video` never scans the dataset again."""
    root = Path(root)
    found: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(lambda: {"clips": {}, "videos": {}})
    for table in ("clips", "videos"):
        for path in sorted((root / table).rglob("*.parquet")):
            name, parquet = str(path.relative_to(root)), pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                ids = parquet.read_row_group(group, columns=["video_id"]).column(0).unique().to_pylist()
                for vid in ids:
                    found[vid][table].setdefault(name, []).append(group)
    return {
        vid: VideoRows(
            list(where["clips"]), list(where["clips"].values()), list(where["videos"]), list(where["videos"].values())
        )
        for vid, where in found.items()
    }


_CLIP_READ = ["video_id", "schema_version", "clip_index", "latents", "latents_shape"]
_CONDITIONS = ("prompt_embeds", "prompt_mask", "pooled_prompt_embeds", "image_embeds", "image_latent")
_VIDEO_READ = ["video_id", "schema_version", *(c for name in _CONDITIONS for c in (name, f"{name}_shape"))]


def _scan(folder: Path, video_id: str, columns: list[str], filesystem) -> pa.Table:
    """The video's rows by a filter over every file of `folder` (num_clips from the hive folders)."""
    dataset = pads.dataset(str(folder), format="parquet", partitioning="hive", filesystem=filesystem)
    return dataset.to_table(filter=pc.field("video_id") == video_id, columns=[*columns, "num_clips"])


def _read_groups(
    root: Path, files: list[str], groups: list[list[int]], video_id: str, columns: list[str], filesystem
) -> pa.Table:
    """The video's rows from the listed row groups only (num_clips from each file's `num_clips=K` folder)."""
    parts = []
    for name, wanted in zip(files, groups, strict=True):
        parquet = pq.ParquetFile(str(root / name), filesystem=filesystem)
        table = parquet.read_row_groups([int(g) for g in wanted], columns=columns)
        table = table.filter(pc.equal(table.column("video_id"), video_id))
        folder = next(p for p in Path(name).parts if p.startswith("num_clips="))
        parts.append(
            table.append_column("num_clips", pa.array([int(folder.split("=")[1])] * table.num_rows, pa.int32()))
        )
    return pa.concat_tables(parts) if parts else pa.table({c: [] for c in [*columns, "num_clips"]})


def load_video(root: str | Path, video_id: str, rows: VideoRows | None = None, filesystem=None) -> dict:
    """One video's clips [N, C, T, H, W] (float16) and conditions, from the Parquet files.

    With `rows` (from `locate_videos`) only the files holding the video are opened and only its row groups
    read: what training does for every video. Without, every file of clips/ and videos/ is scanned with a
    `video_id` filter (a one-off read). `filesystem`: a pyarrow filesystem (default: local)."""
    root = Path(root)
    if rows is None:
        clips, videos = (
            _scan(root / "clips", video_id, _CLIP_READ, filesystem),
            _scan(root / "videos", video_id, _VIDEO_READ, filesystem),
        )
    else:
        clips = _read_groups(root, rows.clip_files, rows.clip_groups, video_id, _CLIP_READ, filesystem)
        videos = _read_groups(root, rows.video_files, rows.video_groups, video_id, _VIDEO_READ, filesystem)
    return _assemble(root, video_id, clips, videos)


def _assemble(root: Path, video_id: str, clips: pa.Table, videos: pa.Table) -> dict:
    """A video's clip rows and video row → the training row, checked against the contract."""
    if clips.num_rows == 0:
        raise EmptyDatasetError(f"video {video_id} has no clips under {root}")
    check_version(root / "clips", clips.column("schema_version").to_pylist())
    rows = sorted(clips.to_pylist(), key=lambda r: r["clip_index"])
    shapes = {tuple(r["latents_shape"] or ()) for r in rows}
    if len(shapes) != 1:
        raise DataContractError(f"clips of {video_id} have different latent shapes {sorted(shapes)}")
    latents = np.stack([unpack_checked("latents", r["latents"], r["latents_shape"]) for r in rows])
    if videos.num_rows == 0:
        raise EmptyDatasetError(f"video {video_id} has no video row under {root}")
    video = videos.to_pylist()[0]
    check_version(root / "videos", [video["schema_version"]])
    if [r["clip_index"] for r in rows] != list(range(int(video["num_clips"]))):
        raise ValueError(
            f"video {video_id} has clips {[r['clip_index'] for r in rows]}, expected "
            f"0..{int(video['num_clips']) - 1}: the prep output is incomplete (re-run pipelines/prep.py)"
        )
    out = {"video_id": video_id, "clips": latents}
    for name in _CONDITIONS:
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
        raise DataContractError(
            f"a batch mixes layouts (clips {sorted(shapes)}, prompts {sorted(prompts)}, "
            f"images {sorted(images)}): batch_size > 1 needs videos of one layout per bucket"
        )
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
    shape_cols = [
        "video_id",
        "prompt_embeds_shape",
        "prompt_mask_shape",
        "pooled_prompt_embeds_shape",
        "image_embeds_shape",
        "image_latent_shape",
    ]
    videos = (
        pads.dataset(root / "videos", format="parquet", partitioning="hive").to_table(columns=shape_cols).to_pylist()
    )
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
    clips = (
        pads.dataset(root / "clips", format="parquet", partitioning="hive")
        .to_table(columns=["video_id", "latents_shape"])
        .to_pylist()
    )
    for c in clips:
        shape, first = c["latents_shape"], start.get(c["video_id"])
        if not (shape and len(shape) == 4 and first and shape[0] == first[0] and tuple(shape[2:]) == first[2:]):
            raise DataContractError(
                f"a clip of video {c['video_id']} has latents {shape}, which do not match its "
                f"start latent {list(first) if first else 'missing'}"
            )


CURRICULA = ("progression", "cycle")
# videos a Ray Data task loads in turn: few blocks to create at start-up (a long run has tens of thousands of
# steps), while each task still streams its output in Ray Data's bounded blocks (128 MiB by default)
VIDEOS_PER_TASK = 32


class Step(NamedTuple):
    """One optimizer step of the whole run: its bucket (index into the curriculum) and its `group` videos;
    rank r of `world` trains videos[r::world] (its batch)."""

    bucket: int
    videos: tuple[str, ...]


def curriculum(
    index: dict[Bucket, list[str]], max_steps: int, epochs: int, group: int, kind: str = "progression"
) -> list[Step]:
    """The run's steps in order: buckets by ascending clips (`index`'s order), `group` (= workers × batch)
    videos of one bucket per step, so every rank takes the same number of steps in every bucket.

    A pass over a bucket is its videos in order, padded (its first videos again) to whole steps. The run
    makes `passes` = min(epochs, max_steps / one pass over all buckets) passes of every bucket:
    - "progression" (default, the paper's: one clip first, then ever more clips): all passes of a bucket
      before the next bucket, once through the curriculum; a fractional number of passes is shared out over
      the buckets in proportion to their steps (largest remainder), so the run still ends on the longest;
    - "cycle": one pass of every bucket (short → long), then again from the shortest, until the end.
    """
    if kind not in CURRICULA:
        raise ValueError(f"curriculum must be one of {CURRICULA}, got {kind!r}")
    passes = [(b, ids, -(-len(ids) // group)) for b, ids in enumerate(index.values())]
    per_pass = sum(n for _, _, n in passes)
    total = min(max_steps, epochs * per_pass)

    def step(b: int, ids: list[str], k: int, n: int) -> Step:
        first = (k % n) * group  # the k-th step of the bucket; every pass starts from its first video
        return Step(b, tuple(ids[(first + j) % len(ids)] for j in range(group)))

    if kind == "cycle":
        one_pass = [step(b, ids, k, n) for b, ids, n in passes for k in range(n)]
        return [one_pass[i % per_pass] for i in range(total)]
    exact = [total * n / per_pass for _, _, n in passes]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])[: total - sum(shares)]:
        shares[i] += 1
    return [step(b, ids, k, n) for (b, ids, n), share in zip(passes, shares, strict=True) for k in range(share)]


def worker_videos(
    root: str | Path, steps: list[Step], rank: int, world: int, locations: dict[str, VideoRows], start: int = 0
):
    """A Ray Dataset of this rank's videos from step `start` on, loaded in Ray Data tasks, in step order.

    One dataset per worker, built in the worker, for the whole run: each rank's videos (and so every rank's
    bucket at every step) follow from the shared `curriculum`, not from how Ray Data splits a dataset
    (`streaming_split` promises equal counts, not which rows). Each row carries its location, so a task
    opens only the files of its video."""
    import ray

    root = str(Path(root).resolve())
    items = [
        {"step": i, "bucket": s.bucket, "video_id": vid, **locations[vid]._asdict()}
        for i, s in enumerate(steps[start:], start)
        for vid in s.videos[rank::world]
    ]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // VIDEOS_PER_TASK)))
    ds.context.execution_options.preserve_order = True  # one consumer: rows arrive in step order

    def load(row: dict, root: str = root) -> dict:
        where = VideoRows(
            [str(f) for f in row["clip_files"]],
            [[int(g) for g in gs] for gs in row["clip_groups"]],
            [str(f) for f in row["video_files"]],
            [[int(g) for g in gs] for gs in row["video_groups"]],
        )
        return {**load_video(root, row["video_id"], where), "step": row["step"], "bucket": row["bucket"]}

    return ds.map(load)

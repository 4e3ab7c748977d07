"""The prep job on Ray Data: list → decode/shots/dynamism/clips → encode → Parquet + summary.

    inputs ─flat_map(process_input)─▶ shot + reject rows ─map_batches(ClipEncoder, actors)─▶ clip + video rows
        write_parquet(staging, partition_cols=[table, num_clips]) ─▶ clips/ videos/ rejects/ summary.json

No shuffle or groupby inside the streaming graph: the number of clips of a shot is known as soon as
its video is decoded, so rows carry `num_clips` from the first operator on, and the curriculum
partitioning is just the write's partition column. A second run into the same output *replaces* it:
the previous clips/, videos/, rejects/ and summary.json are removed first, so rows never duplicate.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from data_prep.process import ClipSpec, process_input
from data_prep.schema import SCHEMA_VERSION, read_clips, read_rejects, read_videos, to_row_table
from data_prep.sources import VideoInput
from mempack.presets import get_preset

log = logging.getLogger(__name__)
TABLES = ("clips", "videos", "rejects")


@dataclass
class PrepConfig:
    """Everything the prep job needs; loadable from YAML and overridable from the CLI."""

    output: str = "outputs/prep"
    preset: str = "tiny"
    encoders: str | None = None  # folder with real encoder weights; None = tiny random (seeded)
    encoder_seed: int = 0
    clip: ClipSpec = field(default_factory=ClipSpec)
    encode_actors: int = 1
    encode_batch_size: int = 1  # shots per encoder batch: a shot row holds up to a minute of frames


def _organise(staging: Path, out: Path) -> None:
    """Move staging/table=T/num_clips=K/*.parquet into the contract's layout."""
    for table in TABLES:
        for part in sorted((staging / f"table={table}").glob("num_clips=*")):
            # clips and videos keep their num_clips partition folders (read back with hive partitioning)
            dest = out / table if table == "rejects" else out / table / part.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in part.glob("*.parquet"):
                f.rename(dest / (f"{part.name}-{f.name}" if table == "rejects" else f.name))
    shutil.rmtree(staging, ignore_errors=True)


def summarise(out: Path, inputs: list[VideoInput], config: PrepConfig, seconds: float) -> dict:
    """Counts that prove nothing was lost: accepted + rejected inputs = inputs."""
    clips = read_clips(out) if (out / "clips").is_dir() else None
    rejects = read_rejects(out)
    clip_paths = set(clips.column("source_path").to_pylist()) if clips is not None else set()
    reject_rows = rejects.to_pylist()
    rejected_inputs = {r["source_path"] for r in reject_rows} - clip_paths
    per_bucket = Counter()
    videos, shapes = {}, {}
    if clips is not None:
        for vid, n, h, w in zip(*(clips.column(c).to_pylist() for c in ("video_id", "num_clips", "height", "width"))):
            videos[vid], shapes[vid] = n, f"{h}x{w}"
        per_bucket = Counter(videos.values())
    shot_rejects = [r for r in reject_rows if r["stage"] in ("dynamism", "clips") and r["reason"].find("shot ") >= 0]
    clip_count = clips.num_rows if clips is not None else 0
    clock = get_preset(config.preset)
    return {
        "schema_version": SCHEMA_VERSION,
        "inputs": len(inputs),
        "inputs_accepted": len(clip_paths),
        "inputs_rejected": len(rejected_inputs),
        "captions_missing": sum(1 for i in inputs if not i.caption),
        "videos": len(videos),
        "shots_accepted": len(videos),
        "shots_rejected": len(shot_rejects),
        "clips": clip_count,
        "hours": clip_count * clock.section_frames / clock.fps / 3600,
        "clips_per_video_buckets": {str(k): v for k, v in sorted(per_bucket.items())},
        "resolution_buckets": dict(sorted(Counter(shapes.values()).items())),
        "rejects_per_reason": dict(Counter(r["reason"].split(":")[0] for r in reject_rows)),
        "rejects_per_stage": dict(Counter(r["stage"] for r in reject_rows)),
        "wall_seconds": round(seconds, 2),
        "config": asdict(config),
    }


def run_prep(inputs: list[VideoInput], config: PrepConfig) -> dict:
    """Run the whole job on the current Ray cluster; returns the summary (also written to disk)."""
    import ray

    start = time.perf_counter()
    out = Path(config.output).resolve()
    for table in TABLES:
        shutil.rmtree(out / table, ignore_errors=True)
    (out / "summary.json").unlink(missing_ok=True)
    staging = out / "_staging"
    shutil.rmtree(staging, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if inputs:
        ds = ray.data.from_items([i.to_row() for i in inputs], override_num_blocks=max(1, len(inputs)))
        # the encoder actors hold their CPU for the whole job: on a 1-CPU cluster a whole CPU each would
        # leave the CPU stages nothing to run on (a deadlock), so both take half of it there
        cpu_share = min(1.0, float(ray.cluster_resources().get("CPU", 1)) / 2)
        ds = ds.flat_map(process_input, fn_kwargs={"spec": config.clip, "preset": config.preset}, num_cpus=cpu_share)
        ds = ds.map_batches(
            _to_table, batch_format="pyarrow", batch_size=config.encode_batch_size, num_cpus=cpu_share,
        )
        use_gpu = bool(ray.cluster_resources().get("GPU"))
        ds = ds.map_batches(
            ClipEncoderUDF, fn_constructor_kwargs=dict(preset=config.preset, weights=config.encoders,
                                                       seed=config.encoder_seed),
            batch_format="pyarrow", batch_size=config.encode_batch_size,
            compute=ray.data.ActorPoolStrategy(size=config.encode_actors),
            num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else cpu_share,
        )
        ds.write_parquet(str(staging), partition_cols=["table", "num_clips"])
        _organise(staging, out)
    summary = summarise(out, inputs, config, time.perf_counter() - start)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _to_table(batch):
    """flat_map yields dict rows; give the encoder typed Arrow batches of the one row schema."""
    return to_row_table(batch.to_pylist())


from data_prep.encode import ClipEncoder as ClipEncoderUDF  # noqa: E402  (Ray pickles the class by reference)

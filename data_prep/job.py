"""The prep job on Ray Data: list → decode/shots/dynamism/clips → encode → Parquet + summary.

    inputs ─flat_map(process_input)─▶ shot + reject + warning rows ─map_batches(ClipEncoder, actors)─▶ clip + video rows
        write_parquet(staging, partition_cols=[table, num_clips]) ─▶ clips/ videos/ rejects/ warnings/ summary.json

No shuffle or groupby inside the streaming graph: the number of clips of a shot is known as soon as
its video is decoded, so rows carry `num_clips` from the first operator on, and the curriculum
partitioning is just the write's partition column.

Nothing is lost, whatever happens:
- the job writes into a staging folder beside the output (`.NAME.staging`); only when the whole run has
  succeeded and its counts check out (accepted + rejected = inputs, by `input_id`) are the previous
  clips/, videos/, rejects/, warnings/ and summary.json swapped out and the new ones in. A run that fails
  (a bad setting, a crash, a failed count) leaves the previous output as it was, byte for byte;
- prep deletes only what it wrote: those five names in the output, and its own staging folders;
- an output that contains or lies inside an input or the video root is refused before anything runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.decode import DECODERS
from data_prep.encode import ClipEncoder as ClipEncoderUDF
from data_prep.process import ClipSpec, process_input
from data_prep.sources import VideoInput
from mempack import layout
from mempack.presets import get_preset
from mempack.schema import (
    OWN_COLUMNS,
    ROW_GROUP_ROWS,
    SCHEMA_VERSION,
    own_schema,
    read_clips,
    read_rejects,
    read_warnings,
    to_row_table,
)

log = logging.getLogger(__name__)
TABLES = ("clips", "videos", "rejects", "warnings")
OWNED = (*TABLES, layout.SUMMARY_FILE)  # everything prep writes into an output folder, and all it ever removes
STAGING_MARK = ".mempack-prep-staging"
# host memory of one encoder actor, for Ray's scheduler (tiny: Ray Data measured up to 520 MiB on the sample)
ENCODER_MEMORY_GB = {"tiny": 0.75, "framepack-f1": 32.0}


class AccountingError(RuntimeError):
    """The rows written do not account for every input exactly once: the run is not reported a success."""


@dataclass
class PrepConfig:
    """Everything the prep job needs; loadable from YAML and overridable from the CLI."""

    output: str = str(layout.prep_dir())
    preset: str = "tiny"
    encoders: str | None = None  # folder with real encoder weights; None = tiny random (seeded)
    encoder_seed: int = 0
    vae_dtype: str = "auto"  # the VAE's precision: auto (fp16 on a GPU, fp32 on a CPU), fp32, fp16 or bf16 (bands)
    clip: ClipSpec = field(default_factory=ClipSpec)
    encode_actors: int = 1
    encode_batch_size: int = 1  # shots per encoder batch: a shot row holds up to a minute of frames
    encoder_memory_gb: float | None = None  # None: ENCODER_MEMORY_GB of the preset
    # tell Ray each stage's peak host memory: ClipSpec.worker_memory_bytes() per prep task (from the shot
    # buffer cap, clip.max_shot_bytes), encoder_memory_gb per encoder actor (see stage_remote_args)
    memory_hints: bool = True


def check_config(config: PrepConfig) -> None:
    """Settings the job could only fail on later (an unknown preset, non-finite or non-positive numbers):
    ValueError now, before anything is read or written. Sizes and clock are the preset's (its buckets are
    multiples of the VAE's and patch's factor by construction)."""
    get_preset(config.preset)
    spec = config.clip
    for name in ("max_shot_seconds", "decode_timeout_s", "max_aspect_ratio", "dynamism_threshold", "shot_threshold"):
        value = getattr(spec, name)
        if (
            not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and name in ("max_shot_seconds", "decode_timeout_s", "max_aspect_ratio"))
        ):
            raise ValueError(f"clip.{name}={value!r} must be a finite positive number")
    for name in ("decode_max_side", "max_shot_bytes", "min_shot_frames"):
        if not isinstance(getattr(spec, name), int) or getattr(spec, name) < 1:
            raise ValueError(f"clip.{name}={getattr(spec, name)!r} must be a positive integer")
    if spec.decoder not in DECODERS:
        raise ValueError(f"clip.decoder={spec.decoder!r} must be one of {', '.join(DECODERS)}")
    from mempack.encoders import VAE_DTYPES

    if config.vae_dtype != "auto" and config.vae_dtype not in VAE_DTYPES:
        raise ValueError(f"vae_dtype={config.vae_dtype!r} must be auto or one of {', '.join(VAE_DTYPES)}")
    if config.encode_actors < 1 or config.encode_batch_size < 1:
        raise ValueError("encode_actors and encode_batch_size must be >= 1")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(output: str | Path, inputs: Iterable[VideoInput], protected: Iterable[str | Path] = ()) -> Path:
    """The output folder, resolved; ValueError when it contains or lies inside a protected folder (an input,
    the video root) or contains an input file: replacing it would touch the raw data."""
    out = Path(output).resolve()
    for root in protected:
        root = Path(root).resolve()
        if _inside(root, out) or _inside(out, root):
            raise ValueError(
                f"--output {out} {'contains' if _inside(root, out) else 'lies inside'} the input "
                f"{root}: choose an output folder outside the raw data"
            )
    for item in inputs:
        if _inside(Path(os.path.abspath(item.source_path)), out):
            raise ValueError(f"--output {out} contains the input {item.source_path}: choose another output folder")
    return out


def _remove_ours(folder: Path) -> None:
    """Remove a staging/previous folder of an earlier run, only if prep marked it as its own."""
    if folder.exists():
        if not (folder / STAGING_MARK).is_file():
            raise ValueError(f"{folder} exists and was not written by prep: move it away and re-run")
        shutil.rmtree(folder)


def _fresh(folder: Path) -> Path:
    _remove_ours(folder)
    folder.mkdir(parents=True)
    (folder / STAGING_MARK).write_text("written by mempack prep; removed by the next run\n")
    return folder


def _organise(raw: Path, staging: Path) -> None:
    """raw/table=T/num_clips=K/*.parquet → staging's contract layout. clips and videos keep their num_clips
    partition folders (read back with hive partitioning); rejects and warnings become one file each with
    their own columns only."""
    for table in TABLES:
        parts = sorted((raw / f"table={table}").glob("num_clips=*"))
        if table in OWN_COLUMNS:
            files = [f for part in parts for f in sorted(part.glob("*.parquet"))]
            if files:
                (staging / table).mkdir()
                columns = OWN_COLUMNS[table]
                tables = [pq.read_table(f, columns=columns).cast(own_schema(table)) for f in files]
                pq.write_table(pa.concat_tables(tables), staging / table / "part-0.parquet")
            continue
        for part in parts:
            dest = staging / table / part.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in part.glob("*.parquet"):
                f.rename(dest / f.name)
    shutil.rmtree(raw)


def _swap_in(staging: Path, out: Path) -> None:
    """Replace prep's own entries of `out` with the staged ones; anything else in `out` is left alone."""
    out.mkdir(parents=True, exist_ok=True)
    previous = _fresh(out.parent / f".{out.name}.previous")
    for name in OWNED:
        if (out / name).exists():
            (out / name).rename(previous / name)
    for name in OWNED:
        if (staging / name).exists():
            (staging / name).rename(out / name)
    shutil.rmtree(previous)
    shutil.rmtree(staging)


def summarise(out: Path, inputs: list[VideoInput], config: PrepConfig, seconds: float) -> dict:
    """Counts that prove nothing was lost, read from small columns only (never a tensor column):
    every input_id is accepted (has clips) or rejected (has reject rows and no clips), exactly once."""
    clips = (
        read_clips(out, columns=["input_id", "video_id", "num_clips", "height", "width"])
        if (out / "clips").is_dir()
        else None
    )
    reject_rows = read_rejects(out).to_pylist()
    warned = {r["input_id"] for r in read_warnings(out).to_pylist()}
    ids = [i.input_id for i in inputs]
    if len(set(ids)) != len(ids):
        raise AccountingError(f"{len(ids) - len(set(ids))} inputs share an input_id with another")
    accepted = set(clips.column("input_id").to_pylist()) if clips is not None else set()
    rejected = {r["input_id"] for r in reject_rows} - accepted
    missing, unknown = set(ids) - accepted - rejected, (accepted | rejected) - set(ids)
    if missing or unknown:
        raise AccountingError(
            f"rows do not account for the inputs: {len(missing)} inputs without a row "
            f"(e.g. {sorted(missing)[:3]}), {len(unknown)} unknown ids (e.g. {sorted(unknown)[:3]})"
        )
    videos, shapes = {}, {}
    if clips is not None:
        for vid, n, h, w in zip(
            *(clips.column(c).to_pylist() for c in ("video_id", "num_clips", "height", "width")), strict=True
        ):
            videos[vid], shapes[vid] = n, f"{h}x{w}"
    per_bucket = Counter(videos.values())
    shot_rejects = [r for r in reject_rows if r["stage"] in ("dynamism", "clips") and "shot " in r["reason"]]
    clip_count = clips.num_rows if clips is not None else 0
    clock = get_preset(config.preset)
    return {
        "schema_version": SCHEMA_VERSION,
        "inputs": len(inputs),
        "inputs_accepted": len(accepted),
        "inputs_rejected": len(rejected),
        "inputs_truncated": len(warned),
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


def run_prep(inputs: list[VideoInput], config: PrepConfig, protected: Iterable[str | Path] = ()) -> dict:
    """Run the whole job on the current Ray cluster; returns the summary (also written to disk).

    `protected`: folders the output must stay clear of (the input folder or manifest, the video root).
    Raises ValueError (bad settings or output folder) before anything is written, AccountingError or the
    job's own error after; in every failing case the previous output is untouched."""
    start = time.perf_counter()
    check_config(config)
    out = check_output(config.output, inputs, protected)
    _remove_ours(out.parent / f".{out.name}.previous")  # left by a run killed mid-swap; refused if not ours
    staging = _fresh(out.parent / f".{out.name}.staging")
    try:
        if inputs:
            _run_job(inputs, config, staging / "raw")
            _organise(staging / "raw", staging)
        summary = summarise(staging, inputs, config, time.perf_counter() - start)
        (staging / layout.SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def stage_remote_args(
    config: PrepConfig, cluster_cpus: float, use_gpu: bool, node_memory: float | None = None
) -> dict[str, dict]:
    """Ray remote args of prep's stages: {"process": flat_map(process_input), "to_table": ..., "encode": ...}.

    - CPU: the encoder actors hold their CPU for the whole job: on a 1-CPU cluster a whole CPU each would
      leave the CPU stages nothing to run on (a deadlock), so both take half of it there.
    - memory (`config.memory_hints`): a prep task reserves `clip.worker_memory_bytes()` (twice the shot
      buffer cap plus the decoder process), an encoder actor `encoder_memory_gb`; a hint larger than the
      largest node (`node_memory`, bytes) is lowered to it, else the task could never be placed.
    - placement: a prep task's input is one small row, so Ray Data schedules it "SPREAD" by itself
      (`DataContext.scheduling_strategy`, for inputs under `large_args_threshold`, 50 MB); passing it again
      changes nothing and goes through the `**ray_remote_args` that Ray 2.60 deprecates. What spreads the prep
      tasks is `to_table` getting exactly the encoder's args: Ray Data then fuses it into the encoder actors,
      one operator, as without hints. With args of its own (no `memory`) it stays a separate 1-CPU task
      operator. On the 2-node, 4-CPU test cluster Ray Data's CPU budget lets one prep task run at a time
      either way, so each one's node is Ray's round-robin SPREAD pick of that moment: with the extra
      operator every prep task ran on one node (4 of 4 runs), fused on both nodes (9 of 9 runs).
    """
    cpu_share = min(1.0, float(cluster_cpus) / 2)
    encoder_gb = (
        config.encoder_memory_gb if config.encoder_memory_gb is not None else ENCODER_MEMORY_GB.get(config.preset, 1.0)
    )
    process = {"num_cpus": cpu_share}
    encode = {"num_gpus": 1 if use_gpu else 0, "num_cpus": 0 if use_gpu else cpu_share}
    if config.memory_hints:
        for args, want in ((process, config.clip.worker_memory_bytes()), (encode, int(encoder_gb * (1 << 30)))):
            args["memory"] = int(min(want, node_memory)) if node_memory else int(want)
            if args["memory"] < want:
                log.warning(
                    "memory hint %.2f GiB lowered to the largest node's %.2f GiB", want / 2**30, args["memory"] / 2**30
                )
    return {"process": process, "to_table": dict(encode), "encode": encode}


def _largest_node_memory() -> float | None:
    """The `memory` resource of the cluster's largest alive node (bytes), None when unknown."""
    import ray

    sizes = [n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")]
    return max(sizes) if sizes and max(sizes) > 0 else None


def _run_job(inputs: list[VideoInput], config: PrepConfig, raw: Path) -> None:
    import ray

    ds = ray.data.from_items([i.to_row() for i in inputs], override_num_blocks=max(1, len(inputs)))
    args = stage_remote_args(
        config,
        ray.cluster_resources().get("CPU", 1),
        bool(ray.cluster_resources().get("GPU")),
        _largest_node_memory() if config.memory_hints else None,
    )
    ds = ds.flat_map(process_input, fn_kwargs={"spec": config.clip, "preset": config.preset}, **args["process"])
    ds = ds.map_batches(_to_table, batch_format="pyarrow", batch_size=config.encode_batch_size, **args["to_table"])
    ds = ds.map_batches(
        ClipEncoderUDF,
        fn_constructor_kwargs=dict(
            preset=config.preset, weights=config.encoders, seed=config.encoder_seed, vae_dtype=config.vae_dtype
        ),
        batch_format="pyarrow",
        batch_size=config.encode_batch_size,
        compute=ray.data.ActorPoolStrategy(size=config.encode_actors),
        **args["encode"],
    )
    ds.write_parquet(str(raw), partition_cols=["table", "num_clips"], row_group_size=ROW_GROUP_ROWS)


def _to_table(batch):
    """flat_map yields dict rows; give the encoder typed Arrow batches of the one row schema."""
    return to_row_table(batch.to_pylist())

"""Per-input CPU work: one streamed decode → shots → dynamism → streams. Emits shot rows and reject rows.

This is the first Ray Data operator (a plain generator: `process_input(row, spec, preset)`). The video
is decoded once, window by window; shots come out of the online splitter as soon as they end and are
turned into rows right away, so a worker holds one shot's frames at a time, however long the file.
An accepted shot becomes ONE `shots` row: its training video's frames (1 + 36·n at 30 fps, resized to
its bucket; data_prep.clips), which the encoder turns into n clip rows and one video row.
Every input yields at least one row, so nothing is lost: either shot rows of its accepted shots, or
reject rows that say why (per input for a bad manifest row, decode failures and too-short videos, per
shot for static or too-short shots). A video that decodes only partly (truncated, hung, resolution
change) keeps what decoded and adds a `warnings` row that says where and why it stopped. Every row
carries the input's `input_id`, which is how the job proves accepted + rejected = inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from data_prep.clips import min_source_frames, plan_stream
from data_prep.decode import MAX_ASPECT_RATIO, DecodeError, stream_frames
from data_prep.dynamism import dynamism_score
from data_prep.shots import Shot, ShotSplitter
from mempack.encoders import resize_center_crop
from mempack.presets import get_preset, nearest_bucket, whole_sections
from mempack.schema import SCHEMA_VERSION, pack_tensor


@dataclass
class ClipSpec:
    """The CPU stages' settings (a sub-config of PrepConfig).

    No clock and no size here: the frame rate, the section length and the resolution buckets are the
    preset's (mempack.presets), the same in prep, training and inference.
    """

    shot_threshold: float = 27.0
    min_shot_frames: int = 8
    max_shot_seconds: float = 60.0  # longer takes become several training videos (the paper's are <= 1 min)
    dynamism_threshold: float = 0.02
    dynamism_method: str = "dis"
    decode_timeout_s: float = 120.0  # longest silence of the decoder process before it is killed
    decode_max_side: int = 640  # decode at most this long a side (the largest bucket side if larger); bounds memory
    max_aspect_ratio: float = MAX_ASPECT_RATIO
    max_shot_bytes: int = 512 << 20  # decoded frames one shot may hold before it is closed (bounds memory)
    decoder: str = "auto"  # "auto": decord where it is right, PyAV elsewhere (data_prep.decode); "pyav": PyAV only

    def worker_memory_bytes(self) -> int:
        """What one prep task may hold at its peak, for Ray's scheduler: the shot buffer twice (closing a
        shot joins its windows), the shot's clips and the decoder's own process."""
        return 2 * self.max_shot_bytes + (512 << 20)


def reject(source_path: str, stage: str, reason: str, score: float | None = None, input_id: str | None = None) -> dict:
    return {
        "table": "rejects",
        "num_clips": 0,
        "input_id": input_id,
        "source_path": source_path,
        "stage": stage,
        "reason": reason,
        "score": score,
    }


def warning(row: dict, stage: str, reason: str) -> dict:
    """A note on an input that was kept (e.g. decoded only partly), in the warnings table."""
    return {
        "table": "warnings",
        "num_clips": 0,
        "input_id": row["input_id"],
        "source_path": row["source_path"],
        "stage": stage,
        "reason": reason,
    }


def process_input(row: dict, spec: ClipSpec, preset: str = "tiny") -> Iterator[dict]:
    """Rows for one input video (see module docstring)."""
    for out in _input_rows(row, spec, preset):
        out["input_id"] = row["input_id"]
        yield out


def _input_rows(row: dict, spec: ClipSpec, preset: str) -> Iterator[dict]:
    path = row["source_path"]
    if row.get("error"):
        yield reject(path, "source", row["error"])
        return
    try:
        info, windows = stream_frames(
            path,
            row.get("start_seconds"),
            row.get("end_seconds"),
            timeout_s=spec.decode_timeout_s,
            max_side=max(spec.decode_max_side, *map(max, get_preset(preset).buckets)),
            max_aspect_ratio=spec.max_aspect_ratio,
            decoder=spec.decoder,
        )
    except DecodeError as err:
        yield reject(path, "decode", str(err))
        return
    frame_bytes = info.height * info.width * 3
    min_frames = min_source_frames(info.fps, preset)  # a 1.2-s span: one section
    splitter = ShotSplitter(
        info.fps,
        spec.shot_threshold,
        spec.min_shot_frames,
        max(min_frames, round(spec.max_shot_seconds * info.fps)),
        max(spec.max_shot_bytes, min_frames * frame_bytes),
    )
    decoded = 0

    def shots() -> Iterator[Shot]:
        nonlocal decoded
        for window in windows:
            decoded += len(window)
            yield from splitter.push(window)
        yield from splitter.finish()

    stream, held = shots(), []
    for shot in stream:  # hold shots back until the video is known to hold one section's worth of frames
        held.append(shot)
        if decoded >= min_frames:
            break
    if decoded < min_frames:
        # shorter than one section (1.2 s): nothing can be cut, however the shots fall
        stopped = f" ({'; '.join(windows.warnings)})" if windows.warnings else ""
        yield reject(
            path,
            "clips",
            f"too_short: {decoded} frames at {info.fps:g} fps < {min_frames} for one section{stopped}",
            float(decoded),
        )
        return
    bucket = nearest_bucket(preset, info.height, info.width)
    for shot_index, shot in enumerate(itertools.chain(held, stream)):
        yield from shot_rows(row, shot_index, shot, info.fps, spec, preset, bucket)
    for note in windows.warnings:
        yield warning(row, "decode", note)


def shot_rows(
    row: dict,
    shot_index: int,
    shot: Shot,
    src_fps: float,
    spec: ClipSpec,
    preset: str = "tiny",
    bucket: tuple[int, int] | None = None,
) -> list[dict]:
    """One shot → one `shots` row (its training video's frames), or one reject row (static, or < 1 section).

    The stream is the shot on the preset's clock trimmed to 1 + 36·n frames (data_prep.clips), resized to
    cover `bucket` (default: the one nearest the shot's frame shape) and cropped: aspect ratio kept.
    """
    path = row["source_path"]
    clock = get_preset(preset)
    video_id = f"{row['source']}:{row['source_id']}:shot{shot_index:03d}"
    score = dynamism_score(shot.frames, src_fps, method=spec.dynamism_method)
    if score < spec.dynamism_threshold:
        return [
            reject(
                path, "dynamism", f"static: shot {shot_index} dynamism {score:.4f} < {spec.dynamism_threshold:g}", score
            )
        ]
    idx = plan_stream(len(shot.frames), src_fps, preset)
    if len(idx) == 0:
        seconds = (len(shot.frames) - 1) / src_fps
        return [
            reject(
                path,
                "clips",
                f"too_short: shot {shot_index} spans {seconds:.2f} s < "
                f"{clock.section_frames / clock.fps:g} s for one section",
                seconds,
            )
        ]
    height, width = bucket or nearest_bucket(preset, *shot.frames.shape[1:3])
    return [
        {
            "table": "shots",
            "schema_version": SCHEMA_VERSION,
            "video_id": video_id,
            "source": row["source"],
            "source_path": path,
            "shot_index": shot_index,
            "num_clips": whole_sections(len(idx), temporal=clock.vae_temporal),
            "start_frame": shot.start + int(idx[0]),
            "num_frames": len(idx),
            "fps": clock.fps,
            "source_fps": float(src_fps),
            "height": height,
            "width": width,
            "caption": row.get("caption") or "",
            "dynamism": score,
            **pack_tensor("frames", resize_center_crop(shot.frames[idx], height, width)),
        }
    ]

"""Per-input CPU work: one streamed decode → shots → dynamism → clips. Emits clip rows and reject rows.

This is the first Ray Data operator (a plain generator: `process_input(row, config)`). The video is
decoded once, window by window; shots come out of the online splitter as soon as they end and are
turned into rows right away, so a worker holds one shot's frames at a time, however long the file.
Every input yields at least one row, so nothing is lost: either clip rows of its accepted shots, or
reject rows that say why (per input for a bad manifest row, decode failures and too-short videos, per
shot for static or too-short shots). A video that decodes only partly (truncated, hung, resolution
change) keeps what decoded and adds a `warnings` row that says where and why it stopped. Every row
carries the input's `input_id`, which is how the job proves accepted + rejected = inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from data_prep.clips import plan_clips
from data_prep.decode import MAX_ASPECT_RATIO, DecodeError, stream_frames
from data_prep.dynamism import dynamism_score
from data_prep.schema import SCHEMA_VERSION, pack_tensor
from data_prep.shots import Shot, ShotSplitter
from mempack.encoders import resize_center_crop


@dataclass
class ClipSpec:
    """The CPU stages' settings (a sub-config of PrepConfig)."""

    height: int = 64
    width: int = 64
    target_fps: float = 8.0
    clip_frames: int = 33
    shot_threshold: float = 27.0
    min_shot_frames: int = 8
    max_shot_seconds: float = 60.0  # longer takes become several training videos (the paper's are <= 1 min)
    dynamism_threshold: float = 0.02
    dynamism_method: str = "dis"
    decode_timeout_s: float = 120.0  # longest silence of the decoder process before it is killed
    decode_max_side: int = 640  # decode at most this long a side (the clip size if larger); bounds memory
    max_aspect_ratio: float = MAX_ASPECT_RATIO
    max_shot_bytes: int = 1 << 30  # decoded frames one shot may hold before it is closed (bounds memory)

    def worker_memory_bytes(self) -> int:
        """What one prep task may hold at its peak, for Ray's scheduler: the shot buffer twice (closing a
        shot joins its windows), the shot's clips and the decoder's own process."""
        return 2 * self.max_shot_bytes + (768 << 20)


def reject(source_path: str, stage: str, reason: str, score: float | None = None, input_id: str | None = None) -> dict:
    return {"table": "rejects", "num_clips": 0, "input_id": input_id, "source_path": source_path, "stage": stage,
            "reason": reason, "score": score}


def warning(row: dict, stage: str, reason: str) -> dict:
    """A note on an input that was kept (e.g. decoded only partly), in the warnings table."""
    return {"table": "warnings", "num_clips": 0, "input_id": row["input_id"], "source_path": row["source_path"],
            "stage": stage, "reason": reason}


def process_input(row: dict, spec: ClipSpec) -> Iterator[dict]:
    """Rows for one input video (see module docstring)."""
    for out in _input_rows(row, spec):
        out["input_id"] = row["input_id"]
        yield out


def _input_rows(row: dict, spec: ClipSpec) -> Iterator[dict]:
    path = row["source_path"]
    if row.get("error"):
        yield reject(path, "source", row["error"])
        return
    try:
        info, windows = stream_frames(path, row.get("start_seconds"), row.get("end_seconds"),
                                      timeout_s=spec.decode_timeout_s,
                                      max_side=max(spec.decode_max_side, spec.height, spec.width),
                                      max_aspect_ratio=spec.max_aspect_ratio)
    except DecodeError as err:
        yield reject(path, "decode", str(err))
        return
    frame_bytes = info.height * info.width * 3
    splitter = ShotSplitter(info.fps, spec.shot_threshold, spec.min_shot_frames,
                            max(spec.clip_frames, round(spec.max_shot_seconds * info.fps)),
                            max(spec.max_shot_bytes, spec.clip_frames * frame_bytes))
    decoded = 0

    def shots() -> Iterator[Shot]:
        nonlocal decoded
        for window in windows:
            decoded += len(window)
            yield from splitter.push(window)
        yield from splitter.finish()

    stream, held = shots(), []
    for shot in stream:  # hold shots back until the video is known to hold one clip's worth of frames
        held.append(shot)
        if decoded >= spec.clip_frames:
            break
    if decoded < spec.clip_frames:
        # fewer source frames than one clip: nothing can be cut whatever the fps
        stopped = f" ({'; '.join(windows.warnings)})" if windows.warnings else ""
        yield reject(path, "clips", f"too_short: {decoded} frames < {spec.clip_frames} per clip{stopped}",
                     float(decoded))
        return
    for shot_index, shot in enumerate(itertools.chain(held, stream)):
        yield from shot_rows(row, shot_index, shot, info.fps, spec)
    for note in windows.warnings:
        yield warning(row, "decode", note)


def shot_rows(row: dict, shot_index: int, shot: Shot, src_fps: float, spec: ClipSpec) -> list[dict]:
    """One shot → its clip rows, or one reject row (static, or shorter than one clip)."""
    path = row["source_path"]
    video_id = f"{row['source']}:{row['source_id']}:shot{shot_index:03d}"
    fps = spec.target_fps if 0 < spec.target_fps < src_fps else src_fps
    score = dynamism_score(shot.frames, src_fps, method=spec.dynamism_method)
    if score < spec.dynamism_threshold:
        return [reject(path, "dynamism", f"static: shot {shot_index} dynamism {score:.4f} < "
                                         f"{spec.dynamism_threshold:g}", score)]
    plans = plan_clips(0, len(shot.frames), src_fps, spec.target_fps, spec.clip_frames)
    if not plans:
        n = len(plan_clips(0, len(shot.frames), src_fps, spec.target_fps, 1))
        return [reject(path, "clips", f"too_short: shot {shot_index} has {n} frames at {fps:g} fps "
                                      f"< {spec.clip_frames} per clip", float(n))]
    return [{
        "table": "clips", "schema_version": SCHEMA_VERSION, "video_id": video_id, "source": row["source"],
        "source_path": path, "shot_index": shot_index, "clip_index": clip_index, "num_clips": len(plans),
        "start_frame": shot.start + int(idx[0]), "num_frames": len(idx), "fps": float(fps),
        "height": spec.height, "width": spec.width, "caption": row.get("caption") or "",
        "dynamism": score, **pack_tensor("frames", resize_center_crop(shot.frames[idx], spec.height, spec.width)),
    } for clip_index, idx in enumerate(plans)]

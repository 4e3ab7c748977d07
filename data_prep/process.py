"""Per-input CPU work: decode once → shots → dynamism → clips. Emits clip rows and reject rows.

This is the first Ray Data operator (a plain function: `process_input(row, config)`). Every input
yields at least one row, so nothing is lost: either clip rows of its accepted shots, or reject rows
that say why (per input for decode failures, per shot for static or too-short shots).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from data_prep.clips import plan_clips
from data_prep.decode import DecodeError, decode_frames
from data_prep.dynamism import dynamism_score
from data_prep.schema import SCHEMA_VERSION, pack_tensor
from data_prep.shots import detect_shots
from mempack.encoders import resize_center_crop

log = logging.getLogger(__name__)


@dataclass
class ClipSpec:
    """The CPU stages' settings (a sub-config of PrepConfig)."""

    height: int = 64
    width: int = 64
    target_fps: float = 8.0
    clip_frames: int = 33
    shot_threshold: float = 27.0
    min_shot_frames: int = 8
    dynamism_threshold: float = 0.02
    dynamism_method: str = "dis"
    decode_timeout_s: float = 120.0


def reject(source_path: str, stage: str, reason: str, score: float | None = None) -> dict:
    return {"table": "rejects", "num_clips": 0, "source_path": source_path, "stage": stage, "reason": reason,
            "score": score}


def process_input(row: dict, spec: ClipSpec) -> list[dict]:
    """Rows for one input video (see module docstring)."""
    path = row["source_path"]
    try:
        info, frames = decode_frames(path, row.get("start_seconds"), row.get("end_seconds"),
                                     timeout_s=spec.decode_timeout_s)
    except DecodeError as err:
        return [reject(path, "decode", str(err))]
    if len(frames) < spec.clip_frames:
        # fewer source frames than one clip: nothing can be cut whatever the fps
        return [reject(path, "clips", f"too_short: {len(frames)} frames < {spec.clip_frames} per clip", float(len(frames)))]
    out: list[dict] = []
    fps = spec.target_fps if 0 < spec.target_fps < info.fps else info.fps
    shots = detect_shots(frames, info.fps, spec.shot_threshold, spec.min_shot_frames)
    for shot_index, (start, end) in enumerate(shots):
        video_id = f"{row['source']}:{row['source_id']}:shot{shot_index:03d}"
        score = dynamism_score(frames[start:end], info.fps, method=spec.dynamism_method)
        if score < spec.dynamism_threshold:
            out.append(reject(path, "dynamism", f"static: shot {shot_index} dynamism {score:.4f} < "
                                                f"{spec.dynamism_threshold:g}", score))
            continue
        plans = plan_clips(start, end, info.fps, spec.target_fps, spec.clip_frames)
        if not plans:
            n = len(plan_clips(start, end, info.fps, spec.target_fps, 1))
            out.append(reject(path, "clips", f"too_short: shot {shot_index} has {n} frames at {fps:g} fps "
                                             f"< {spec.clip_frames} per clip", float(n)))
            continue
        for clip_index, idx in enumerate(plans):
            clip = resize_center_crop(frames[idx], spec.height, spec.width)
            out.append({
                "table": "clips", "schema_version": SCHEMA_VERSION, "video_id": video_id, "source": row["source"],
                "source_path": path, "shot_index": shot_index, "clip_index": clip_index, "num_clips": len(plans),
                "start_frame": int(idx[0]), "num_frames": len(idx), "fps": float(fps),
                "height": spec.height, "width": spec.width, "caption": row.get("caption") or "",
                "dynamism": score, **pack_tensor("frames", clip),
            })
    return out

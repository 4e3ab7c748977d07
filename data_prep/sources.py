"""Where videos come from: a folder of files, a MiraData meta CSV or a Sekai annotation CSV.

Every source becomes the same list of `VideoInput` rows, one per video (or per annotated clip of a
video). Rows are never dropped here: a missing file is reported by the decode stage as a reject, so
accepted + rejected always equals the number of inputs.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
SEKAI_FPS = 30.0


@dataclass
class VideoInput:
    """One input: a file, an optional [start, end) window in seconds, a caption."""

    source: str
    source_path: str
    source_id: str
    caption: str = ""
    start_seconds: float | None = None
    end_seconds: float | None = None

    def to_row(self) -> dict:
        return asdict(self)


def _sidecar_caption(video: Path) -> str:
    """Caption from `name.txt` or `name.json` ({"caption": ...}) beside the video, else empty."""
    txt, js = video.with_suffix(".txt"), video.with_suffix(".json")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip()
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
            return str(data.get("caption", "")).strip() if isinstance(data, dict) else ""
        except json.JSONDecodeError:
            log.warning("unreadable caption file %s", js)
    return ""


def from_folder(folder: str | Path) -> list[VideoInput]:
    """Every video file under `folder` (recursively), sorted by path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    return [VideoInput("folder", str(p), p.relative_to(folder).with_suffix("").as_posix(), _sidecar_caption(p))
            for p in files]


def parse_hms(value: str) -> float:
    """'H:M:S.f' (or 'M:S.f', or seconds) → seconds."""
    parts = [float(p) for p in str(value).strip().split(":")]
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def _parse_mira_timestamp(value: str) -> tuple[float | None, float | None]:
    """MiraData's `timestamp` is a stringified list of two 'H:M:S.f' times."""
    text = (value or "").strip().strip("[]()")
    items = [s.strip().strip("'\"") for s in text.split(",") if s.strip()]
    if len(items) != 2:
        return None, None
    return parse_hms(items[0]), parse_hms(items[1])


def from_mira_csv(path: str | Path, video_root: str | Path) -> list[VideoInput]:
    """MiraData v1 meta CSV: `clip_id` (kept as a string), `file_path` under the video root,
    `timestamp` window, `dense_caption` (falling back to `short_caption`)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            start, end = _parse_mira_timestamp(rec.get("timestamp", ""))
            caption = (rec.get("dense_caption") or rec.get("short_caption") or "").strip()
            rows.append(VideoInput("mira", str(Path(video_root) / rec["file_path"]), str(rec["clip_id"]),
                                   caption, start, end))
    return rows


def from_sekai_csv(path: str | Path, video_root: str | Path) -> list[VideoInput]:
    """Sekai annotations: `videoFile` is `{youtube_id}_{start:07d}_{end:07d}.mp4` on a 30 fps timeline
    (split with rsplit so ids containing '_' survive); the file holds just that window."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            name = rec["videoFile"]
            stem = Path(name).stem
            try:
                youtube_id, start, end = stem.rsplit("_", 2)
                source_id = f"{youtube_id}_{int(start):07d}_{int(end):07d}"
            except ValueError:
                source_id = stem
            rows.append(VideoInput("sekai", str(Path(video_root) / name), source_id, (rec.get("caption") or "").strip()))
    return rows


def load_inputs(input_path: str | Path, video_root: str | Path | None = None, limit: int | None = None) -> list[VideoInput]:
    """Detect the source kind from `input_path` (folder, Mira CSV or Sekai CSV) and list its videos."""
    path = Path(input_path)
    if path.is_dir():
        inputs = from_folder(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        root = Path(video_root) if video_root else path.parent
        if "videoFile" in header:
            inputs = from_sekai_csv(path, root)
        elif "clip_id" in header and "file_path" in header:
            inputs = from_mira_csv(path, root)
        else:
            raise ValueError(f"{path}: not a MiraData (clip_id, file_path, ...) or Sekai (videoFile, caption, ...) CSV")
    else:
        raise FileNotFoundError(f"input not found or not a folder/CSV: {path}")
    return inputs[:limit] if limit else inputs

"""Where videos come from: a folder of files, a MiraData meta CSV or a Sekai annotation CSV.

Every source becomes the same list of `VideoInput` rows, one per input item: every file of a folder
(caption sidecars aside, whatever its extension: an unknown one is rejected by decode, not skipped), every
row of a manifest (several windows of one file are several inputs). Rows are never dropped here: a bad
manifest row becomes an input that carries its `error` and is rejected with it, and a missing file is a
decode reject, so accepted + rejected always equals the number of inputs. Each input has a unique,
stable `input_id` (`source:source_id`); ids that would collide (`a.mp4` beside `a.mov`, a repeated
`clip_id`) are made distinct, never merged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CAPTION_EXTENSIONS = (".txt", ".json")
SEKAI_FPS = 30.0


@dataclass
class VideoInput:
    """One input: a file, an optional [start, end) window in seconds, a caption; `error` is set when
    the manifest row itself is bad (the input is then rejected with it, without opening anything)."""

    source: str
    source_path: str
    source_id: str
    caption: str = ""
    start_seconds: float | None = None
    end_seconds: float | None = None
    error: str | None = None

    @property
    def input_id(self) -> str:
        return f"{self.source}:{self.source_id}"

    def to_row(self) -> dict:
        return {**asdict(self), "input_id": self.input_id}


def _unique_ids(inputs: list[VideoInput]) -> list[VideoInput]:
    """Give repeated source ids a suffix (~2, ~3, ... in input order) so no two inputs share an id."""
    counts, seen = Counter(i.source_id for i in inputs), Counter()
    for item in inputs:
        if counts[item.source_id] > 1:
            seen[item.source_id] += 1
            if seen[item.source_id] > 1:
                item.source_id = f"{item.source_id}~{seen[item.source_id]}"
    return inputs


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


def _is_sidecar(path: Path, stems: set[Path]) -> bool:
    """A .txt/.json beside a file of the same stem (its caption), not an input of its own."""
    return path.suffix.lower() in CAPTION_EXTENSIONS and path.with_suffix("") in stems


def from_folder(folder: str | Path) -> list[VideoInput]:
    """Every file under `folder` (recursively, sorted by path) except caption sidecars: a file prep cannot
    decode is still an input (rejected with its reason). Ids are paths without the extension, unless two
    files share one (`a.mp4`, `a.mov`): those keep their extension."""
    folder = Path(folder)
    entries = sorted(p for p in folder.rglob("*") if not p.is_dir())  # FIFOs and broken links too
    stems = {p.with_suffix("") for p in entries if p.suffix.lower() not in CAPTION_EXTENSIONS}
    files = [p for p in entries if not _is_sidecar(p, stems)]
    shared = Counter(p.with_suffix("") for p in files)
    return [
        VideoInput(
            "folder",
            str(p),
            (p if shared[p.with_suffix("")] > 1 else p.with_suffix("")).relative_to(folder).as_posix(),
            _sidecar_caption(p),
        )
        for p in files
    ]


def parse_hms(value: str) -> float:
    """'H:M:S.f' (or 'M:S.f', or seconds) → seconds; ValueError for anything else (NaN, inf, negative)."""
    try:
        parts = [float(p) for p in str(value).strip().split(":")]
    except ValueError:
        raise ValueError(f"not a time: {value!r}") from None
    if not parts or len(parts) > 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        raise ValueError(f"not a time: {value!r}")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def _parse_mira_timestamp(value: str) -> tuple[float, float]:
    """MiraData's `timestamp` is a stringified list of two 'H:M:S.f' times; ValueError if it is not."""
    text = (value or "").strip().strip("[]()")
    items = [s.strip().strip("'\"") for s in text.split(",") if s.strip()]
    if len(items) != 2:
        raise ValueError(f"timestamp {value!r} is not two times")
    start, end = parse_hms(items[0]), parse_hms(items[1])
    if end <= start:
        raise ValueError(f"timestamp {value!r} ends before it starts")
    return start, end


def _manifest_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) per data row; undecodable bytes are replaced, not fatal."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        return [(reader.line_num, rec) for rec in reader]


def from_mira_csv(path: str | Path, video_root: str | Path) -> list[VideoInput]:
    """MiraData v1 meta CSV: `clip_id` (kept as a string), `file_path` under the video root,
    `timestamp` window, `dense_caption` (falling back to `short_caption`). A row with no file or a bad
    timestamp becomes an input carrying its error (rejected alone, the rest of the manifest goes on)."""
    rows = []
    for line, rec in _manifest_rows(path):
        clip_id = str(rec.get("clip_id") or "").strip() or f"line{line}"
        file_path = str(rec.get("file_path") or "").strip()
        caption = str(rec.get("dense_caption") or rec.get("short_caption") or "").strip()
        start = end = error = None
        try:
            if not file_path:
                raise ValueError("no file_path")
            start, end = _parse_mira_timestamp(rec.get("timestamp") or "")
        except ValueError as err:
            error = f"bad_manifest_row: line {line}: {err}"
        rows.append(VideoInput("mira", str(Path(video_root) / file_path), clip_id, caption, start, end, error))
    return _unique_ids(rows)


def from_sekai_csv(path: str | Path, video_root: str | Path) -> list[VideoInput]:
    """Sekai annotations: `videoFile` is `{youtube_id}_{start:07d}_{end:07d}.mp4` on a 30 fps timeline
    (split with rsplit so ids containing '_' survive); the file holds just that window."""
    rows = []
    for line, rec in _manifest_rows(path):
        name = str(rec.get("videoFile") or "").strip()
        stem = Path(name).stem
        try:
            youtube_id, start, end = stem.rsplit("_", 2)
            source_id = f"{youtube_id}_{int(start):07d}_{int(end):07d}"
        except ValueError:
            source_id = stem or f"line{line}"
        error = None if name else f"bad_manifest_row: line {line}: no videoFile"
        rows.append(
            VideoInput(
                "sekai", str(Path(video_root) / name), source_id, str(rec.get("caption") or "").strip(), error=error
            )
        )
    return _unique_ids(rows)


def load_inputs(
    input_path: str | Path, video_root: str | Path | None = None, limit: int | None = None
) -> list[VideoInput]:
    """Detect the source kind from `input_path` (folder, Mira CSV or Sekai CSV) and list its videos."""
    path = Path(input_path)
    if path.is_dir():
        inputs = from_folder(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
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

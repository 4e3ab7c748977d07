"""Evaluate generated videos: VBench-style consistency, motion and drift metrics, as a table + JSON + MLflow.

    python pipelines/evaluate.py VIDEO_OR_DIR [VIDEO_OR_DIR ...] [--json PATH] [--dino DIR] [--clip DIR]
                                 [--mlflow-uri URI] [--experiment NAME] [--run-name NAME] [--model MODEL]

A folder means every *.mp4 in it (sorted). Without --dino/--clip the consistency metrics use weights-free
pixel features; model folders are read locally only, never downloaded. The flags are EvalConfig's keys
(mempack/eval/config.py), also settable with --set KEY=VALUE or a --config file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from mempack.config import ArgumentParser, add_config_arguments, add_config_file_arguments, config_from_args
from mempack.eval import ClipFeatures, DinoFeatures, evaluate_video, load_frames
from mempack.eval.config import EvalConfig


def parse_args(argv: list[str] | None = None) -> tuple[list[str], EvalConfig]:
    """(the videos and folders to evaluate, the evaluation's config)."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR", help="video files or folders of *.mp4")
    add_config_file_arguments(p, EvalConfig)
    add_config_arguments(p, EvalConfig)
    args = p.parse_args(argv)
    return args.inputs, config_from_args(p, EvalConfig, args)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their sorted *.mp4; a missing path or an empty folder is an input error."""
    videos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.mp4"))
            if not found:
                raise FileNotFoundError(f"no *.mp4 files in folder {path}")
            videos.extend(found)
        elif path.is_file():
            videos.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return videos


@contextlib.contextmanager
def quiet_stderr():
    """Silence native decoder chatter (ffmpeg/decord write straight to fd 2) so errors stay one clean line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def format_table(results: dict[str, dict[str, float]], mean: dict[str, float]) -> str:
    """One aligned row per video (plus the mean), one column per metric."""
    keys = list(mean)
    rows = [["video", *keys]]
    for name, metrics in [*results.items(), ("mean", mean)]:
        rows.append([name, *(f"{metrics[k]:.0f}" if k == "frames" else f"{metrics[k]:.4f}" for k in keys)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(lines)


def write_json_atomic(payload: dict, path: Path) -> Path:
    """Write JSON to a temp file in the target folder, then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def metric_prefixes(videos: list[Path]) -> list[str]:
    """MLflow-safe, unique per-video metric prefixes from the file stems."""
    out: list[str] = []
    for v in videos:
        base = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", v.stem) or "video"
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return out


def log_mlflow(
    client, run_id: str, config: EvalConfig, inputs: list[str], videos: list[Path], payload: dict, json_path: Path
) -> None:
    """Mean metrics, per-video metrics prefixed by stem, params, and the JSON artifact, into an open run."""
    from mlflow.entities import Metric, Param

    metrics = [Metric(k, v, 0, 0) for k, v in payload["mean"].items()]
    for prefix, video in zip(metric_prefixes(videos), videos, strict=True):
        metrics += [Metric(f"{prefix}.{k}", v, 0, 0) for k, v in payload["videos"][str(video)].items()]
    params = [
        Param("videos", str(len(videos))),
        Param("dino", config.dino or "pixel"),
        Param("clip", config.clip or "pixel"),
        Param("inputs", ",".join(inputs)[:500]),
    ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
    client.log_artifact(run_id, str(json_path))


def evaluate_and_report(config: EvalConfig, inputs: list[str], videos: list[Path], json_path: Path) -> dict:
    """Evaluate, print the table, write the JSON; inside an MLflow run (FAILED if this fails) with --mlflow-uri."""
    if not config.mlflow_uri:
        return _evaluate_to_json(config, videos, json_path)
    from mempack import tracking

    default_name = f"eval-{videos[0].stem}" if len(videos) == 1 else f"eval-{len(videos)}-videos"
    with tracking.tracked_run(
        config.mlflow_uri,
        config.experiment,
        run_name=config.run_name or default_name,
        entry_point="pipelines/evaluate.py",
    ) as (client, run_id):
        tracking.tag_model_used(client, run_id, config.model, config.mlflow_uri)
        payload = _evaluate_to_json(config, videos, json_path)
        log_mlflow(client, run_id, config, inputs, videos, payload, json_path)
    print(f"mlflow run {run_id} in experiment {config.experiment!r} at {config.mlflow_uri}")
    return payload


def _evaluate_to_json(config: EvalConfig, videos: list[Path], json_path: Path) -> dict:
    payload = run(config, videos)
    print(format_table(payload["videos"], payload["mean"]))
    write_json_atomic(payload, json_path)
    if config.json:
        print(f"wrote {json_path}")
    return payload


def run(config: EvalConfig, videos: list[Path]) -> dict:
    """Evaluate every video; returns the JSON payload."""
    dino = DinoFeatures(config.dino) if config.dino else None
    clip = ClipFeatures(config.clip) if config.clip else None
    results: dict[str, dict[str, float]] = {}
    # on a terminal only (disable=None), so captured logs and one-line errors stay clean
    bar = tqdm(videos, desc="evaluating", unit="video", disable=True if config.quiet else None)
    for video in bar:
        bar.set_postfix_str(f"{video.name}: decoding")
        with quiet_stderr():  # restored before any error propagates to main's one-line report
            frames, fps = load_frames(video)
        bar.set_postfix_str(f"{video.name}: {len(frames)} frames, metrics")
        results[str(video)] = evaluate_video(frames, fps=fps, dino=dino, clip=clip)
    bar.close()
    keys = next(iter(results.values())).keys()
    mean = {k: float(sum(m[k] for m in results.values()) / len(results)) for k in keys}
    return {"videos": results, "mean": mean}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    inputs, config = parse_args(argv)
    try:
        videos = expand_inputs(inputs)
        with tempfile.TemporaryDirectory() as tmp:
            json_path = Path(config.json) if config.json else Path(tmp) / "eval.json"
            evaluate_and_report(config, inputs, videos, json_path)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

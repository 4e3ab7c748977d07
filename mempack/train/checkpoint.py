"""What makes a run resumable: the same data and the same training-defining settings.

`--resume` continues a run from its last checkpoint and skips the videos it had trained on; with other
data or another learning rate, model, stage or ZeRO layout the result would silently be neither run.
A new run writes a digest of both beside its MLflow run file; a resume compares and refuses a mismatch
with one line naming what changed. Settings that only say how long or how the run is watched (steps,
epochs, checkpoint interval, tracking, validation samples, Ray placement) may change on resume; the rest
must match. Every setting is in exactly one of the two lists, so a new one needs a decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from mempack.layout import DIGEST_FILE
from mempack.train.config import TrainConfig

log = logging.getLogger(__name__)
MAY_CHANGE_ON_RESUME = frozenset({
    # how long, where, and how often a checkpoint is kept
    "output", "max_steps", "epochs", "checkpoint_every", "max_failures", "max_nonfinite_steps",
    # how the run is watched: tracking and validation videos
    "mlflow_uri", "experiment", "run_name", "log_every", "progress_every", "system_metrics", "register_model",
    "sample_every", "sample_image", "sample_prompt", "sample_sections", "sample_steps",
    # Ray placement
    "cpus_per_worker", "placement_strategy",
})
MUST_MATCH_ON_RESUME = frozenset({
    # what is trained, from what, on what
    "stage", "data", "preset", "pretrained", "model", "init", "seed", "forcing",
    # the optimisation
    "lr", "memory_lr", "trainable", "weight_decay", "grad_clip", "warmup_steps", "ema_decay", "batch_size",
    # the distributed layout a checkpoint is written in
    "num_workers", "use_gpu", "deepspeed", "zero_stage", "gradient_checkpointing",
})


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_digest(config: TrainConfig) -> dict[str, str]:
    """One short hash per setting that defines the run (MUST_MATCH_ON_RESUME)."""
    settings = asdict(config)
    undecided = set(settings) - MAY_CHANGE_ON_RESUME - MUST_MATCH_ON_RESUME
    if undecided:  # a new setting: say whether a resume may change it before any run can use it
        raise RuntimeError(f"{sorted(undecided)}: in neither MAY_CHANGE_ON_RESUME nor MUST_MATCH_ON_RESUME")
    return {k: _sha(settings[k]) for k in sorted(MUST_MATCH_ON_RESUME)}


def data_digest(root: str | Path, index: dict[int, list[str]]) -> str:
    """The curriculum index (video ids and clip counts) and every Parquet file's name and size: a rewritten
    prep output changes it, reading it costs directory listings only."""
    root = Path(root)
    files = sorted((str(p.relative_to(root)), p.stat().st_size)
                   for table in ("clips", "videos") for p in (root / table).rglob("*.parquet"))
    return _sha({"index": {str(k): v for k, v in index.items()}, "files": files})


class ResumeMismatchError(ValueError):
    """A resume with other data or other run-defining settings."""


def check_or_write(config: TrainConfig, index: dict[int, list[str]], out: Path, resume: bool) -> None:
    """New run: write the digest. Resume: compare with the one written when the run started."""
    path = out / DIGEST_FILE
    current = {"data": data_digest(config.data, index), "config": config_digest(config)}
    if not resume or not path.is_file():
        if resume:
            log.warning("%s has no %s (a run from an older mempack): cannot check what it was trained on", out,
                        DIGEST_FILE)
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2))
        return
    saved = json.loads(path.read_text())
    if saved.get("data") != current["data"]:
        raise ResumeMismatchError(f"--resume: the data at {config.data} is not the data this run started with "
                                  "(videos or Parquet files changed); resume with that data or start a new run")
    # only the settings that must match: a digest written before a setting moved to MAY_CHANGE still resumes
    changed = sorted(k for k in current["config"] if saved.get("config", {}).get(k) != current["config"][k])
    if changed:
        raise ResumeMismatchError(f"--resume: {', '.join(changed)} differ(s) from the run being resumed; "
                                  "use the run's settings or start a new run")

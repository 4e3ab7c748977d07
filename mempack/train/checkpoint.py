"""Checkpoints: what makes a run resumable, where and how often checkpoints are written, how big they are.

`--resume` continues a run from its last checkpoint and skips the videos it had trained on; with other
data or another learning rate, model, stage or ZeRO layout the result would silently be neither run.
A new run writes a digest of both beside its MLflow run file; a resume compares and refuses a mismatch
with one line naming what changed. The rule is by part of TrainConfig: the parts that only say how long or
how the run is watched (schedule, checkpoint, tracking, validation, placement, and the output folder) may
change on resume; the parts that say what is trained and how (model, forcing, data, optim, distributed, and
stage, preset, weights, seed) must match. Every part is in exactly one of the two sets, so a new one needs
a decision.

Checkpoints at real size (docs/checkpoints.md): written by every rank straight into the run's storage (or a
scratch disk the user names, uploaded by Ray in the background), only what trains plus what resuming needs,
on a wall-clock interval by default; `checkpoint_size` is what `train.py --plan` prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

from mempack.config import flatten
from mempack.layout import DIGEST_FILE
from mempack.train.config import TrainConfig

log = logging.getLogger(__name__)
# By part of TrainConfig (and its top-level settings): every one is in exactly one set, so a new part needs a
# decision, and a setting added to a part follows its part's rule.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "output",  # where the run's folder is
        "schedule",  # how long: steps, epochs, tolerated non-finite steps
        "checkpoint",  # how often a checkpoint is kept, where it is staged, how many failures are survived
        "tracking",  # how the run is watched and reported
        "validation",  # the validation videos
        "placement",  # where Ray places the workers
    }
)
MUST_MATCH_ON_RESUME = frozenset(
    {
        # what is trained, from what, on what
        "stage",
        "preset",
        "pretrained",
        "init",
        "seed",
        "model",
        "forcing",
        "data",
        # the optimisation
        "optim",
        # the distributed layout a checkpoint is written in
        "distributed",
    }
)
DIGEST_VERSION = 2  # 2: one hash per leaf of the must-match parts ("settings"); 1: per flat setting ("config")


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_digest(config: TrainConfig) -> dict[str, str]:
    """One short hash per leaf setting of the parts that define the run (MUST_MATCH_ON_RESUME), dotted."""
    settings = asdict(config)
    undecided = set(settings) - MAY_CHANGE_ON_RESUME - MUST_MATCH_ON_RESUME
    if undecided:  # a new part: say whether a resume may change it before any run can use it
        raise RuntimeError(f"{sorted(undecided)}: in neither MAY_CHANGE_ON_RESUME nor MUST_MATCH_ON_RESUME")
    must = {k: v for k, v in settings.items() if k in MUST_MATCH_ON_RESUME}
    return {k: _sha(v) for k, v in sorted(flatten(must).items())}


def _flat_digest_changes(saved: dict[str, str], config: TrainConfig) -> list[str]:
    """The settings that differ from a version-1 digest (flat names, one hash each, `model` and `forcing`
    hashed whole), skipping those whose part may now change."""
    changed = []
    for name, digest in saved.items():
        dotted = TrainConfig.ALIASES.get(name, name)
        if dotted.split(".")[0] in MAY_CHANGE_ON_RESUME:
            continue
        try:
            value = operator.attrgetter(dotted)(config)
        except AttributeError:  # a setting this mempack no longer has: nothing to compare
            continue
        if _sha(asdict(value) if is_dataclass(value) else value) != digest:
            changed.append(dotted)
    return changed


def _flag(dotted: str) -> str:
    """How the user sets `dotted`: its flat flag where it has one (`optim.lr` → `--lr`)."""
    flat = {v: k for k, v in TrainConfig.ALIASES.items()}.get(dotted, dotted)
    return "--" + flat.replace("_", "-")


def data_digest(root: str | Path, index: dict[int, list[str]]) -> str:
    """The curriculum index (video ids and clip counts) and every Parquet file's name and size: a rewritten
    prep output changes it, reading it costs directory listings only."""
    root = Path(root)
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for table in ("clips", "videos")
        for p in (root / table).rglob("*.parquet")
    )
    return _sha({"index": {str(k): v for k, v in index.items()}, "files": files})


class ResumeMismatchError(ValueError):
    """A resume with other data or other run-defining settings."""


def check_or_write(config: TrainConfig, index: dict[int, list[str]], out: Path, resume: bool) -> None:
    """New run: write the digest. Resume: compare with the one written when the run started."""
    path = out / DIGEST_FILE
    current = {
        "version": DIGEST_VERSION,
        "data": data_digest(config.data.path, index),
        "settings": config_digest(config),
    }
    if not resume or not path.is_file():
        if resume:
            log.warning(
                "%s has no %s (a run from an older mempack): cannot check what it was trained on", out, DIGEST_FILE
            )
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2))
        return
    saved = json.loads(path.read_text())
    if saved.get("data") != current["data"]:
        raise ResumeMismatchError(
            f"--resume: the data at {config.data.path} is not the data this run started with "
            "(videos or Parquet files changed); resume with that data or start a new run"
        )
    if "settings" in saved:
        # a leaf the saved run has no hash of (a setting added since) differs too: its old behaviour is unknown
        changed = [k for k, v in current["settings"].items() if saved["settings"].get(k) != v]
    else:  # a digest written before the config had parts
        changed = _flat_digest_changes(saved.get("config", {}), config)
    if changed:
        named = ", ".join(f"{k} ({_flag(k)})" for k in changed)
        raise ResumeMismatchError(
            f"--resume: {named} {'differs' if len(changed) == 1 else 'differ'} from the run being resumed; "
            "use the run's settings or start a new run"
        )


# ----- where checkpoints are written, how often, and how big they are ---------------------------------
CHECKPOINT_TAG = "state"  # DeepSpeed's tag folder; not "latest": DeepSpeed writes a file of that name
OPTIMIZER_BYTES_PER_TRAINED = 12  # ZeRO's fp32 master weights + Adam's two fp32 moments, per trained parameter
EMA_BYTES_PER_TRAINED = 4  # the EMA shadow, fp32, per trained parameter (mempack.train.ema)
CHECKPOINTS_ON_DISK = 3  # Ray keeps the newest two (CheckpointConfig(num_to_keep=2)); a third is being written


def checkpoint_dir_name(step: int, restarts: int) -> str:
    """The same name on every rank (all ranks restore the same state), unique across attempts: a restarted
    attempt never writes into a folder Ray already registered (its bookkeeping would later delete it)."""
    return f"checkpoint_step{step:07d}_attempt{restarts}"


def checkpoint_folder(run_storage: str | Path, scratch: str | None, name: str, rank: int) -> tuple[Path, bool]:
    """(where this rank writes the checkpoint, whether Ray must upload it).

    Without `scratch` every rank writes its shard straight into the run's storage (shared by all nodes),
    into the one folder Ray will register: nothing is staged or copied. With `scratch` (a fast node-local
    disk the user names) each rank writes into its own folder there and Ray uploads it in the background
    and deletes it after; one folder per rank, so no rank deletes what another still uploads.
    """
    if scratch:
        return Path(scratch) / Path(run_storage).name / name / f"rank{rank}", True
    return Path(run_storage) / name, False


def folder_bytes(folder: str | Path) -> int:
    """Sum of the sizes of the files under `folder` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


class CheckpointSchedule:
    """When to checkpoint: every `every_steps` optimizer steps and/or every `every_minutes` of wall time.

    The time rule is decided on rank 0 and broadcast (`sync`), so every rank checkpoints at the same step
    even though their clocks differ; the step rule needs no communication.
    """

    def __init__(self, every_steps: int, every_minutes: float, sync=None, clock=time.monotonic):
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60.0
        self.sync, self.clock = sync, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        if self.every_seconds <= 0:
            return by_steps
        by_time = self.clock() - self.last >= self.every_seconds
        if self.sync is not None:
            by_time = self.sync(by_time)
        return by_steps or by_time

    def saved(self) -> None:
        self.last = self.clock()


def rank0_decides(device) -> callable:
    """A `CheckpointSchedule.sync`: every rank takes rank 0's answer (one 1-element broadcast per step)."""
    import torch
    import torch.distributed as dist

    def sync(flag: bool) -> bool:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    return sync


@dataclass
class CheckpointSize:
    """Bytes of one training checkpoint and of the storage a run needs (`train.py --plan`)."""

    weights: int  # the trained parameters in the training dtype (DeepSpeed's module state)
    optimizer: int  # fp32 master weights and Adam moments of the trained parameters
    ema: int  # the EMA shadow (0 without --ema-decay)
    export: int  # the final export's transformer + semantic_pack weights (every parameter, training dtype)

    @property
    def checkpoint(self) -> int:
        return self.weights + self.optimizer + self.ema

    @property
    def run_storage(self) -> int:
        """Checkpoints Ray keeps plus the one being written, and the export (model/, and model_ema/ with
        an EMA) in the final checkpoint, which the run folder's model/ hard-links. Encoders are not counted."""
        return CHECKPOINTS_ON_DISK * self.checkpoint + self.export * (2 if self.ema else 1)


def checkpoint_size(
    total: int, trained: int, weight_bytes: int, zero_stage: int, ema: bool, world: int = 1
) -> CheckpointSize:
    """What `engine.save_checkpoint(..., exclude_frozen_parameters=True)` (+ the EMA) writes, summed over ranks.

    Frozen parameters are never written (resume rebuilds them from the run's init weights). Under ZeRO-3
    the module state holds no weights (ZeRO's fp32 partitions are the weights) and each rank's EMA covers its
    partition; under ZeRO-0/1/2 rank 0 writes the trained parameters in the training dtype and every rank
    its whole EMA. Checked against what DeepSpeed writes by bench/checkpoint_bytes.py (within 0.5%).
    """
    weights = 0 if zero_stage == 3 else weight_bytes * trained
    ema_copies = 0 if not ema else (1 if zero_stage == 3 else world)
    return CheckpointSize(
        weights,
        OPTIMIZER_BYTES_PER_TRAINED * trained,
        EMA_BYTES_PER_TRAINED * trained * ema_copies,
        weight_bytes * total,
    )


def format_checkpoint_size(size: CheckpointSize) -> str:
    """The --plan lines: one checkpoint, and the storage the run folder needs."""
    gb = 1e9
    return (
        f"  checkpoint        {size.checkpoint / gb:8.2f} GB each ({size.weights / gb:.2f} weights + "
        f"{size.optimizer / gb:.2f} optimizer + {size.ema / gb:.2f} EMA; frozen weights are not saved)\n"
        f"  run storage       {size.run_storage / gb:8.2f} GB ({CHECKPOINTS_ON_DISK} checkpoints + the export, "
        f"{size.export / gb:.2f} GB{' x 2 with the EMA' if size.ema else ''})"
    )


def plan_checkpoint_size(plan, ema: bool) -> CheckpointSize:
    """`checkpoint_size` of a `mempack.train.plan.MemoryPlan` (its parameter counts, dtype and ZeRO stage)."""
    weight_bytes = 2 if plan.dtype in ("bfloat16", "float16") else 4
    return checkpoint_size(plan.counts.total, plan.counts.trainable, weight_bytes, plan.zero_stage, ema, plan.world)

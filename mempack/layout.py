"""The output tree: every folder and file the stages write, named here and nowhere else.

One root (nanoGPT's `out_dir`, torchtitan's dump folder); everything else is relative to it:

    outputs/                  ROOT (relative to the current folder)
      prep/                   prep's Parquet tables, summary.json and rejects
      train/stage1/           a training run folder (stage 2 beside it):
        model/                  the export, a complete MemoryPackPipeline folder (its insides: mempack/export.py)
        model_ema/              the EMA weights' export, when ema_decay > 0
        samples/                validation videos
        ray/                    Ray Train's storage: checkpoints of every attempt
        mlflow_run.json         the stage's MLflow run, how later stages and tools find it
        run_digest.json         the settings a resume must keep
      infer/                  generated videos
      eval/                   evaluation reports
      mlflow.db               the default MLflow store (its artifacts in mlartifacts/ beside it)

Each function takes the root (default `ROOT`), so a changed root moves the whole tree.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("outputs")
STAGES = (1, 2)

# inside a training run folder
EXPORT_DIR = "model"
EXPORT_EMA_DIR = "model_ema"
SAMPLES_DIR = "samples"
RAY_DIR = "ray"
RUN_FILE = "mlflow_run.json"  # {"run_id", "tracking_uri"} beside a stage's output: how later stages find its run
DIGEST_FILE = "run_digest.json"

# inside prep's output folder
SUMMARY_FILE = "summary.json"


def prep_dir(root: str | Path = ROOT) -> Path:
    """Where prep writes its tables and summary (and training reads them)."""
    return Path(root) / "prep"


def train_dir(root: str | Path = ROOT) -> Path:
    """The folder holding one run folder per stage."""
    return Path(root) / "train"


def stage_name(stage: int) -> str:
    """A stage's run folder name: stage 2 finds stage 1's export beside its own folder by this name."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage}")
    return f"stage{stage}"


def stage_dir(stage: int, root: str | Path = ROOT) -> Path:
    """A training stage's run folder (export, samples, Ray storage, run files)."""
    return train_dir(root) / stage_name(stage)


def infer_dir(root: str | Path = ROOT) -> Path:
    """Where generated videos go by default."""
    return Path(root) / "infer"


def eval_dir(root: str | Path = ROOT) -> Path:
    """Where evaluation reports go by default."""
    return Path(root) / "eval"


def mlflow_db(root: str | Path = ROOT) -> Path:
    """The default MLflow store: a sqlite file, so runs started from anywhere in the tree meet in one place."""
    return Path(root) / "mlflow.db"


def newest_export(train: str | Path | None = None) -> Path | None:
    """The stage-2 export under `train` (default `train_dir()`), else the stage-1 one, else None.

    An export counts when its model config (`mempack.json`) is there; exports are renamed into place whole.
    """
    from mempack.model.memorypack import MemoryPackConfig  # torch: only when asked, not for every path lookup

    train = train_dir() if train is None else Path(train)
    for stage in reversed(STAGES):
        export = train / stage_name(stage) / EXPORT_DIR
        if MemoryPackConfig.saved_in(export):
            return export
    return None

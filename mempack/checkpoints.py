"""Finding and loading what training exported, for inference.

A training run folder (`outputs/train/stage2`) holds `model/` (mempack.json + transformer/ +
semantic_pack/, safetensors) and `encoders.json` (which encoders made the training latents, so
inference decodes with the same VAE). The same layout is logged to MLflow as the run's `model`
artifact. A plain FramePack-F1 transformer folder in diffusers layout loads too (SemanticPack then
starts fresh).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mempack.model import MemoryPackTransformer

log = logging.getLogger(__name__)

EXPORT_DIR = "model"
ENCODERS_FILE = "encoders.json"
STAGE_ORDER = ("stage2", "stage1")  # the newest stage first


class CheckpointError(ValueError):
    """A checkpoint that is missing or cannot be loaded: one clear line for the CLI."""


@dataclass
class EncoderSpec:
    """Which encoders to build: a preset's random `tiny` set (path None, seed) or real weights."""

    preset: str = "tiny"
    path: str | None = None
    seed: int = 0


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder, an export or a diffusers transformer folder → the folder `from_pretrained` takes."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    for candidate in (path / EXPORT_DIR, path):
        if (candidate / "mempack.json").is_file() or (candidate / "config.json").is_file():
            return candidate
        if (candidate / "transformer" / "config.json").is_file():
            return candidate
    raise CheckpointError(f"no exported model in {path} (expected {EXPORT_DIR}/mempack.json or a diffusers config.json)")


def newest_training_export(root: str | Path = "outputs/train") -> Path | None:
    """The stage-2 export under `root`, else the stage-1 one, else None."""
    for stage in STAGE_ORDER:
        if (Path(root) / stage / EXPORT_DIR / "mempack.json").is_file():
            return Path(root) / stage / EXPORT_DIR
    return None


def encoder_spec(model_dir: Path, preset: str) -> EncoderSpec:
    """encoders.json beside or inside the export; the preset's defaults when there is none."""
    for candidate in (model_dir / ENCODERS_FILE, model_dir.parent / ENCODERS_FILE):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
                return EncoderSpec(data.get("preset", preset), data.get("path"), int(data.get("seed", 0)))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise CheckpointError(f"corrupt {candidate}: {err}") from None
    return EncoderSpec(preset=preset)


def load_model(
    model_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    use_semantic_pack: bool | None = None,
) -> MemoryPackTransformer:
    """Load an export; any failure (truncated safetensors, bad JSON, wrong sizes) becomes a CheckpointError."""
    overrides = {} if use_semantic_pack is None else {"use_semantic_pack": use_semantic_pack}
    try:
        model = MemoryPackTransformer.from_pretrained(model_dir, dtype=dtype, device=device, **overrides)
    except Exception as err:  # noqa: BLE001 — safetensors, json, torch and diffusers raise many kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load checkpoint {model_dir}: {reason}") from None
    return model.eval()


def download_mlflow_model(uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """`runs:/<id>/model` (or any artifact URI) → a local folder; only reads the given tracking store."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri, dst_path=str(dst))
    except Exception as err:  # noqa: BLE001 — MlflowException, OSError
        raise CheckpointError(f"cannot fetch MLflow model {uri}: {str(err).splitlines()[0]}") from None
    return Path(local)

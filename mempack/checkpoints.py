"""Finding and loading what training exported, for inference.

A training run folder (`outputs/train/stage2`) holds `model/`: a complete `MemoryPackPipeline` folder
(model_index.json, mempack.json, transformer/, semantic_pack/, the encoders, scheduler/; see
`mempack.export`), also logged to MLflow as the run's model. Older exports (model/ without
model_index.json, an `encoders.json` beside it naming the encoders) and a plain FramePack-F1
transformer folder in diffusers layout load too when their encoders are known: named by
`encoders.json` or given as `--encoders DIR`. A model whose encoders are unknown is an error, never
a silent fallback to random encoders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mempack.model import MemoryPackTransformer

if TYPE_CHECKING:
    from mempack.encoders import VideoEncoders
    from mempack.pipeline import MemoryPackPipeline

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
    if (path / "MLmodel").is_file():  # a downloaded MLflow Model (mempack.mlflow_model)
        from mempack.mlflow_model import pipeline_dir_of

        try:
            return pipeline_dir_of(path)
        except (FileNotFoundError, ValueError) as err:
            raise CheckpointError(str(err)) from None
    for candidate in (path / EXPORT_DIR, path):
        if (candidate / "model_index.json").is_file():
            return candidate
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


def encoder_spec(model_dir: Path) -> EncoderSpec | None:
    """The encoders an older export names in encoders.json (inside or beside it); None when it names none."""
    for candidate in (model_dir / ENCODERS_FILE, model_dir.parent / ENCODERS_FILE):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
                if data.get("bundled"):  # a pipeline folder's provenance note: the encoders are inside
                    continue
                return EncoderSpec(data["preset"], data.get("path"), int(data.get("seed", 0)))
            except (json.JSONDecodeError, TypeError, ValueError, KeyError) as err:
                raise CheckpointError(f"corrupt {candidate}: {err!r}") from None
    return None


def load_pipeline(
    path: str | Path | None, *, encoders: str | None = None, preset: str = "tiny",
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> "MemoryPackPipeline":
    """The pipeline to sample: a pipeline folder, an older export or bare weights + `encoders`.

    path None samples the preset's RANDOM weights (a smoke test before training, said loudly).
    `encoders` (a folder of real encoder weights) replaces or supplies the encoder components.
    Every failure is a CheckpointError with one line.
    """
    from mempack.pipeline import MemoryPackPipeline

    if path is None:
        log.warning("no trained weights: sampling the %r preset's RANDOM weights (train first, or pass --checkpoint)",
                    preset)
        model = MemoryPackTransformer.from_preset(preset, seed=0, device=device).to(dtype).eval()
        return MemoryPackPipeline.from_model(model, _build_encoders(EncoderSpec(preset, encoders), device, dtype))
    folder = resolve_model_dir(path)
    if (folder / "model_index.json").is_file():
        try:
            pipe = MemoryPackPipeline.from_pretrained(folder, dtype=dtype)
        except Exception as err:  # noqa: BLE001 — safetensors, json, torch, transformers and diffusers raise many kinds
            raise CheckpointError(f"cannot load checkpoint {folder}: {_first_line(err)}") from None
        if encoders:
            pipe.register_modules(**_encoder_components(
                _build_encoders(EncoderSpec(pipe.preset_name, encoders), "cpu", dtype)))
        return pipe.to(device)
    model = load_model(folder, device=device, dtype=dtype)
    spec = EncoderSpec(model.config.preset, encoders) if encoders else encoder_spec(folder)
    if spec is None:
        raise CheckpointError(f"{folder} holds no encoders and names none (no encoders.json): "
                              "pass --encoders DIR, the weights its training data was encoded with")
    return MemoryPackPipeline.from_model(model, _build_encoders(spec, device, dtype))


def _build_encoders(spec: EncoderSpec, device, dtype) -> "VideoEncoders":
    from mempack.encoders import VideoEncoders

    try:
        return VideoEncoders.build(spec.preset, spec.path, device=device, dtype=dtype, seed=spec.seed)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot build encoders ({spec.preset}, {spec.path}): {_first_line(err)}") from None


def _encoder_components(encoders) -> dict:
    return {name: getattr(encoders, name) for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                       "tokenizer_2", "image_encoder", "feature_extractor")}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_model(
    model_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    use_semantic_pack: bool | None = None,
) -> MemoryPackTransformer:
    """Load an export; any failure (truncated safetensors, bad JSON, wrong sizes) becomes a CheckpointError."""
    overrides = {} if use_semantic_pack is None else {"use_semantic_pack": use_semantic_pack}
    try:
        model = MemoryPackTransformer.from_pretrained(model_dir, dtype=dtype, device=device, **overrides)
    except Exception as err:  # noqa: BLE001 — safetensors, json, torch and diffusers raise many kinds
        raise CheckpointError(f"cannot load checkpoint {model_dir}: {_first_line(err)}") from None
    return model.eval()


def download_mlflow_model(uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """`runs:/<id>/model` (or any artifact URI) → a local folder; only reads the given tracking store."""
    import mlflow

    if tracking_uri:  # also the registry's store: left unset, MLflow opens ./mlflow.db in the working directory
        mlflow.set_tracking_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri, dst_path=str(dst))
    except Exception as err:  # noqa: BLE001 — MlflowException, OSError
        raise CheckpointError(f"cannot fetch MLflow model {uri}: {str(err).splitlines()[0]}") from None
    return Path(local)

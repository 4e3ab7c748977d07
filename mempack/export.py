"""The export folder: written, found and loaded here, one owner for its names.

A training run folder (`outputs/train/stage2`) holds `model/`: a complete `MemoryPackPipeline` folder
(model_index.json, mempack.json, transformer/, semantic_pack/, the encoders, scheduler/), also logged to
MLflow as the run's model.

Writing. Training checkpoints hold the trained part only (`mempack.json` + `transformer/` +
`semantic_pack/`). A user on another machine needs the encoders that made the training latents too, or
the model decodes with a VAE it never saw. So the export bundles them: the tiny preset's seeded random
encoders are re-created and saved; real encoder weights are linked (same filesystem) or copied from the
folder prep was given. The result has `model_index.json` and only relative references, so the folder can
be copied, logged to MLflow, and opened with `MemoryPackPipeline.from_pretrained(folder)`. Exports are
atomic: everything is written to a staging folder beside the destination, checked, and renamed into
place; a failed export leaves the previous one untouched. Missing encoder weights are an `ExportError`,
never a silent fallback to random encoders.

Finding and loading. Older exports (model/ without model_index.json, an `encoders.json` beside it naming
the encoders) and a plain FramePack-F1 transformer folder in diffusers layout load too when their
encoders are known: named by `encoders.json` or given as `--encoders DIR`. A model whose encoders are
unknown is an error, never a silent fallback to random encoders.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mempack.layout import EXPORT_DIR
from mempack.model import MemoryPackTransformer
from mempack.model.memorypack import BACKBONE_DIR, CONFIG_NAME, SEMANTIC_PACK_DIR, MemoryPackConfig
from mempack.schema import data_encoders, read_summary, summary_path

if TYPE_CHECKING:
    from mempack.encoders import VideoEncoders
    from mempack.pipeline import MemoryPackPipeline

log = logging.getLogger(__name__)

ENCODERS_FILE = "encoders.json"


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
        if MemoryPackConfig.saved_in(candidate) or (candidate / "config.json").is_file():
            return candidate
        if (candidate / "transformer" / "config.json").is_file():
            return candidate
    raise CheckpointError(
        f"no exported model in {path} (expected {EXPORT_DIR}/mempack.json or a diffusers config.json)"
    )


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
    path: str | Path | None,
    *,
    encoders: str | None = None,
    preset: str = "tiny",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
) -> MemoryPackPipeline:
    """The pipeline to sample: a pipeline folder, an older export or bare weights + `encoders`.

    The VAE loads in `vae_dtype` (None: `resolve_vae_dtype("auto", device)`, fp32 on a CPU, fp16 on a GPU),
    everything else in `dtype`.

    path None samples the preset's RANDOM weights (a smoke test before training, said loudly).
    `encoders` (a folder of real encoder weights) replaces or supplies the encoder components.
    Every failure is a CheckpointError with one line.
    """
    from mempack.encoders import resolve_vae_dtype
    from mempack.pipeline import MemoryPackPipeline

    vae = vae_dtype if vae_dtype is not None else resolve_vae_dtype("auto", device)
    if path is None:
        log.warning(
            "no trained weights: sampling the %r preset's RANDOM weights (train first, or pass --checkpoint)", preset
        )
        model = MemoryPackTransformer.from_preset(preset, seed=0, device=device).to(dtype).eval()
        return MemoryPackPipeline.from_model(model, _build_encoders(EncoderSpec(preset, encoders), device, dtype, vae))
    folder = resolve_model_dir(path)
    if (folder / "model_index.json").is_file():
        try:
            pipe = MemoryPackPipeline.from_pretrained(folder, dtype={"default": dtype, "vae": vae})
        except Exception as err:  # noqa: BLE001 — safetensors, json, torch, transformers and diffusers raise many kinds
            raise CheckpointError(f"cannot load checkpoint {folder}: {_first_line(err)}") from None
        if encoders:
            pipe.register_modules(
                **_encoder_components(_build_encoders(EncoderSpec(pipe.preset_name, encoders), "cpu", dtype, vae))
            )
        return pipe.to(device)
    model = load_model(folder, device=device, dtype=dtype)
    spec = EncoderSpec(model.config.preset, encoders) if encoders else encoder_spec(folder)
    if spec is None:
        raise CheckpointError(
            f"{folder} holds no encoders and names none (no encoders.json): "
            "pass --encoders DIR, the weights its training data was encoded with"
        )
    return MemoryPackPipeline.from_model(model, _build_encoders(spec, device, dtype, vae))


def _build_encoders(spec: EncoderSpec, device, dtype, vae_dtype: torch.dtype) -> VideoEncoders:
    from mempack.encoders import VideoEncoders

    try:
        return VideoEncoders.build(
            spec.preset, spec.path, device=device, dtype=dtype, seed=spec.seed, vae_dtype=vae_dtype
        )
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot build encoders ({spec.preset}, {spec.path}): {_first_line(err)}") from None


def _encoder_components(encoders) -> dict:
    from mempack.encoders import COMPONENTS

    return {name: getattr(encoders, name) for name in COMPONENTS}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_model(
    model_dir: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
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


MODEL_INDEX = "model_index.json"
SCHEDULER_DIR = "scheduler"


class ExportError(ValueError):
    """An export that cannot be made complete (missing model files or encoder weights): one clear line."""


def encoders_of_prep(data_dir: str | Path, preset: str) -> EncoderSpec:
    """Which encoders made the training data, from prep's summary.json (the preset's tiny set if none)."""
    if read_summary(data_dir) is None and preset != "tiny":
        raise ExportError(f"no {summary_path(data_dir)}: cannot tell which encoder weights made the training data")
    spec = data_encoders(data_dir, preset)
    return EncoderSpec(spec["preset"], spec["path"], int(spec["seed"]))


def export_pipeline(model_dir: str | Path, dst: str | Path, encoders: EncoderSpec) -> Path:
    """Trained model folder + its encoders → a pipeline folder at `dst`, atomically; returns `dst`."""
    model_dir, dst = Path(model_dir), Path(dst)
    missing = [name for name in (CONFIG_NAME, BACKBONE_DIR) if not (model_dir / name).exists()]
    if missing:
        raise ExportError(f"no trained model to export in {model_dir} (missing {', '.join(missing)})")
    staging = dst.with_name(f".{dst.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)  # a crashed export's leftover: ours by name
    staging.mkdir(parents=True)
    try:
        for name in (CONFIG_NAME, BACKBONE_DIR, SEMANTIC_PACK_DIR):
            src = model_dir / name
            if src.is_dir():  # hard links: the run folder's export costs no space beside the final checkpoint
                _link_tree(src, staging / name)
            elif src.is_file():
                shutil.copy2(src, staging / name)
        _add_encoders(staging, encoders)
        from mempack.pipeline import default_scheduler

        default_scheduler().save_pretrained(staging / SCHEDULER_DIR)
        write_model_index(staging)
        _swap_into_place(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported pipeline to %s", dst)
    return dst


def _add_encoders(folder: Path, spec: EncoderSpec) -> None:
    """Write or link the encoder components into `folder`, and a provenance note (no paths)."""
    if spec.path is None:
        if spec.preset != "tiny":
            raise ExportError(f"preset {spec.preset!r} needs real encoder weights, and prep recorded none")
        from mempack.encoders import VideoEncoders

        VideoEncoders.build("tiny", seed=spec.seed).save_pretrained(folder)
        source = f"tiny random init, seed {spec.seed}"
    else:
        root = Path(spec.path).expanduser().resolve()
        if not root.is_dir():
            raise ExportError(
                f"encoder weights folder not found: {root} (the one prep used); the export must bundle them"
            )
        from mempack.encoders import SUBFOLDERS, _feature_extractor_dir

        lacking = [name for name in SUBFOLDERS if not (root / name).is_dir()]
        if lacking:
            raise ExportError(f"encoder weights folder {root} lacks {', '.join(lacking)}")
        for name in SUBFOLDERS:
            _link_tree(root / name, folder / name)
        try:
            extractor = _feature_extractor_dir(root)
        except FileNotFoundError as err:
            raise ExportError(str(err)) from None
        (folder / "feature_extractor").mkdir(exist_ok=True)
        shutil.copy2(extractor / "preprocessor_config.json", folder / "feature_extractor")
        source = root.name
    note = {"preset": spec.preset, "seed": spec.seed, "source": source, "bundled": True}
    (folder / ENCODERS_FILE).write_text(json.dumps(note, indent=2))


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the filesystem allows (13 GB of weights cost no space)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def _component_entry(name: str, folder: Path) -> list[str]:
    """[library, class] of one saved component, read from its config (no weights are loaded)."""
    import diffusers
    import transformers

    import mempack

    def library(class_name: str) -> str:
        for lib in (diffusers, transformers):
            if hasattr(lib, class_name):
                return lib.__name__
        if hasattr(mempack, class_name):
            return getattr(mempack, class_name).__module__
        raise ExportError(f"{folder}: unknown component class {class_name!r}")

    if name == "feature_extractor":  # the PIL processor: no torchvision on CPU machines
        from mempack.encoders import _image_processor_class

        return ["transformers", _image_processor_class().__name__]
    for config_name, key in (
        ("scheduler_config.json", "_class_name"),
        ("tokenizer_config.json", "tokenizer_class"),
        ("config.json", "_class_name"),
        ("config.json", "architectures"),
    ):
        path = folder / config_name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if value:
                class_name = value[0] if isinstance(value, list) else value
                return [library(class_name), class_name]
    raise ExportError(f"cannot tell what {folder} holds (no config naming its class)")


def write_model_index(folder: str | Path) -> Path:
    """`model_index.json` for the components present in `folder` (what diffusers' loader reads)."""
    import diffusers

    folder = Path(folder)
    index: dict = {"_class_name": "MemoryPackPipeline", "_diffusers_version": diffusers.__version__}
    for name in (
        "feature_extractor",
        "image_encoder",
        SCHEDULER_DIR,
        SEMANTIC_PACK_DIR,
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        BACKBONE_DIR,
        "vae",
    ):
        if (folder / name).is_dir():
            index[name] = _component_entry(name, folder / name)
        elif name == SEMANTIC_PACK_DIR:
            index[name] = [None, None]  # optional: a FramePack-only model
        else:
            raise ExportError(f"pipeline folder {folder} lacks {name}/")
    path = folder / MODEL_INDEX
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def _swap_into_place(staging: Path, dst: Path) -> None:
    """Rename the finished staging folder to `dst`; an older export moves aside first, then goes."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(staging, dst)
    shutil.rmtree(old, ignore_errors=True)

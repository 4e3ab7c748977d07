"""Assemble a training export into a complete, portable `MemoryPackPipeline` folder.

Training checkpoints hold the trained part only (`mempack.json` + `transformer/` + `semantic_pack/`).
A user on another machine needs the encoders that made the training latents too, or the model
decodes with a VAE it never saw. So the export bundles them: the tiny preset's seeded random encoders
are re-created and saved; real encoder weights are linked (same filesystem) or copied from the folder
prep was given. The result has `model_index.json` and only relative references, so the folder can be
copied, logged to MLflow, and opened with `MemoryPackPipeline.from_pretrained(folder)`.

Exports are atomic: everything is written to a staging folder beside the destination, checked, and
renamed into place; a failed export leaves the previous one untouched. Missing encoder weights are an
`ExportError`, never a silent fallback to random encoders.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from mempack.checkpoints import ENCODERS_FILE, EncoderSpec
from mempack.model.memorypack import BACKBONE_DIR, CONFIG_NAME, SEMANTIC_PACK_DIR

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
ENCODER_DIRS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder",
                "feature_extractor")
SCHEDULER_DIR = "scheduler"


class ExportError(ValueError):
    """An export that cannot be made complete (missing model files or encoder weights): one clear line."""


def encoders_of_prep(data_dir: str | Path, preset: str) -> EncoderSpec:
    """Which encoders made the training data, from prep's summary.json (the preset's tiny set if none)."""
    summary = Path(data_dir) / "summary.json"
    if not summary.is_file():
        if preset != "tiny":
            raise ExportError(f"no {summary}: cannot tell which encoder weights made the training data")
        return EncoderSpec(preset=preset)
    prep = json.loads(summary.read_text()).get("config", {})
    return EncoderSpec(prep.get("preset", preset), prep.get("encoders"), int(prep.get("encoder_seed", 0)))


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
            if src.is_dir():
                shutil.copytree(src, staging / name)
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
            raise ExportError(f"encoder weights folder not found: {root} (the one prep used); "
                              "the export must bundle them")
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
    for config_name, key in (("scheduler_config.json", "_class_name"), ("tokenizer_config.json", "tokenizer_class"),
                             ("config.json", "_class_name"), ("config.json", "architectures")):
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
    for name in ("feature_extractor", "image_encoder", SCHEDULER_DIR, SEMANTIC_PACK_DIR, "text_encoder",
                 "text_encoder_2", "tokenizer", "tokenizer_2", BACKBONE_DIR, "vae"):
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

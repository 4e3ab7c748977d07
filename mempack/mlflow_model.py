"""The trained pipeline as an MLflow Model: `mlflow.pyfunc.load_model("runs:/ID/model").predict(...)`.

A pyfunc `PythonModel` over a `MemoryPackPipeline` folder (the folder is the model's artifact, the
`mempack` package travels in the model's code, so it loads where mempack itself is not installed).
Its signature: each input row is an image (PNG/JPEG bytes), a prompt (or a timeline written as
"0s: a kite rises | 12s: it dives", mempack.timeline) and a length in seconds; each
output row is the generated video as mp4 bytes. Sampling settings are pyfunc params (fps, steps,
guidance, seed, crf, height, width; 0 means "the preset's default"). The placement on the device is
the model's `model_config` (offload, weights_dtype, gpu_gb, as `infer.py`'s flags), set when it loads:
`mlflow.pyfunc.load_model(uri, model_config={"offload": "group"})`.

`log_pipeline_model` logs it to the active MLflow run and, given a name, registers a version and
points an alias at it (MLflow 3's registry uses aliases, not stages).

At real size the pipeline folder is 25.8 GB of transformer weights: it is uploaded once, as this model's
artifact (not again as run files). With `reference=True` the weights stay in the run's storage and the
model's artifact is a small JSON file (`pipeline_reference.json`) naming that folder and the size of every
file in it; loading follows it, and refuses a folder whose files have changed since (a later run in the
same output folder) rather than serve other weights under this run's name.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ARTIFACT_KEY = "pipeline"
REFERENCE_FILE = "pipeline_reference.json"  # the artifact of a model logged with reference=True
# what the model needs at load time (pinned to what logged it); pandas and mlflow come with pyfunc
REQUIREMENTS = (
    "torch",
    "diffusers",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "av",
    "opencv-python-headless",
    "pillow",
    "numpy",
    "tqdm",
)
PARAMS = {"fps": 0.0, "steps": 25, "guidance": 10.0, "seed": 0, "crf": 18, "height": 0, "width": 0}
# placement, fixed when the model loads (hooks are installed once): "" / 0 mean none / no GPU size
MODEL_CONFIG = {"offload": "", "weights_dtype": "auto", "gpu_gb": 0.0}


def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class MemoryPackPyfunc(_pyfunc_base()):
    """(image bytes, prompt, seconds) rows → mp4 bytes rows, through `MemoryPackPipeline.write_video`."""

    def load_context(self, context) -> None:
        """Load the pipeline and place it: `model_config` (given to `mlflow.pyfunc.load_model(uri,
        model_config={...})`) may hold `offload`, `weights_dtype` and `gpu_gb`, as `infer.py`'s flags;
        `gpu_gb` without `offload` plans at the preset's default bucket (mempack.inference.choose_offload)."""
        import torch

        from mempack.inference import choose_offload, compute_dtype
        from mempack.offload import apply_memory_settings
        from mempack.pipeline import MemoryPackPipeline
        from mempack.presets import get_preset

        config = {**MODEL_CONFIG, **(getattr(context, "model_config", None) or {})}  # MLflow drops unknown keys
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = compute_dtype(device)
        folder = follow_reference(context.artifacts[ARTIFACT_KEY])
        self.pipe = MemoryPackPipeline.from_pretrained(folder, dtype=dtype)  # on the CPU: placed next
        gpu_gb = float(config["gpu_gb"]) or None
        size = get_preset(self.pipe.preset_name).default_bucket
        offload = config["offload"] or choose_offload(
            self.pipe.preset_name, size, dtype, config["weights_dtype"], gpu_gb
        )
        apply_memory_settings(self.pipe, device, offload, config["weights_dtype"])
        self.pipe.set_progress_bar_config(disable=True)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd
        import torch
        from PIL import Image

        from mempack.inference import DEFAULT_SECONDS
        from mempack.pipeline import DEFAULT_FPS
        from mempack.timeline import read_prompt

        settings = {**PARAMS, **(params or {})}
        fps = float(settings["fps"]) or DEFAULT_FPS[self.pipe.preset_name]
        videos = []
        for row in model_input.to_dict("records"):
            seconds = row.get("seconds")
            seconds = (
                DEFAULT_SECONDS
                if seconds is None or (isinstance(seconds, float) and math.isnan(seconds))
                else float(seconds)
            )
            if not math.isfinite(seconds) or seconds <= 0 or not math.isfinite(fps) or fps <= 0:
                raise ValueError(f"seconds and fps must be finite numbers > 0, got {seconds} and {fps}")
            image = Image.open(io.BytesIO(row["image"]))
            size = {}
            if settings["height"] and settings["width"]:
                size = {"height": int(settings["height"]), "width": int(settings["width"])}
            with tempfile.TemporaryDirectory(prefix="mempack-pyfunc-") as tmp:
                path = Path(tmp) / "video.mp4"
                self.pipe.write_video(
                    path,
                    fps,
                    crf=int(settings["crf"]),
                    image=image,
                    prompt=read_prompt(row.get("prompt") or ""),
                    num_frames=max(1, round(seconds * fps)),
                    num_inference_steps=int(settings["steps"]),
                    guidance_scale=float(settings["guidance"]),
                    generator=torch.Generator().manual_seed(int(settings["seed"])),
                    **size,
                )
                videos.append(path.read_bytes())
        return pd.DataFrame({"video": videos})


def signature():
    """image (bytes), prompt (string), seconds (double, optional) → video (mp4 bytes); params as PARAMS."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [ColSpec("binary", "image"), ColSpec("string", "prompt"), ColSpec("double", "seconds", required=False)]
    )
    outputs = Schema([ColSpec("binary", "video")])
    kinds = {float: "double", int: "long"}
    params = ParamSchema([ParamSpec(name, kinds[type(value)], value) for name, value in PARAMS.items()])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def write_reference(folder: str | Path, dst: str | Path) -> Path:
    """A reference file naming the pipeline folder (absolute path) and the size of each of its files."""
    folder = Path(folder).resolve()
    dst = Path(dst)
    dst.write_text(json.dumps({"path": str(folder), "files": _file_sizes(folder)}, indent=1))
    return dst


def follow_reference(artifact: str | Path) -> Path:
    """The pipeline folder a model's artifact stands for: the artifact itself, or the folder its reference
    file names (ValueError if that folder is gone or its files are not the ones referenced)."""
    artifact = Path(artifact)
    if artifact.is_dir() and (artifact / REFERENCE_FILE).is_file():
        artifact = artifact / REFERENCE_FILE
    if not (artifact.is_file() and artifact.name == REFERENCE_FILE):
        return artifact
    ref = json.loads(artifact.read_text())
    folder = Path(ref["path"])
    if not folder.is_dir():
        raise ValueError(f"the model's weights were kept in the run's storage at {folder}, which is not readable here")
    if _file_sizes(folder) != ref["files"]:
        raise ValueError(f"the weights at {folder} changed since this model was logged (a later run wrote there?)")
    return folder


def log_pipeline_model(
    pipeline_dir: str | Path,
    registered_model_name: str | None = None,
    *,
    alias: str = "candidate",
    name: str = "model",
    reference: bool = False,
):
    """Log the pipeline folder as a pyfunc MLflow Model to the active run; register it when named.

    `reference`: upload only a reference to the folder (it must stay where it is, readable wherever the
    model is loaded: the run's shared storage), not its weights.
    Returns MLflow's ModelInfo (`.model_uri` is `models:/...`; `runs:/<run id>/<name>` loads it too).
    A registered version gets `alias` (load it as `models:/<registered_model_name>@<alias>`).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    import mempack

    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no pipeline folder at {folder} (model_index.json missing)")
    with tempfile.TemporaryDirectory(prefix="mempack-model-") as tmp:
        artifact = write_reference(folder, Path(tmp) / REFERENCE_FILE) if reference else folder
        code = Path(tmp) / "code" / "mempack"  # the package's sources only (no bytecode caches)
        shutil.copytree(Path(mempack.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=MemoryPackPyfunc(),
            artifacts={ARTIFACT_KEY: str(artifact)},
            code_paths=[str(code)],
            signature=signature(),
            model_config=MODEL_CONFIG,  # the defaults; `load_model(uri, model_config=...)` overrides them
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
        )
    if registered_model_name:
        version = info.registered_model_version
        MlflowClient().set_registered_model_alias(registered_model_name, alias, str(version))
        log.info("registered %s version %s as @%s", registered_model_name, version, alias)
    return info


def pipeline_dir_of(model_dir: str | Path) -> Path:
    """The pipeline folder inside a downloaded MLflow Model (read from its MLmodel file)."""
    import yaml

    model_dir = Path(model_dir)
    spec = yaml.safe_load((model_dir / "MLmodel").read_text())
    try:
        relative = spec["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (KeyError, TypeError):
        raise FileNotFoundError(f"{model_dir} is an MLflow Model but not a mempack pipeline") from None
    return follow_reference(model_dir / relative)

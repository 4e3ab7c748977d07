"""mempack: long-form image-to-video diffusion with MemoryPack and Direct Forcing.

The model library: pure PyTorch + diffusers/transformers, usable without Ray or MLflow.

    from mempack import MemoryPackPipeline
    pipe = MemoryPackPipeline.from_pretrained("outputs/train/stage2/model")
    video = pipe(image=image, prompt="a kite over the sea", num_frames=145).frames[0]

The public names below load on first use (PEP 562), so `import mempack.video_io` in a data-prep
worker does not pay for torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → module that defines it
_PUBLIC = {
    "MemoryPackPipeline": "mempack.pipeline",
    "MemoryPackPipelineOutput": "mempack.pipeline",
    "MemoryPackTransformer": "mempack.model.memorypack",
    "MemoryPackConfig": "mempack.model.memorypack",
    "SemanticPack": "mempack.model.semantic_pack",
    "HistoryLayout": "mempack.model.history",
    "GenerationConfig": "mempack.sampling",
    "VideoEncoders": "mempack.encoders",
    "TrainConfig": "mempack.train.config",
    "ArchitectureConfig": "mempack.train.config",
    "export_pipeline": "mempack.export",
    "log_pipeline_model": "mempack.mlflow_model",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports lazily
    # `X as X`: an explicit re-export (PEP 484), so linters know these imports are the public names
    from mempack.encoders import VideoEncoders as VideoEncoders
    from mempack.export import export_pipeline as export_pipeline
    from mempack.mlflow_model import log_pipeline_model as log_pipeline_model
    from mempack.model.history import HistoryLayout as HistoryLayout
    from mempack.model.memorypack import MemoryPackConfig as MemoryPackConfig
    from mempack.model.memorypack import MemoryPackTransformer as MemoryPackTransformer
    from mempack.model.semantic_pack import SemanticPack as SemanticPack
    from mempack.pipeline import MemoryPackPipeline as MemoryPackPipeline
    from mempack.pipeline import MemoryPackPipelineOutput as MemoryPackPipelineOutput
    from mempack.sampling import GenerationConfig as GenerationConfig
    from mempack.train.config import ArchitectureConfig as ArchitectureConfig
    from mempack.train.config import TrainConfig as TrainConfig


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mempack' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])

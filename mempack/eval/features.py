"""Per-frame feature extractors for the consistency metrics.

The metrics only need "one L2-normalised vector per frame", so extractors are pluggable: a weights-free
`PixelFeatures` (always available, used by tests and as the fallback) and `DinoFeatures`/`ClipFeatures`,
which load real backbones from a LOCAL folder only — evaluation must never reach the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps uint8 frames (T, H, W, 3) to L2-normalised features (T, D)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate the one frame layout every metric assumes, so mistakes fail loudly and early."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("video has no frames")
    return frames


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation so a dot product is a cosine similarity."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


class PixelFeatures:
    """Weights-free features: 32x32 RGB thumbnail (INTER_AREA), minus its own mean, flattened, L2-normalised.

    Subtracting the per-frame mean makes the cosine compare structure, not global brightness. A flat
    frame has no structure (zero vector); it is mapped to the constant direction 1/sqrt(D), which is
    orthogonal to every mean-subtracted vector: flat vs flat → 1, flat vs textured → 0.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        thumbs = np.stack([cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_AREA) for f in frames])
        x = thumbs.reshape(len(frames), -1).astype(np.float64)
        x -= x.mean(axis=1, keepdims=True)
        flat = np.linalg.norm(x, axis=1) < 1e-6
        x[flat] = 1.0
        return l2_normalize(x)


def _require_folder(path: str | os.PathLike, what: str) -> Path:
    """Fail with a clear message instead of letting transformers try (and fail) to download."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{what} model folder not found: {folder} (weights are loaded from a local folder only)"
        )
    return folder


class _TorchFeatures:
    """Shared batching/no-grad plumbing for the transformer backbones."""

    def __init__(self, device: str | None = None, batch_size: int = 32) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size

    def _embed(self, inputs: dict) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        frames = check_frames(frames)
        out = []
        with torch.no_grad():
            for start in range(0, len(frames), self.batch_size):
                batch = list(frames[start : start + self.batch_size])
                inputs = self.processor(images=batch, return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                out.append(self._embed(inputs).float().cpu().numpy())
        return l2_normalize(np.concatenate(out))


class DinoFeatures(_TorchFeatures):
    """DINO(v2) image features (the CLS embedding), as VBench uses for subject consistency."""

    def __init__(self, path: str | os.PathLike, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import AutoImageProcessor, AutoModel

        super().__init__(device, batch_size)
        folder = _require_folder(path, "DINO")
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        log.info("loaded DINO features from %s on %s", folder, self.device)

    def _embed(self, inputs: dict):
        out = self.model(**inputs)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


class ClipFeatures(_TorchFeatures):
    """CLIP image embeddings (projected), as VBench uses for background consistency."""

    def __init__(self, path: str | os.PathLike, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        super().__init__(device, batch_size)
        folder = _require_folder(path, "CLIP")
        self.processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        self.model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
        self.model = self.model.to(self.device).eval()
        log.info("loaded CLIP features from %s on %s", folder, self.device)

    def _embed(self, inputs: dict):
        return self.model(**inputs).image_embeds

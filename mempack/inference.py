"""Image + prompt → mp4: load the model and encoders, generate section by section, decode, write.

The library side of `pipelines/infer.py`: every check that can fail (checkpoint, image, output
folder) runs before any sampling, and the mp4 is written atomically, so a failed run leaves nothing
half-written behind.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mempack.checkpoints import CheckpointError, EncoderSpec, encoder_spec, load_model, resolve_model_dir
from mempack.encoders import VideoEncoders, resize_center_crop
from mempack.generate import GenerationConfig, frames_for_sections, generate, sections_for_frames
from mempack.model import Conditioning, MemoryPackTransformer
from mempack.presets import PRESETS, SECTION_LATENT_FRAMES
from mempack.sample_inputs import SAMPLE_PROMPT, sample_image
from mempack.video_io import write_mp4

log = logging.getLogger(__name__)

# the one clock and each preset's default bucket (mempack.presets): what prep trained at
DEFAULT_SIZE = {name: preset.default_bucket for name, preset in PRESETS.items()}
DEFAULT_FPS = {name: preset.fps for name, preset in PRESETS.items()}
SIDE_MULTIPLE = 16  # VAE ×8, then the transformer's 2×2 patches


class InferenceError(ValueError):
    """A request that cannot run (bad image, size, output path): one clear line for the CLI."""


@dataclass
class InferenceRequest:
    """Everything one generation needs; None means "the default for the model's preset"."""

    model_dir: str | None = None  # None: the tiny preset's random weights
    preset: str = "tiny"
    encoders: str | None = None  # real encoder weights (overrides the export's encoders.json)
    image: str | None = None  # None: the built-in sample image
    prompt: str | None = None
    seconds: float | None = None
    sections: int | None = None
    fps: float | None = None
    height: int | None = None
    width: int | None = None
    steps: int = 25
    guidance: float = 10.0
    seed: int = 0
    use_memory: bool = True
    device: str = "auto"
    crf: int = 18  # x264 quality; 0 is lossless (bit-exact frames, large files)
    out: str = "outputs/infer/sample.mp4"
    progress: bool = True


@dataclass
class InferenceResult:
    """Where the video went and what it is."""

    path: str
    frames: int
    fps: float
    height: int
    width: int
    sections: int
    section_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0
    model: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def check_output(path: str | Path) -> Path:
    """An .mp4 path whose folder exists (created) and is writable."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise InferenceError(f"--out must end in .mp4, got {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InferenceError(f"cannot create output folder {path.parent}: {err.strerror or err}") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK):
        raise InferenceError(f"output not writable: {path}")
    return path


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] from any image file PIL reads; anything else is an InferenceError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InferenceError(f"not an image: {path} ({type(err).__name__})") from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InferenceError(f"bad --device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {name} asked for CUDA, but no GPU is visible")
    return device


def _size(request: InferenceRequest, preset: str) -> tuple[int, int]:
    height, width = DEFAULT_SIZE.get(preset, (64, 64))
    height, width = request.height or height, request.width or width
    for name, side in (("height", height), ("width", width)):
        if side < SIDE_MULTIPLE or side % SIDE_MULTIPLE:
            raise InferenceError(f"--{name} must be a positive multiple of {SIDE_MULTIPLE}, got {side}")
    return height, width


def plan_frames(request: InferenceRequest, fps: float, window: int = SECTION_LATENT_FRAMES) -> tuple[int, int]:
    """(frames to write, sections to generate) from --seconds or --sections."""
    if request.sections is not None:
        if request.sections < 1:
            raise InferenceError(f"--sections must be >= 1, got {request.sections}")
        return frames_for_sections(request.sections, window), request.sections
    seconds = request.seconds if request.seconds is not None else 5.0
    if seconds <= 0:
        raise InferenceError(f"--seconds must be > 0, got {seconds:g}")
    frames = max(1, round(seconds * fps))
    return frames, sections_for_frames(frames, window)


def build_model(request: InferenceRequest, device: torch.device, dtype: torch.dtype) -> tuple[MemoryPackTransformer, EncoderSpec]:
    """The model to sample and the encoders it was trained with."""
    if request.model_dir is None:
        log.warning("no trained weights: sampling the %r preset's RANDOM weights (train first, or pass --checkpoint)",
                    request.preset)
        model = MemoryPackTransformer.from_preset(request.preset, seed=0, device=device,
                                                  use_semantic_pack=request.use_memory)
        return model.to(dtype).eval(), EncoderSpec(preset=request.preset, path=request.encoders)
    folder = resolve_model_dir(request.model_dir)
    model = load_model(folder, device=device, dtype=dtype, use_semantic_pack=None if request.use_memory else False)
    spec = encoder_spec(folder, model.config.preset)
    if request.encoders:
        spec = EncoderSpec(model.config.preset, request.encoders, spec.seed)
    return model, spec


def conditioning(encoders: VideoEncoders, image: np.ndarray, prompt: str) -> Conditioning:
    """Prompt tokens, pooled prompt, SigLIP image tokens and the start latent of one request."""
    text = encoders.encode_prompt([prompt])
    return Conditioning(text.prompt_embeds, text.prompt_mask, text.pooled, encoders.encode_image(image[None]),
                        encoders.encode_image_latent(image[None]))


def run_inference(request: InferenceRequest) -> InferenceResult:
    """Validate, load, generate, decode and write one video."""
    started = time.perf_counter()
    out = check_output(request.out)
    image = load_image(request.image) if request.image else None
    device = _device(request.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, spec = build_model(request, device, dtype)
    preset = model.config.preset
    height, width = _size(request, preset)
    fps = request.fps or DEFAULT_FPS.get(preset, 8.0)
    if fps <= 0:
        raise InferenceError(f"--fps must be > 0, got {fps:g}")
    frames, sections = plan_frames(request, fps, model.config.window)
    try:
        encoders = VideoEncoders.build(spec.preset, spec.path, device=device, dtype=dtype, seed=spec.seed)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot build encoders ({spec.preset}, {spec.path}): {str(err).splitlines()[0]}") from None
    if image is None:
        image = sample_image(height, width)
    image = resize_center_crop(image[None], height, width)[0]
    prompt = request.prompt if request.prompt is not None else SAMPLE_PROMPT
    cond = conditioning(encoders, image, prompt)
    config = GenerationConfig(sections=sections, steps=request.steps, guidance=request.guidance, seed=request.seed,
                              use_memory=request.use_memory)
    log.info("generating %d sections (%d frames at %g fps, %dx%d) with %s", sections, frames, fps, width, height,
             request.model_dir or f"random {preset}")
    result = generate(model, cond, config, progress=request.progress)
    video = encoders.decode_latents(result.latents)[0][:frames]
    write_mp4(video, out, fps, crf=request.crf)
    return InferenceResult(str(out), int(video.shape[0]), float(fps), height, width, sections,
                           result.section_seconds, time.perf_counter() - started,
                           None if request.model_dir is None else str(request.model_dir))

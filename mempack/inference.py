"""A CLI request → `MemoryPackPipeline.write_video`: the library side of `pipelines/infer.py`.

The pipeline does the work (encode, sample section by section, decode and encode each section into
the mp4 as it is made); this module turns command-line settings into its arguments. It checks what only
the command line has (lengths in seconds, files, the output folder, the device) before loading anything;
everything else is `MemoryPackPipeline.check_inputs`'s, which runs before any sampling. The mp4 appears
only when complete, so a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mempack import layout
from mempack.encoders import resolve_vae_dtype
from mempack.export import CheckpointError, load_pipeline  # noqa: F401 (the CLI catches both errors)
from mempack.pipeline import DEFAULT_FPS, SIDE_MULTIPLE, conditioning, image_to_array  # noqa: F401 (re-export)
from mempack.presets import SECTION_LATENT_FRAMES
from mempack.sample import SAMPLE_PROMPT, sample_image
from mempack.sampling import frames_for_sections, sections_for_frames
from mempack.timeline import PromptTimeline, TimelineError, read_prompt

log = logging.getLogger(__name__)


class InferenceError(ValueError):
    """A request that cannot run (bad image, size, output path): one clear line for the CLI."""


@dataclass
class InferenceRequest:
    """Everything one generation needs; None means "the default for the model's preset"."""

    model_dir: str | None = None  # None: the tiny preset's random weights
    preset: str = "tiny"
    encoders: str | None = None  # real encoder weights: replace the export's bundled ones
    image: str | None = None  # None: the built-in sample image
    video: str | None = None  # a video to continue: it becomes the history and feeds ψ
    prompt: str | None = None  # one prompt, or a timeline "0s: a kite rises | 12s: it dives"
    timeline: str | None = None  # a YAML/JSON file of seconds → prompt (instead of `prompt`)
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
    vae_dtype: str = "auto"  # fp32 on a CPU, fp16 on a GPU (mempack.encoders.resolve_vae_dtype); or fp32, fp16, bf16
    crf: int = 18  # x264 quality; 0 is lossless (bit-exact frames, large files)
    out: str = str(layout.infer_dir() / "sample.mp4")
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
    """uint8 [H, W, 3] (EXIF orientation applied) from any image file PIL reads; else an InferenceError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"image not found: {path}")
    try:
        with Image.open(path) as img:  # reads the header only: the size check runs before any decode
            return image_to_array(img)
    except Image.DecompressionBombError as err:
        raise InferenceError(f"image too large: {path} ({err})") from None
    except ValueError as err:
        if "too large" in str(err):
            raise InferenceError(f"{err}: {path}") from None
        raise InferenceError(f"not an image: {path} ({type(err).__name__})") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InferenceError(f"not an image: {path} ({type(err).__name__})") from None


def load_video(path: str | Path) -> tuple[np.ndarray, float]:
    """uint8 [T, H, W, 3] of a video to continue and its frame rate (the pipeline puts it on the model's
    clock); an InferenceError for a missing or unreadable file."""
    from mempack.video_io import read_video

    if not Path(path).is_file():
        raise InferenceError(f"video not found: {path}")
    try:
        frames, fps = read_video(path)
    except Exception as err:  # noqa: BLE001 — decord and PyAV raise many kinds
        raise InferenceError(f"cannot read video {path}: {type(err).__name__}") from None
    if len(frames) == 0:
        raise InferenceError(f"no frames in video {path}")
    return frames, fps


def load_prompt(request: InferenceRequest) -> str | PromptTimeline:
    """--prompt (a timeline when written as one) or --timeline FILE; the sample prompt when neither."""
    try:
        if request.timeline is not None:
            return PromptTimeline.load(request.timeline)
        return read_prompt(request.prompt if request.prompt is not None else SAMPLE_PROMPT)
    except TimelineError as err:
        raise InferenceError(str(err)) from None


# the pipeline's argument names → the CLI's flags, so its one-line errors name what the user typed
FLAGS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "height": "--height", "width": "--width"}


def as_flags(message: str) -> str:
    """A pipeline error with its argument names spelled as the CLI's flags."""
    for name, flag in FLAGS.items():
        message = re.sub(rf"(?<![-\w]){name}\b", flag, message)
    return message


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


def _size(request: InferenceRequest, default: tuple[int, int]) -> tuple[int, int]:
    """The size asked for, else the pipeline's default (the pipeline checks it)."""
    return request.height or default[0], request.width or default[1]


def check_number(name: str, value: float | None) -> None:
    """NaN and infinity pass `> 0` checks in surprising ways (inf seconds = a run that never ends)."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise InferenceError(f"--{name} must be > 0 and finite, got {value}")


def plan_frames(request: InferenceRequest, fps: float, window: int = SECTION_LATENT_FRAMES) -> tuple[int, int]:
    """(frames to write, sections to generate) from --seconds or --sections."""
    if request.sections is not None:
        if request.sections < 1:
            raise InferenceError(f"--sections must be >= 1, got {request.sections}")
        return frames_for_sections(request.sections, window), request.sections
    seconds = request.seconds if request.seconds is not None else 5.0
    check_number("seconds", seconds)
    frames = max(1, round(seconds * fps))
    return frames, sections_for_frames(frames, window)


def run_inference(request: InferenceRequest) -> InferenceResult:
    """Validate, load the pipeline, and generate one video straight into its mp4."""
    started = time.perf_counter()
    check_number("seconds", request.seconds)
    check_number("fps", request.fps)
    out = check_output(request.out)
    prompt = load_prompt(request)
    image = load_image(request.image) if request.image else None
    video, video_fps = load_video(request.video) if request.video else (None, None)
    device = _device(request.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        vae_dtype = resolve_vae_dtype(request.vae_dtype, device)
    except ValueError as err:
        raise InferenceError(str(err)) from None
    pipe = load_pipeline(
        request.model_dir,
        encoders=request.encoders,
        preset=request.preset,
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
    )
    pipe.set_progress_bar_config(disable=not request.progress)
    preset = pipe.preset_name
    fps = request.fps or DEFAULT_FPS[preset]
    frames, sections = plan_frames(request, fps, pipe.model_config.window)
    height, width = _size(request, pipe.default_size(video[0] if video is not None else image))
    if image is None and video is None:
        image = sample_image(height, width)
    if video is not None:  # the length asked for is what comes after the given video (no start frame of its own)
        frames -= 1
    log.info(
        "generating %d sections (%d frames at %g fps, %dx%d) with %s",
        sections,
        frames,
        fps,
        width,
        height,
        request.model_dir or f"random {preset}",
    )
    try:
        result = pipe.write_video(
            out,
            fps,
            crf=request.crf,
            image=image,
            video=video,
            video_fps=video_fps,
            prompt=prompt,
            num_frames=frames,
            height=height,
            width=width,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            use_memory=request.use_memory,
            generator=torch.Generator().manual_seed(request.seed),
        )
    except ValueError as err:
        raise InferenceError(as_flags(str(err))) from None
    return InferenceResult(
        str(out),
        frames,
        float(fps),
        height,
        width,
        sections,
        result.section_seconds,
        time.perf_counter() - started,
        None if request.model_dir is None else str(request.model_dir),
    )

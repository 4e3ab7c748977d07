"""A CLI request → `MemoryPackPipeline.write_video`: the library side of `pipelines/infer.py`.

The pipeline does the work (encode, sample section by section, decode and encode each section into
the mp4 as it is made); this module turns a request (`InferenceRequest`, also the CLI's flags) into its
arguments and places it on the device (`--offload`, `--weights-dtype`, or `--gpu-gb` planned by
mempack.inference_plan). It checks what only a request has (lengths in seconds, files, the output
folder, the device, the placement) before loading anything; everything else is
`MemoryPackPipeline.check_inputs`'s, which runs before any sampling. The mp4 appears only when complete,
so a failed run leaves nothing half-written behind.
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
from mempack.model.history import Positions
from mempack.offload import check_memory_settings
from mempack.pipeline import DEFAULT_FPS, SIDE_MULTIPLE, conditioning, image_to_array  # noqa: F401 (re-export)
from mempack.presets import SECTION_LATENT_FRAMES
from mempack.sample import SAMPLE_PROMPT, sample_image
from mempack.sampling import frames_for_sections, sections_for_frames
from mempack.timeline import PromptTimeline, TimelineError, read_prompt

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 5.0  # a request's length when it names neither seconds nor sections


class InferenceError(ValueError):
    """A request that cannot run (bad image, size, output path): one clear line for the CLI."""


@dataclass
class InferenceRequest:
    """Everything one generation needs; None means "the default for the model's preset".

    Also the command line's schema: `pipelines/infer.py` generates one flag per field (mempack.config,
    as prep and train do; the trailing comments are the flags' help), and `__post_init__` is the one check
    of what only a request has (lengths in seconds, the mp4's quality, the placement). Everything the
    pipeline is asked is checked once, by `MemoryPackPipeline.check_inputs`.
    """

    model_dir: str | None = None  # None: the tiny preset's random weights
    preset: str = "tiny"  # size when no weights are given (and what --plan plans)
    encoders: str | None = None  # folder of real VAE/text/image encoder weights (default: as trained)
    image: str | None = None  # first frame (default: the built-in sample image)
    video: str | None = None  # continue this video: its frames become the history and feed the memory psi
    prompt: str | None = None  # one prompt, or a timeline "0s: a kite rises | 12s: it dives"
    timeline: str | None = None  # YAML or JSON file of seconds: prompt (a prompt per section)
    seconds: float | None = None  # video length in seconds (default 5)
    sections: int | None = None  # number of 1.2-s sections instead of seconds
    fps: float | None = None  # frames per second of the mp4 (default: the presets' clock, 30)
    height: int | None = None  # frame height (default: the preset's bucket nearest the image)
    width: int | None = None  # frame width (default: the preset's bucket nearest the image)
    steps: int = 25  # Euler steps per section
    guidance: float = 10.0  # distilled guidance scale
    seed: int = 0  # seed of the noise
    use_memory: bool = True  # False: SemanticPack off (the FramePack-only ablation)
    positions: Positions | None = None  # past the trained length: absolute, shift or wrap (None: the model's)
    device: str = "auto"  # cpu, cuda, cuda:1 ... (auto: cuda if available)
    vae_dtype: str = "auto"  # VAE precision: auto (fp32 on a CPU, fp16 on a GPU), fp32, fp16 or bf16 (bands)
    offload: str | None = None  # none, model, group or sequential (mempack.offload; default none, or by gpu_gb)
    weights_dtype: str = "auto"  # the transformer's stored weights: auto (the compute dtype) or fp8
    gpu_gb: float | None = None  # GPU memory in GB: without offload, the fastest offload that fits by the plan
    crf: int = 18  # x264 quality, 0-51 (0 = lossless, frame-exact across runs)
    out: str | None = None  # output mp4 (default: outputs/infer/<image>_<length>_seed<seed>.mp4)
    progress: bool = True  # a progress bar

    def __post_init__(self):
        if self.out is None:
            self.out = default_output(self)
        if self.prompt is not None and self.timeline is not None:
            raise InferenceError("pass --prompt or --timeline, not both")
        if self.seconds is not None and self.sections is not None:
            raise InferenceError("pass --seconds or --sections, not both")
        for name in ("seconds", "fps", "gpu_gb"):  # NaN and infinity pass `> 0` checks in surprising ways
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise InferenceError(f"--{name.replace('_', '-')} must be > 0 and finite, got {value}")
        if self.sections is not None and self.sections < 1:
            raise InferenceError(f"--sections must be >= 1, got {self.sections}")
        if not 0 <= self.crf <= 51:
            raise InferenceError(f"--crf must be in 0..51, got {self.crf}")
        try:
            check_memory_settings(self.offload or "none", self.weights_dtype)
        except ValueError as err:
            raise InferenceError(as_flags(str(err))) from None


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
    offload: str = "none"  # the placement it ran with (chosen by gpu_gb when not asked for)
    weights_dtype: str = "auto"

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
FLAGS = {
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "height": "--height",
    "width": "--width",
    "offload": "--offload",
    "weights_dtype": "--weights-dtype",
}


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


def plan_frames(request: InferenceRequest, fps: float, window: int = SECTION_LATENT_FRAMES) -> tuple[int, int]:
    """(frames to write, sections to generate) from --seconds or --sections."""
    if request.sections is not None:
        return frames_for_sections(request.sections, window), request.sections
    seconds = request.seconds if request.seconds is not None else DEFAULT_SECONDS
    frames = max(1, round(seconds * fps))
    return frames, sections_for_frames(frames, window)


def default_output(request: InferenceRequest) -> str:
    """outputs/infer/<image>_<length>_seed<seed>[_nomem].mp4: what the CLI writes when --out is not given."""
    stem = Path(request.image).stem if request.image else "sample"
    length = f"{request.sections}sec" if request.sections else f"{request.seconds or DEFAULT_SECONDS:g}s"
    name = f"{stem}_{length}_seed{request.seed}{'' if request.use_memory else '_nomem'}.mp4"
    return str(layout.infer_dir() / name)


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (the weights' own dtype), fp32 on a CPU (bf16 matmuls there are slow and coarse)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def plan_size(preset: str, request: InferenceRequest, image: np.ndarray | None = None) -> tuple[int, int]:
    """The request's frame size as the pipeline will pick it: the flags, else the preset's bucket nearest
    the image (its default bucket without one)."""
    from mempack.presets import get_preset, nearest_bucket

    if image is None:
        default = get_preset(preset).default_bucket
    else:
        default = nearest_bucket(preset, *image.shape[:2])
    return _size(request, default)


def choose_offload(
    preset: str, size: tuple[int, int], dtype: torch.dtype, weights_dtype: str, gpu_gb: float | None
) -> str:
    """`none` without a GPU size; with one, the fastest offload mode the planner fits into it
    (mempack.inference_plan: weights on the device per stage + that stage's activations + a margin).

    Planned, not measured: one plan of the request takes seconds (meta tensors), loading the weights minutes."""
    if gpu_gb is None:
        return "none"
    from mempack.inference_plan import plan_inference

    try:
        plan = plan_inference(preset, size, dtype=dtype, weights_dtype=weights_dtype)
    except ValueError as err:
        raise InferenceError(as_flags(str(err))) from None
    mode = plan.best(gpu_gb)
    if mode is None:
        least = plan.peak("sequential")[0] / 1e9
        raise InferenceError(
            f"{preset} at {size[0]}x{size[1]} does not fit {gpu_gb:g} GB in any offload mode "
            f"(sequential needs {least:.1f} GB + margin; see --plan)"
        )
    log.info("--gpu-gb %g: --offload %s fits by the plan (peak %.1f GB)", gpu_gb, mode, plan.peak(mode)[0] / 1e9)
    return mode


def plan_request(request: InferenceRequest) -> str:
    """`infer.py --plan`: the request's device memory per component, stage and offload mode, for the
    preset's stored weights and float8, from meta tensors (no weights read, no GPU needed). Planned
    in bf16, the dtype a GPU run computes in."""
    from mempack.inference_plan import format_plan, plan_storages

    image = load_image(request.image) if request.image else None
    try:
        plans = plan_storages(request.preset, plan_size(request.preset, request, image), dtype=torch.bfloat16)
    except ValueError as err:
        raise InferenceError(as_flags(str(err))) from None
    return format_plan(plans, request.gpu_gb)


def run_inference(request: InferenceRequest) -> InferenceResult:
    """Validate, load the pipeline, place it (offload), and generate one video straight into its mp4."""
    from mempack.offload import apply_memory_settings

    started = time.perf_counter()
    out = check_output(request.out)
    prompt = load_prompt(request)
    image = load_image(request.image) if request.image else None
    video, video_fps = load_video(request.video) if request.video else (None, None)
    device = _device(request.device)
    dtype = compute_dtype(device)
    try:
        vae_dtype = resolve_vae_dtype(request.vae_dtype, device)
    except ValueError as err:
        raise InferenceError(str(err)) from None
    # loaded on the CPU: the offload modes place the weights themselves (`none` moves everything over)
    pipe = load_pipeline(
        request.model_dir,
        encoders=request.encoders,
        preset=request.preset,
        device="cpu",
        dtype=dtype,
        vae_dtype=vae_dtype,
    )
    pipe.set_progress_bar_config(disable=not request.progress)
    preset = pipe.preset_name
    fps = request.fps or DEFAULT_FPS[preset]
    frames, sections = plan_frames(request, fps, pipe.model_config.window)
    height, width = plan_size(preset, request, video[0] if video is not None else image)
    offload = request.offload or choose_offload(preset, (height, width), dtype, request.weights_dtype, request.gpu_gb)
    apply_memory_settings(pipe, device, offload, request.weights_dtype)
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
            positions=request.positions,
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
        offload,
        request.weights_dtype,
    )

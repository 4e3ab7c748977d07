"""`MemoryPackPipeline`: the trained model as a diffusers pipeline (image + prompt → long video).

A pipeline folder is what diffusers users expect: `model_index.json` and one subfolder per component
(`transformer/` the FramePack-F1 backbone, `semantic_pack/` ψ, `vae/`, `text_encoder/` + `tokenizer/`,
`text_encoder_2/` + `tokenizer_2/`, `image_encoder/` + `feature_extractor/`, `scheduler/`), plus our
`mempack.json` (RoPE mode, history layout, preset): the same folder also loads as a
`MemoryPackTransformer`, which is how stage 2 starts from stage 1. Training exports exactly this
(`mempack.export`), so `MemoryPackPipeline.from_pretrained(export)` runs anywhere the folder is copied.

What it shares with diffusers' `HunyuanVideoFramepackPipeline`: the components, the offload hooks,
`callback_on_step_end`, `output_type`, the progress-bar config. What it does differently, and why:
* Conditioning is encoded by `mempack.encoders.VideoEncoders`, the code that made the training data
  (posterior mode, not a sample, for the start latent; the preset's prompt template), so inference sees
  what training saw.
* Sections are sampled by `mempack.sampling.generate` (one implementation: absolute RoPE, ψ updated
  after every section, a bounded history tail). The registered `FlowMatchEulerDiscreteScheduler` is
  kept for its configuration: its time grid equals `generate`'s (tests/test_pipeline.py), but it steps
  from float64 sigmas and 1000·σ timesteps where `generate` uses float32 paper time, so it would not
  reproduce today's numbers bit for bit.
* Frames are decoded section by section as they are generated (`mempack.stream_decode`), exactly
  equal to one whole decode, and `write_video` streams them into an mp4: a ten-minute video never
  exists in memory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from mempack import flow
from mempack.encoders import VideoEncoders, resize_center_crop
from mempack.sampling import GenerationConfig, generate, sections_for_frames
from mempack.model import Conditioning, MemoryPackConfig, MemoryPackTransformer
from mempack.model.memorypack import CONFIG_NAME, _preset_matching
from mempack.presets import BUCKET_MULTIPLE, PRESETS, get_preset, nearest_bucket
from mempack.stream_decode import SectionDecoder

log = logging.getLogger(__name__)

# the one clock and each preset's default bucket (mempack.presets): what prep trained at
DEFAULT_SIZE = {name: preset.default_bucket for name, preset in PRESETS.items()}
DEFAULT_FPS = {name: preset.fps for name, preset in PRESETS.items()}
SIDE_MULTIPLE = BUCKET_MULTIPLE  # VAE ×8, then the transformer's 2×2 patches
# Larger inputs are refused, not decoded: 8K (7680x4320) is 33 Mpx; PIL itself refuses above ~179 Mpx
MAX_IMAGE_PIXELS = 40_000_000
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class MemoryPackPipelineOutput(BaseOutput):
    """`frames[0]` is the first video: PIL images, float [T, H, W, 3] in [0, 1] ("np"), float
    [T, 3, H, W] ("pt") or latents [C, T', h, w] ("latent"); None when the video went to a file."""

    frames: Any = None
    video_path: str | None = None
    section_seconds: list[float] = field(default_factory=list)


def default_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """F1's sampler settings: no fixed shift, resolution-dependent shift (μ from the token count)."""
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True)


def check_image_size(height: int, width: int) -> None:
    """Refuse images whose decode alone would take gigabytes (a scan, a panorama, a bomb)."""
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"image too large: {width}x{height} ({height * width / 1e6:.0f} Mpx; "
                         f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx): downscale it first")


def image_to_array(image) -> np.ndarray:
    """PIL image (EXIF orientation applied) or uint8 array [H, W, 3] → uint8 RGB [H, W, 3]."""
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        check_image_size(image.height, image.width)
        image = ImageOps.exif_transpose(image)  # phones store portrait photos sideways + a rotation tag
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be a PIL image or uint8 [H, W, 3], got {array.dtype} {array.shape}")
    check_image_size(*array.shape[:2])
    return array


def conditioning(encoders: VideoEncoders, image: np.ndarray, prompt: str) -> Conditioning:
    """Prompt tokens, pooled prompt, SigLIP image tokens and the start latent of one request."""
    text = encoders.encode_prompt([prompt])
    return Conditioning(text.prompt_embeds, text.prompt_mask, text.pooled, encoders.encode_image(image[None]),
                        encoders.encode_image_latent(image[None]))


class _SteppedTransformer(MemoryPackTransformer):
    """The MemoryPack transformer with a hook before each Euler step, for callbacks and interrupts.

    `sample_section` calls the model once per step on the current latents, so the hook sees the
    latents left by the previous step (and may replace them in place); returning True skips the
    step (zero velocity: the Euler update leaves the latents where they are, diffusers' `interrupt`).
    """

    before_step: Callable[[torch.Tensor, torch.Tensor], bool] | None = None

    def forward(self, noisy_latents, t, cond, history, memory=None, guidance=1.0):
        if self.before_step is not None and self.before_step(noisy_latents, t):
            return torch.zeros_like(noisy_latents)
        return super().forward(noisy_latents, t, cond, history, memory, guidance)


class MemoryPackPipeline(DiffusionPipeline):
    """Image (+ optional video to continue) and prompt → a long video, section by section, with ψ memory."""

    # The VAE before the transformer (diffusers' F1 has `transformer->vae`): under model offload a section's
    # decode then evicts nothing (SigLIP is already gone) and the next step evicts the VAE (~0.5 GB), where
    # the F1 order would move the 26 GB transformer out and back in for every section (mempack.offload).
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->vae->transformer"
    # ψ's Memorize/Squeeze are called between the backbone's forwards, not through `forward`: it stays
    # on the accelerator (its ~30 M parameters at full size are small next to the 13 B backbone)
    _exclude_from_cpu_offload = ["semantic_pack"]
    _optional_components = ["semantic_pack"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, image_encoder,
                 feature_extractor, scheduler, semantic_pack=None):
        super().__init__()
        self.register_modules(transformer=transformer, semantic_pack=semantic_pack, vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, image_encoder=image_encoder,
                              feature_extractor=feature_extractor, scheduler=scheduler)
        self._model_config: MemoryPackConfig | None = None  # set from mempack.json by from_pretrained
        self._wrapped: tuple[tuple, _SteppedTransformer] | None = None
        self._interrupt = False

    # ----- construction and persistence ------------------------------------------------------------
    @classmethod
    def from_model(cls, model: MemoryPackTransformer, encoders: VideoEncoders,
                   scheduler: FlowMatchEulerDiscreteScheduler | None = None) -> "MemoryPackPipeline":
        """A pipeline over a model and encoders already in memory (training previews, tests)."""
        pipe = cls(transformer=model.backbone, semantic_pack=model.semantic_pack, vae=encoders.vae,
                   text_encoder=encoders.text_encoder, tokenizer=encoders.tokenizer,
                   text_encoder_2=encoders.text_encoder_2, tokenizer_2=encoders.tokenizer_2,
                   image_encoder=encoders.image_encoder, feature_extractor=encoders.feature_extractor,
                   scheduler=scheduler or default_scheduler())
        pipe.model_config = model.config
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "MemoryPackPipeline":
        """Load a pipeline folder (local only: nothing is downloaded); `mempack.json` sets RoPE and layout."""
        folder = Path(pretrained_model_name_or_path)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"no pipeline at {folder} (model_index.json missing)")
        kwargs.setdefault("local_files_only", True)
        pipe = super().from_pretrained(str(folder), **kwargs)
        if (folder / CONFIG_NAME).is_file():
            pipe.model_config = MemoryPackConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' folder plus mempack.json, so the folder also loads as a MemoryPackTransformer."""
        super().save_pretrained(save_directory, **kwargs)
        Path(save_directory, CONFIG_NAME).write_text(json.dumps(asdict(self.model_config), indent=2))

    @property
    def model_config(self) -> MemoryPackConfig:
        """RoPE mode, history layout and preset (mempack.json); defaults for the backbone's size if unset."""
        if self._model_config is None:
            self._model_config = MemoryPackConfig(preset=_preset_matching(self.transformer),
                                                  use_semantic_pack=self.semantic_pack is not None)
        return self._model_config

    @model_config.setter
    def model_config(self, config: MemoryPackConfig) -> None:
        self._model_config = config

    @property
    def memorypack(self) -> MemoryPackTransformer:
        """The backbone and ψ as one `MemoryPackTransformer` (built once per set of components)."""
        key = (id(self.transformer), id(self.semantic_pack), repr(self.model_config))
        if self._wrapped is None or self._wrapped[0] != key:
            self._wrapped = (key, _SteppedTransformer(self.transformer, self.semantic_pack, self.model_config))
        return self._wrapped[1]

    @property
    def preset_name(self) -> str:
        return self.model_config.preset

    def encoders(self) -> VideoEncoders:
        """The components as `VideoEncoders` on the execution device, placement left to the pipeline."""
        components = {name: getattr(self, name) for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                             "tokenizer_2", "image_encoder", "feature_extractor")}
        return VideoEncoders(get_preset(self.preset_name), components, device=self._execution_device,
                             dtype=self.vae.dtype, place=False)

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ----- calling ---------------------------------------------------------------------------------
    def default_size(self, image: np.ndarray | None) -> tuple[int, int]:
        """(height, width) when the caller gives none: the preset's training bucket nearest the image's
        aspect ratio (FramePack's rule), or its default bucket without an image."""
        if image is None:
            return DEFAULT_SIZE[self.preset_name]
        return nearest_bucket(self.preset_name, *image.shape[:2])

    @torch.no_grad()
    def __call__(self, image=None, prompt: str | list[str] = "", *, video=None, num_frames: int = 37,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 25,
                 guidance_scale: float = 10.0, generator: torch.Generator | None = None, use_memory: bool = True,
                 output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)):
        """Generate one video.

        image: the first frame (PIL, EXIF orientation applied; or uint8 [H, W, 3]). video: frames to
        continue instead (uint8 [T, H, W, 3] or a list of PIL images): they are encoded as one causal
        stream, their latents become the history and feed ψ section by section, and the output starts
        with them (as the VAE reconstructs them). num_frames: frames generated after the image (its
        frame included) or after the video. output_type: "pil", "np", "pt" or "latent".
        callback_on_step_end(pipe, step, timestep, {"latents": ...}) runs after every Euler step of every
        section (step counts across sections); latents it returns replace the current ones, except after
        a section's last step (ψ has already read them); `pipe._interrupt = True` skips the rest.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        chunks: list[np.ndarray] = []
        result = self._run(sink=None if output_type == "latent" else chunks.append, image=image, prompt=prompt,
                           video=video, num_frames=num_frames, height=height, width=width,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           generator=generator, use_memory=use_memory, callback_on_step_end=callback_on_step_end,
                           callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        if output_type == "latent":
            frames = result["latents"]
        else:
            frames = _postprocess(np.concatenate(chunks)[None], output_type)
        if not return_dict:
            return (frames,)
        return MemoryPackPipelineOutput(frames=frames, section_seconds=result["section_seconds"])

    @torch.no_grad()
    def write_video(self, path: str | Path, fps: float, *, crf: int = 18, **kwargs) -> MemoryPackPipelineOutput:
        """As `__call__` (same keyword arguments), but each section's frames go into an h264 mp4 at once.

        Memory holds one section's frames, never the video; the file appears only when complete.
        """
        from mempack.video_io import Mp4Writer

        with Mp4Writer(path, fps, crf) as writer:
            result = self._run(sink=writer.write, frames_desc="decoding + encoding mp4", **kwargs)
        return MemoryPackPipelineOutput(frames=None, video_path=str(path), section_seconds=result["section_seconds"])

    def _run(self, *, sink: Callable[[np.ndarray], None] | None, frames_desc: str = "decoding frames", image=None,
             prompt: str | list[str] = "",
             video=None, num_frames: int = 37, height: int | None = None, width: int | None = None,
             num_inference_steps: int = 25, guidance_scale: float = 10.0, generator=None, use_memory: bool = True,
             callback_on_step_end=None, callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)) -> dict:
        """Encode, sample section by section, and hand decoded uint8 frames to `sink` as each section ends."""
        prompt = _one_prompt(prompt)
        steps, guidance, callback = num_inference_steps, guidance_scale, callback_on_step_end
        if num_frames is None or num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if not math.isfinite(guidance):
            raise ValueError(f"guidance_scale must be finite, got {guidance}")
        callback_inputs = list(callback_on_step_end_tensor_inputs)
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            callback_inputs = callback.tensor_inputs
        bad = [k for k in callback_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, got {bad}")
        frames_in = _video_to_array(video) if video is not None else None
        if image is None and frames_in is None:
            raise ValueError("pass an image (the first frame) or a video to continue")
        first = image_to_array(image) if image is not None else frames_in[0]
        if height is None or width is None:
            height, width = self.default_size(first)
        for name, side in (("height", height), ("width", width)):
            if side < SIDE_MULTIPLE or side % SIDE_MULTIPLE:
                raise ValueError(f"{name} must be a positive multiple of {SIDE_MULTIPLE}, got {side}")
        self._interrupt = False
        encoders = self.encoders()
        first = resize_center_crop(first[None], height, width)[0]
        cond = conditioning(encoders, first, prompt)
        prefix = None
        if frames_in is not None:
            prefix = self._video_latents(encoders, frames_in, height, width, cond)
        model = self.memorypack
        window, temporal = model.config.window, encoders.preset.vae_temporal
        if prefix is None:  # num_frames counts the image's frame
            sections, total_frames = sections_for_frames(num_frames, window, temporal), num_frames
        else:  # num_frames counts the frames after the given video
            sections = -(-num_frames // (temporal * window))
            total_frames = 1 + prefix.shape[2] * temporal + num_frames

        decoder = SectionDecoder(encoders) if sink is not None else None
        frame_bar = tqdm(total=total_frames, desc=frames_desc, unit="frame", leave=False, position=1,
                         disable=decoder is None or getattr(self, "_progress_bar_config", {}).get("disable", False))
        written = 0

        def emit(frames: np.ndarray) -> None:
            nonlocal written
            frames = frames[: max(0, total_frames - written)]
            if len(frames):
                sink(frames)
                written += len(frames)
                frame_bar.update(len(frames))

        if decoder is not None:
            emit(decoder.push(cond.start_latent))
            if prefix is not None:
                emit(decoder.push(prefix))
        stepper = _StepReporter(self, steps, sections, callback, callback_inputs)
        model.before_step = stepper.before_step

        def on_section(n: int, latents: torch.Tensor) -> None:
            stepper.section_done(latents)
            if decoder is not None:
                emit(decoder.push(latents))

        config = GenerationConfig(sections=sections, steps=steps, guidance=guidance, use_memory=use_memory)
        extra = {} if prefix is None else {"prefix": prefix}
        log.info("generating %d sections of %d latent frames (%dx%d, %d steps)", sections, window, width, height, steps)
        began = time.perf_counter()
        try:
            result = generate(model, cond, config, progress=False, on_section=on_section,
                              generator=_cpu_generator(generator), **extra)
            if decoder is not None:
                emit(decoder.finish())
        finally:
            model.before_step = None
            stepper.close()
            frame_bar.close()
        log.info("generated %d sections in %.1f s", sections, time.perf_counter() - began)
        self.maybe_free_model_hooks()
        return {"latents": result.latents, "section_seconds": result.section_seconds}

    def _video_latents(self, encoders: VideoEncoders, frames: np.ndarray, height: int, width: int,
                       cond: Conditioning) -> torch.Tensor:
        """A video to continue → the latents after its start latent (its first frame is the image)."""
        temporal = encoders.preset.vae_temporal
        usable = (len(frames) - 1) // temporal * temporal + 1
        if usable < 1 + temporal:
            raise ValueError(f"a video to continue needs at least {1 + temporal} frames, got {len(frames)}")
        if usable < len(frames):
            log.info("continuing from the first %d of %d frames (a causal VAE takes 4k+1)", usable, len(frames))
        frames = resize_center_crop(frames[:usable], height, width)
        latents = encoders.encode_video(frames)  # one causal stream, as prep encodes training videos
        cond.start_latent = latents[:, :, :1]
        return latents[:, :, 1:]


class _StepReporter:
    """Progress bar, `callback_on_step_end` and interrupts, driven by `_SteppedTransformer`'s hook."""

    def __init__(self, pipe: MemoryPackPipeline, steps: int, sections: int, callback, inputs: Sequence[str]):
        self.pipe, self.steps, self.callback, self.inputs = pipe, steps, callback, list(inputs)
        self.index = 0  # global step index across sections
        self.in_section = 0
        self.last_t: torch.Tensor | None = None
        self.bar = tqdm(total=steps * sections, desc="sampling steps", unit="step", leave=False, position=0,
                        disable=getattr(pipe, "_progress_bar_config", {}).get("disable", False))

    def before_step(self, latents: torch.Tensor, t: torch.Tensor) -> bool:
        if self.in_section > 0:
            self._finished_step(latents, modifiable=True)
        self.in_section += 1
        self.last_t = t
        return self.pipe.interrupt

    def section_done(self, latents: torch.Tensor) -> None:
        self._finished_step(latents, modifiable=False)
        self.in_section = 0

    def _finished_step(self, latents: torch.Tensor, modifiable: bool) -> None:
        self.bar.update(1)
        if self.callback is not None:
            timestep = flow.to_backbone_timestep(torch.as_tensor(self.last_t).float().reshape(-1))
            tensors = {"latents": latents}
            out = self.callback(self.pipe, self.index, timestep, {k: tensors[k] for k in self.inputs}) or {}
            new = out.get("latents")
            if new is not None and new is not latents:
                if modifiable:
                    latents.copy_(new)
                else:
                    log.warning("callback_on_step_end: latents returned after a section's last step are ignored")
        self.index += 1

    def close(self) -> None:
        self.bar.close()


def _one_prompt(prompt) -> str:
    if prompt is None:
        return ""
    if isinstance(prompt, (list, tuple)):
        if len(prompt) != 1:
            raise ValueError(f"one video per call: pass one prompt, got {len(prompt)}")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    return prompt


def _video_to_array(video) -> np.ndarray:
    """uint8 [T, H, W, 3] from an array or a list of PIL images / arrays."""
    if isinstance(video, np.ndarray):
        frames = video
    else:
        frames = np.stack([image_to_array(frame) for frame in video])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video must be uint8 [T, H, W, 3] or a list of images, got {frames.dtype} {frames.shape}")
    check_image_size(*frames.shape[1:3])
    return frames


def _cpu_generator(generator) -> torch.Generator:
    """`generate` draws noise on the CPU (as diffusers' F1 pipeline does); a device generator gives its seed."""
    if isinstance(generator, list):
        if len(generator) != 1:
            raise ValueError("one video per call: pass one generator")
        generator = generator[0]
    if generator is None:
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    if generator.device.type != "cpu":
        return torch.Generator().manual_seed(generator.initial_seed())
    return generator


def _postprocess(frames: np.ndarray, output_type: str):
    """uint8 [B, T, H, W, 3] → diffusers' video output types."""
    if output_type == "pil":
        from PIL import Image

        return [[Image.fromarray(frame) for frame in video] for video in frames]
    if output_type == "np":
        return frames.astype(np.float32) / 255.0
    return torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0  # "pt": [B, T, 3, H, W]

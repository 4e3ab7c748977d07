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
* Sections are sampled by `mempack.sampling.generate_sections` (one implementation: absolute RoPE, ψ
  updated after every section, a bounded history tail). The registered `FlowMatchEulerDiscreteScheduler`
  is kept for its configuration: its time grid equals the sampler's (tests/test_pipeline.py), but it
  steps from float64 sigmas and 1000·σ timesteps where the sampler uses float32 paper time, so it would
  not reproduce the numbers bit for bit. A swapped scheduler that describes another sampler is refused
  (`check_scheduler`), never silently ignored.
* The prompt may be a timeline (`mempack.timeline`): each section's text tokens follow it, ψ is carried
  across switches (docs/generation.md measures why).
* `sections()` yields the video section by section, each decoded as soon as it is sampled
  (`mempack.stream_decode`, exactly equal to one whole decode); `__call__` and `write_video` (which
  streams into an mp4) consume it: a ten-minute video never exists in memory.
* `check_inputs` is the one request check; every entry point runs it before anything is encoded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from mempack import flow, video_io
from mempack.encoders import COMPONENTS as ENCODER_COMPONENTS
from mempack.encoders import VideoEncoders, resize_center_crop
from mempack.model import Conditioning, MemoryPackConfig, MemoryPackTransformer
from mempack.model.history import POSITIONS
from mempack.model.memorypack import _preset_matching
from mempack.presets import BUCKET_MULTIPLE, PRESETS, get_preset, nearest_bucket, section_start_seconds
from mempack.sampling import GenerationConfig, generate_sections, sections_for_frames
from mempack.stream_decode import SectionDecoder
from mempack.timeline import PromptTimeline

log = logging.getLogger(__name__)

# the one clock and each preset's default bucket (mempack.presets): what prep trained at
DEFAULT_SIZE = {name: preset.default_bucket for name, preset in PRESETS.items()}
DEFAULT_FPS = {name: preset.fps for name, preset in PRESETS.items()}
SIDE_MULTIPLE = BUCKET_MULTIPLE  # VAE ×8, then the transformer's 2×2 patches
# Larger inputs are refused, not decoded: 8K (7680x4320) is 33 Mpx; PIL itself refuses above ~179 Mpx
MAX_IMAGE_PIXELS = 40_000_000
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# what makes the registered scheduler describe `mempack.sampling`'s sampler (checked on every call)
SAMPLER_CONFIG_KEYS = (
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "invert_sigmas",
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "time_shift_type",
    "stochastic_sampling",
)
PromptInput = str | list[str] | Mapping[float, str] | PromptTimeline | None  # mempack.timeline


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
        raise ValueError(
            f"image too large: {width}x{height} ({height * width / 1e6:.0f} Mpx; "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx): downscale it first"
        )


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
    return Conditioning(
        text.prompt_embeds,
        text.prompt_mask,
        text.pooled,
        encoders.encode_image(image[None]),
        encoders.encode_image_latent(image[None]),
    )


def prompt_conditioning(encoders: VideoEncoders, cond: Conditioning, prompt: str) -> Conditioning:
    """`cond` with another prompt's tokens (a timeline's later prompt): same image tokens and start latent."""
    text = encoders.encode_prompt([prompt])
    return Conditioning(text.prompt_embeds, text.prompt_mask, text.pooled, cond.image_embeds, cond.start_latent)


@dataclass
class GenerationRequest:
    """A checked request (`MemoryPackPipeline.check_inputs`): the inputs as the sampler reads them."""

    first: np.ndarray  # uint8 [H, W, 3]: the image, or the continued video's first frame
    video: np.ndarray | None  # uint8 [T, H, W, 3] on the model's clock
    height: int
    width: int
    timeline: PromptTimeline
    section_prompts: list[int]  # per new section, its prompt's index in the timeline
    sections: int
    total_frames: int  # frames of the output video
    offset_seconds: float  # where the first new section starts (after a continued video)
    callback_inputs: list[str]


@dataclass
class PipelineSection:
    """One new section, as `MemoryPackPipeline.sections` yields it.

    frames: uint8 [T, H, W, 3], the frames that became final with this section (None without decoding);
    latents: [1, C, window, h, w] on the CPU; index: 0, 1, ...; seconds: where the section starts in the
    video, on the model's clock; prompt: its prompt; elapsed: wall-clock seconds it took to sample;
    leading_latents: on section 0 only, the start latent and a continued video's latents before it.
    """

    index: int
    frames: np.ndarray | None
    latents: torch.Tensor
    seconds: float
    prompt: str
    elapsed: float
    leading_latents: torch.Tensor | None = None


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

    def __init__(
        self,
        transformer,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        image_encoder,
        feature_extractor,
        scheduler,
        semantic_pack=None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer,
            semantic_pack=semantic_pack,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            scheduler=scheduler,
        )
        self._model_config: MemoryPackConfig | None = None  # set from mempack.json by from_pretrained
        self._wrapped: tuple[tuple, _SteppedTransformer] | None = None
        self._interrupt = False

    # ----- construction and persistence ------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: MemoryPackTransformer,
        encoders: VideoEncoders,
        scheduler: FlowMatchEulerDiscreteScheduler | None = None,
    ) -> MemoryPackPipeline:
        """A pipeline over a model and encoders already in memory (training previews, tests)."""
        pipe = cls(
            transformer=model.backbone,
            semantic_pack=model.semantic_pack,
            vae=encoders.vae,
            text_encoder=encoders.text_encoder,
            tokenizer=encoders.tokenizer,
            text_encoder_2=encoders.text_encoder_2,
            tokenizer_2=encoders.tokenizer_2,
            image_encoder=encoders.image_encoder,
            feature_extractor=encoders.feature_extractor,
            scheduler=scheduler or default_scheduler(),
        )
        pipe.model_config = model.config
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> MemoryPackPipeline:
        """Load a pipeline folder (local only: nothing is downloaded); `mempack.json` sets RoPE and layout."""
        folder = Path(pretrained_model_name_or_path)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"no pipeline at {folder} (model_index.json missing)")
        kwargs.setdefault("local_files_only", True)
        pipe = super().from_pretrained(str(folder), **kwargs)
        if MemoryPackConfig.saved_in(folder):
            pipe.model_config = MemoryPackConfig.load(folder)
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' folder plus mempack.json, so the folder also loads as a MemoryPackTransformer."""
        super().save_pretrained(save_directory, **kwargs)
        self.model_config.save(save_directory)

    @property
    def model_config(self) -> MemoryPackConfig:
        """RoPE mode, history layout and preset (mempack.json); defaults for the backbone's size if unset."""
        if self._model_config is None:
            self._model_config = MemoryPackConfig(
                preset=_preset_matching(self.transformer), use_semantic_pack=self.semantic_pack is not None
            )
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
        components = {name: getattr(self, name) for name in ENCODER_COMPONENTS}
        return VideoEncoders(
            get_preset(self.preset_name),
            components,
            device=self._execution_device,
            dtype=self.text_encoder.dtype,
            place=False,
            vae_dtype=self.vae.dtype,
        )

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

    # ----- one request check (diffusers' `check_inputs`) --------------------------------------------
    def check_inputs(
        self,
        image=None,
        prompt: PromptInput = "",
        video=None,
        video_fps: float | None = None,
        num_frames: int = 37,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 10.0,
        output_type: str = "pil",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> GenerationRequest:
        """Every check a request gets, before anything is encoded or sampled; ValueError, one line each.

        As diffusers' pipelines do, but it returns what it read (the image as an array, the video on the
        model's clock, the size, the sections, each section's prompt), so nothing is read or checked twice.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_frames is None or num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        check_scheduler(self.scheduler)
        callback_inputs = list(callback_on_step_end_tensor_inputs)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_inputs = callback_on_step_end.tensor_inputs
        bad = [k for k in callback_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, got {bad}")
        timeline = prompt_timeline(prompt)
        preset = get_preset(self.preset_name)
        frames_in = None
        if video is not None:
            frames_in = video_io.on_clock(_video_to_array(video), video_fps, preset.fps)
        if image is None and frames_in is None:
            raise ValueError("pass an image (the first frame) or a video to continue")
        first = image_to_array(image) if image is not None else frames_in[0]
        if height is None or width is None:
            height, width = self.default_size(first)
        for name, side in (("height", height), ("width", width)):
            if side < SIDE_MULTIPLE or side % SIDE_MULTIPLE:
                raise ValueError(f"{name} must be a positive multiple of {SIDE_MULTIPLE}, got {side}")
        window, temporal = self.model_config.window, preset.vae_temporal
        if frames_in is None:  # num_frames counts the image's frame
            sections, total_frames, given = sections_for_frames(num_frames, window, temporal), num_frames, 1
        else:  # num_frames counts the frames after the given video, a causal VAE's 4k+1 of it
            given = (len(frames_in) - 1) // temporal * temporal + 1
            if given < 1 + temporal:
                raise ValueError(
                    f"a video to continue needs at least {1 + temporal} frames (at {preset.fps:g} fps), "
                    f"got {len(frames_in)}"
                )
            sections, total_frames = -(-num_frames // (temporal * window)), given + num_frames
        per_section = timeline.section_indices(sections, preset.fps, window, temporal)
        return GenerationRequest(
            first,
            frames_in,
            height,
            width,
            timeline,
            per_section,
            sections,
            total_frames,
            (given - 1) / preset.fps,
            callback_inputs,
        )

    # ----- calling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image=None,
        prompt: PromptInput = "",
        *,
        video=None,
        video_fps: float | None = None,
        num_frames: int = 37,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 10.0,
        generator: torch.Generator | None = None,
        use_memory: bool = True,
        positions: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """Generate one video.

        image: the first frame (PIL, EXIF orientation applied; or uint8 [H, W, 3]). prompt: a string, a
        list of one (diffusers' batch of one), or a timeline ({seconds: prompt} or `PromptTimeline`)
        whose switches snap to section starts (mempack.timeline). video: frames to continue instead
        (uint8 [T, H, W, 3] or a list of PIL images), recorded at `video_fps` (default: the model's
        clock; another rate is put on it as prep does): they are encoded as one causal stream, their
        latents become the history and feed ψ section by section, and the output starts with them (as
        the VAE reconstructs them). num_frames: frames generated after the image (its frame included)
        or after the video. output_type: "pil", "np", "pt" or "latent".
        callback_on_step_end(pipe, step, timestep, {"latents": ...}) runs after every Euler step of every
        section (step counts across sections); latents it returns replace the current ones, except after
        a section's last step (ψ has already read them); `pipe._interrupt = True` skips the rest.
        positions: the RoPE positions of sections past the model's trained length, "absolute", "shift" or
        "wrap" (None: the model's `mempack.json`, "shift" by default; docs/long_videos.md).
        `sections(...)` yields the same video section by section.
        """
        # 1. Check inputs
        request = self.check_inputs(
            image,
            prompt,
            video,
            video_fps,
            num_frames,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        # 2.-5. Encode, sample and decode section by section (`sections`), keeping what the output type asks for
        latent = output_type == "latent"
        chunks, latents, seconds = [], [], []
        for section in self._sections(
            request,
            generator,
            use_memory,
            num_inference_steps,
            guidance_scale,
            callback_on_step_end,
            decode=not latent,
            positions=positions,
        ):
            seconds.append(section.elapsed)
            if latent:
                latents.extend([section.leading_latents, section.latents] if section.index == 0 else [section.latents])
            else:
                chunks.append(section.frames)
        # 6. Postprocess
        frames = torch.cat(latents, dim=2) if latent else _postprocess(np.concatenate(chunks)[None], output_type)
        if not return_dict:
            return (frames,)
        return MemoryPackPipelineOutput(frames=frames, section_seconds=seconds)

    @torch.no_grad()
    def write_video(self, path: str | Path, fps: float, *, crf: int = 18, **kwargs) -> MemoryPackPipelineOutput:
        """As `__call__` (same keyword arguments), but each section's frames go into an h264 mp4 at once.

        Memory holds one section's frames, never the video; the file appears only when complete.
        """
        from mempack.video_io import Mp4Writer

        seconds = []
        with Mp4Writer(path, fps, crf) as writer:
            for section in self.sections(frames_desc="decoding + encoding mp4", **kwargs):
                writer.write(section.frames)
                seconds.append(section.elapsed)
        return MemoryPackPipelineOutput(frames=None, video_path=str(path), section_seconds=seconds)

    @torch.no_grad()
    def sections(
        self,
        image=None,
        prompt: PromptInput = "",
        *,
        video=None,
        video_fps: float | None = None,
        num_frames: int = 37,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 10.0,
        generator=None,
        use_memory: bool = True,
        positions: str | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        decode: bool = True,
        frames_desc: str = "decoding frames",
    ) -> Iterator[PipelineSection]:
        """The video as it is made: one `PipelineSection` per new section, as soon as it is sampled and decoded.

        Arguments as `__call__`. Each section carries the frames that became final with it (the tiled
        decode holds back the last few frames of a section until the next one arrives; the first section
        also carries the start frame or the continued video, the last one the rest), so their
        concatenation is the whole video. Nothing is kept between sections but the history tail and ψ:
        a consumer that lets them go holds memory flat in the video's length. `decode=False` skips the
        VAE (frames are None). Stopping early (`break`) ends the sampling there.
        """
        # 1. Check inputs
        request = self.check_inputs(
            image,
            prompt,
            video,
            video_fps,
            num_frames,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            "pil" if decode else "latent",
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        yield from self._sections(
            request,
            generator,
            use_memory,
            num_inference_steps,
            guidance_scale,
            callback_on_step_end,
            decode,
            frames_desc,
            positions,
        )

    def _sections(
        self,
        request: GenerationRequest,
        generator,
        use_memory: bool,
        steps: int,
        guidance: float,
        callback,
        decode: bool = True,
        frames_desc: str = "decoding frames",
        positions: str | None = None,
    ) -> Iterator[PipelineSection]:
        """Steps 2-5 of a call, on a checked request."""
        if positions is not None and positions not in POSITIONS:  # before any encoder runs
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self._interrupt = False
        encoders = self.encoders()
        # 2. Encode the first prompt and the first frame (ψ₀ reads both)
        first = resize_center_crop(request.first[None], request.height, request.width)[0]
        prompts = request.timeline.prompts
        cond = conditioning(encoders, first, prompts[0])
        # 3. Encode the video to continue: its latents become the history (and its first, the start latent)
        prefix = None
        if request.video is not None:
            prefix = self._video_latents(encoders, request.video, request.height, request.width)
        # 4. Encode the other prompts of the timeline: each section's text tokens follow it
        section_conds = None
        if len(prompts) > 1:
            conds = [cond] + [prompt_conditioning(encoders, cond, text) for text in prompts[1:]]
            section_conds = [conds[i] for i in request.section_prompts]
        # 5. Sample and decode section by section
        yield from self._sample_sections(
            request,
            encoders,
            cond,
            prefix,
            section_conds,
            generator,
            use_memory,
            steps,
            guidance,
            callback,
            decode,
            frames_desc,
            positions,
        )
        self.maybe_free_model_hooks()

    def _sample_sections(
        self,
        request: GenerationRequest,
        encoders: VideoEncoders,
        cond: Conditioning,
        prefix: torch.Tensor | None,
        section_conds: list[Conditioning] | None,
        generator,
        use_memory: bool,
        steps: int,
        guidance: float,
        callback,
        decode: bool,
        frames_desc: str,
        positions: str | None = None,
    ) -> Iterator[PipelineSection]:
        """Drive `generate_sections`; decode each section as it comes and yield it."""
        model = self.memorypack
        decoder = SectionDecoder(encoders) if decode else None
        frame_bar = tqdm(
            total=request.total_frames,
            desc=frames_desc,
            unit="frame",
            leave=False,
            position=1,
            disable=decoder is None or getattr(self, "_progress_bar_config", {}).get("disable", False),
        )
        written = 0

        def final(frames: np.ndarray) -> np.ndarray:
            nonlocal written
            frames = frames[: max(0, request.total_frames - written)]
            written += len(frames)
            frame_bar.update(len(frames))
            return frames

        leading = cond.start_latent if prefix is None else torch.cat([cond.start_latent, prefix], dim=2)
        pending = []
        if decoder is not None:
            pending = [final(decoder.push(cond.start_latent))] + (
                [final(decoder.push(prefix))] if prefix is not None else []
            )
        sections = request.sections
        stepper = _StepReporter(self, steps, sections, callback, request.callback_inputs)
        model.before_step = stepper.before_step
        config = GenerationConfig(
            sections=sections, steps=steps, guidance=guidance, use_memory=use_memory, positions=positions
        )
        log.info(
            "generating %d sections of %d latent frames (%dx%d, %d steps)",
            sections,
            model.config.window,
            request.width,
            request.height,
            steps,
        )
        preset = encoders.preset
        began = time.perf_counter()
        try:
            for sampled in generate_sections(
                model, cond, config, generator=_cpu_generator(generator), prefix=prefix, section_conds=section_conds
            ):
                stepper.section_done(sampled.latents)
                frames = None
                if decoder is not None:
                    frames = np.concatenate(pending + [final(decoder.push(sampled.latents))])
                    if sampled.index == sections - 1:
                        frames = np.concatenate([frames, final(decoder.finish())])
                    pending = []
                n = sampled.index
                yield PipelineSection(
                    index=n,
                    frames=frames,
                    latents=sampled.latents.cpu(),
                    seconds=request.offset_seconds
                    + section_start_seconds(n, preset.fps, model.config.window, preset.vae_temporal),
                    prompt=request.timeline.prompts[request.section_prompts[n]],
                    elapsed=sampled.seconds,
                    leading_latents=leading.float().cpu() if n == 0 else None,
                )
        finally:
            model.before_step = None
            stepper.close()
            frame_bar.close()
        log.info("generated %d sections in %.1f s", sections, time.perf_counter() - began)

    def _video_latents(self, encoders: VideoEncoders, frames: np.ndarray, height: int, width: int) -> torch.Tensor:
        """A video to continue → the latents after its start latent (its first frame is the image).

        The start latent stays the one-frame encode of that image (`conditioning`), as in training; the rest
        are latents 1 … of one causal stream, as prep encodes a training video's sections."""
        temporal = encoders.preset.vae_temporal
        usable = (len(frames) - 1) // temporal * temporal + 1  # check_inputs saw it holds >= 1 + temporal
        if usable < len(frames):
            log.info("continuing from the first %d of %d frames (a causal VAE takes 4k+1)", usable, len(frames))
        frames = resize_center_crop(frames[:usable], height, width)
        return encoders.encode_video(frames)[:, :, 1:]


class _StepReporter:
    """Progress bar, `callback_on_step_end` and interrupts, driven by `_SteppedTransformer`'s hook."""

    def __init__(self, pipe: MemoryPackPipeline, steps: int, sections: int, callback, inputs: Sequence[str]):
        self.pipe, self.steps, self.callback, self.inputs = pipe, steps, callback, list(inputs)
        self.index = 0  # global step index across sections
        self.in_section = 0
        self.last_t: torch.Tensor | None = None
        self.bar = tqdm(
            total=steps * sections,
            desc="sampling steps",
            unit="step",
            leave=False,
            position=0,
            disable=getattr(pipe, "_progress_bar_config", {}).get("disable", False),
        )

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


def prompt_timeline(prompt: PromptInput) -> PromptTimeline:
    """Any prompt argument → a timeline: a string (or a list of one, diffusers' batch of one) is a timeline
    of one prompt; a mapping of seconds → prompt or a `PromptTimeline` is one as it stands."""
    if isinstance(prompt, PromptTimeline):
        return prompt
    if isinstance(prompt, Mapping):
        return PromptTimeline.from_mapping(prompt)
    if prompt is None:
        prompt = ""
    if isinstance(prompt, (list, tuple)):
        if len(prompt) != 1:
            raise ValueError(
                f"one video per call: pass one prompt, got {len(prompt)} (a list is a batch; "
                f"a timeline is a dict of seconds → prompt)"
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, a list of one or a timeline, got {type(prompt).__name__}")
    return PromptTimeline(((0.0, prompt),))


def check_scheduler(scheduler) -> None:
    """The sampler is `mempack.sampling`'s Euler flow solver on F1's time grid, which the registered
    scheduler describes; a scheduler that describes another sampler is refused rather than ignored."""
    expected = default_scheduler().config
    if type(scheduler) is not FlowMatchEulerDiscreteScheduler or any(
        scheduler.config.get(key) != expected.get(key) for key in SAMPLER_CONFIG_KEYS
    ):
        raise ValueError(
            f"MemoryPackPipeline samples with F1's Euler flow schedule (mempack.sampling); it cannot "
            f"use {type(scheduler).__name__} with this configuration: keep the pipeline's scheduler"
        )


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

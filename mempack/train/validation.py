"""Validation videos during training: a short video from a fixed image and prompt, with the model as it
is at that step (the habit of diffusers' and musubi-tuner's training scripts), so a run that learns the
wrong thing is seen after hours, not days; the trainer logs the mp4 to the MLflow run under `samples/`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mempack.schema import data_clip_settings, data_encoders

log = logging.getLogger(__name__)


@dataclass
class SampleSettings:
    """What a validation video is made of (TrainConfig's sample_* keys)."""

    image: str | None
    prompt: str
    sections: int
    steps: int
    seed: int


class ValidationSampler:
    """Renders validation videos with the training data's encoders, at the training data's size and clock."""

    def __init__(self, data: str | Path, preset: str, settings: SampleSettings, device: torch.device,
                 dtype: torch.dtype):
        from mempack.encoders import VideoEncoders, resize_center_crop
        from mempack.inference import load_image
        from mempack.sample import SAMPLE_PROMPT, sample_image

        spec, clip = data_encoders(data, preset), data_clip_settings(data, preset)
        self.height, self.width, self.fps = clip["height"], clip["width"], clip["fps"]
        self.settings = settings
        self.encoders = VideoEncoders.build(spec["preset"], spec["path"], device=device, dtype=dtype, seed=spec["seed"])
        image = load_image(settings.image) if settings.image else sample_image(self.height, self.width)
        self.image = resize_center_crop(image[None], self.height, self.width)[0]
        self.prompt = settings.prompt or SAMPLE_PROMPT

    @torch.no_grad()
    def render(self, model, out: Path) -> Path:
        """Generate `settings.sections` sections with `model`, decode and write `out` (mp4); the training
        RNG and the model's train/eval mode are left as they were."""
        from mempack.sampling import GenerationConfig, generate
        from mempack.inference import conditioning
        from mempack.video_io import write_mp4

        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                cond = conditioning(self.encoders, self.image, self.prompt)
                config = GenerationConfig(sections=self.settings.sections, steps=self.settings.steps,
                                          seed=self.settings.seed)
                latents = generate(model, cond, config, progress=False).latents
                video = self.encoders.decode_latents(latents)[0]
        finally:
            model.train(was_training)
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_mp4(video, out, self.fps)

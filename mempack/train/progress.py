"""What a training run shows while it runs: a rank-0 console line every N steps and validation videos.

A multi-day run that prints nothing is indistinguishable from a hung one. `ProgressLine` turns the
step counter into one line every `every` steps — step, loss, seconds per step (averaged since the
previous line, so a checkpoint or a sample shows up in it) and the ETA to `max_steps`.
`ValidationSampler` renders a short video from a fixed image and prompt with the model as it is
at that step (the habit of diffusers' and musubi-tuner's training scripts), so a run that learns the
wrong thing is seen after hours, not days; the trainer logs the mp4 to the MLflow run under `samples/`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def console_logger() -> logging.Logger:
    """This module's logger with a stdout handler: Ray Train workers have no logging set up, and their
    stdout is what reaches the driver's console and the job logs."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ProgressLine:
    """One console line every `every` steps: `step 20/40 | loss 0.1234 | 1.52 s/step | ETA 0:00:30`."""

    def __init__(self, max_steps: int, every: int, start_step: int = 0, clock=time.perf_counter):
        self.max_steps, self.every, self.clock = max_steps, every, clock
        self._since_step, self._since = start_step, clock()
        self._losses: list[float] = []

    def update(self, step: int, loss: float) -> str | None:
        """Record a finished step; returns (and logs) the line when one is due."""
        self._losses.append(loss)
        if self.every <= 0 or (step % self.every and step < self.max_steps):
            return None
        now = self.clock()
        per_step = (now - self._since) / max(1, step - self._since_step)
        mean_loss = sum(self._losses) / len(self._losses)
        line = (f"step {step}/{self.max_steps} | loss {mean_loss:.4f} | {per_step:.2f} s/step | "
                f"ETA {format_duration(per_step * max(0, self.max_steps - step))}")
        self._since_step, self._since, self._losses = step, now, []
        console_logger().info(line)
        return line


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
        from mempack.sample_inputs import SAMPLE_PROMPT, sample_image

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
        from mempack.generate import GenerationConfig, generate
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


def _prep_summary(data: str | Path) -> dict:
    summary = Path(data) / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def _prep_config(data: str | Path) -> dict:
    return _prep_summary(data).get("config", {})


def data_encoders(data: str | Path, preset: str) -> dict:
    """The encoders that made the training data ({"preset", "path", "seed"}): what inference and the
    validation samples must build (read from the prep summary; the preset's random set without one)."""
    prep = _prep_config(data)
    if not prep:
        return {"preset": preset, "path": None, "seed": 0}
    return {"preset": prep.get("preset", preset), "path": prep.get("encoders"), "seed": prep.get("encoder_seed", 0)}


def data_clip_settings(data: str | Path, preset: str = "tiny") -> dict:
    """Height, width and fps of the training videos (validation samples match them): the prep output's
    most common resolution bucket (the preset's default bucket without a summary), at the one clock."""
    from mempack.presets import get_preset

    summary = _prep_summary(data)
    clock = get_preset(summary.get("config", {}).get("preset", preset))
    buckets = summary.get("resolution_buckets") or {}
    height, width = (int(v) for v in max(buckets, key=buckets.get).split("x")) if buckets else clock.default_bucket
    return {"height": height, "width": width, "fps": clock.fps}

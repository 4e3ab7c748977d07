"""Validation videos during training: a short video from a fixed image and prompt, with the model as it
is at that step (the habit of diffusers' and musubi-tuner's training scripts), so a run that learns the
wrong thing is seen after hours, not days; the trainer logs the mp4 to the MLflow run under `samples/`.

At FramePack-F1's size the sampler must not cost the training GPU what the run cannot spare
(docs/planning.md measures both):

* **The encoders run once, on the CPU.** The prompt and image never change, so their embeddings and the
  start latent are computed at start-up with the pipeline's own `conditioning` (the same inputs
  `MemoryPackPipeline` would give the transformer), and the text/image encoders (an 8 B Llama among
  them) are dropped at once. Only the VAE stays, on the CPU of rank 0, to decode the finished latents.
* **The transformer is never gathered whole.** Under ZeRO-3 every rank runs the same sampling forwards
  on its partitions, so DeepSpeed's own hooks gather one module's parameters at a time, exactly as in a
  training forward (the embeddings are sent from rank 0 to the others once). Under ZeRO-0/1/2 every rank
  already holds the weights, and rank 0 renders alone.

The pipeline's `__call__` is not used: it encodes the prompt and image on every call, which is what
keeping the encoders off the training GPU avoids; it shares `conditioning` and `generate` with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mempack.model import Conditioning
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


def encode_validation_inputs(data: str | Path, preset: str, settings: SampleSettings):
    """(conditioning on the CPU, the VAE-only `VideoEncoders` that decodes, (height, width), fps): the
    training data's encoders are built on the CPU, encode the fixed image and prompt once, and all but
    the VAE are dropped when this returns."""
    from mempack.encoders import VideoEncoders, resize_center_crop
    from mempack.inference import load_image
    from mempack.pipeline import conditioning
    from mempack.sample import SAMPLE_PROMPT, sample_image

    spec, clip = data_encoders(data, preset), data_clip_settings(data, preset)
    height, width = clip["height"], clip["width"]
    encoders = VideoEncoders.build(spec["preset"], spec["path"], device="cpu", dtype=torch.float32, seed=spec["seed"])
    image = load_image(settings.image) if settings.image else sample_image(height, width)
    image = resize_center_crop(image[None], height, width)[0]
    cond = conditioning(encoders, image, settings.prompt or SAMPLE_PROMPT)
    decoder = VideoEncoders(encoders.preset, {"vae": encoders.vae}, device="cpu", dtype=torch.float32)
    return cond, decoder, (height, width), clip["fps"]


class ValidationSampler:
    """Renders validation videos at the training data's size and clock without encoders on the training
    device: see the module docstring. Build it on every rank that takes part in sampling (all ranks under
    ZeRO-3, rank 0 otherwise); `share` sends rank 0's embeddings to the others (a collective)."""

    def __init__(self, data: str | Path, preset: str, settings: SampleSettings, *, rank: int = 0, share: bool = False):
        self.settings = settings
        self.rank = rank
        self.decoder = None
        payload = None
        if rank == 0:
            cond, self.decoder, size, self.fps = encode_validation_inputs(data, preset, settings)
            payload = [cond, size, self.fps]
        if share:
            objects = [payload]
            torch.distributed.broadcast_object_list(objects, src=0)
            payload = objects[0]
        self.cond: Conditioning = payload[0]
        (self.height, self.width), self.fps = payload[1], payload[2]

    @torch.no_grad()
    def render(self, model, out: Path, crf: int = 18) -> Path | None:
        """Generate `settings.sections` sections with `model` on its own device; rank 0 decodes on the CPU
        and writes `out` (mp4 at x264's `crf`; 0 is lossless), other ranks return None. The training RNG and
        the model's train/eval mode are left as they were."""
        from mempack.sampling import GenerationConfig, generate
        from mempack.video_io import write_mp4

        param = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                config = GenerationConfig(
                    sections=self.settings.sections, steps=self.settings.steps, seed=self.settings.seed
                )
                latents = generate(model, self.cond.to(param.device, param.dtype), config, progress=False).latents
        finally:
            model.train(was_training)
        if self.decoder is None:
            return None
        video = self.decoder.decode_latents(latents.cpu())[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_mp4(video, out, self.fps, crf=crf)

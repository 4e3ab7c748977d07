"""The encoding operator: one causal VAE stream per shot → its clip rows and its video row.

A class UDF so Ray Data builds the encoders once per actor (on a GPU when one is assigned). Reject
rows pass through untouched. A `shots` row (a training video's 1 + 36·n frames, see data_prep.process)
is VAE-encoded ONCE, as FramePack-F1 encodes a video and decodes a generation: clip s takes latents
1 + 9s … 9 + 9s of that stream. Encoding each section on its own would start every one with a one-frame
latent that F1 never sees mid-video. The start latent is different: it is frame 0 encoded ALONE, as
inference encodes the image it is given (`VideoEncoders.encode_image_latent`). The stream's latent 0 is
not that: the VAE's GroupNorm spans each temporal tile, so latent 0 of a stream depends on frames 1–16
(0.076 max abs apart on the tiny VAE, against a latent std of 0.094), and inference never has those frames.
The video row (prompt embeddings, pooled prompt, SigLIP tokens of frame 0, start latent) is emitted
beside the clips, so no groupby is needed anywhere in the streaming graph.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from data_prep.clips import source_offsets
from mempack.presets import SECTION_LATENT_FRAMES
from mempack.schema import SCHEMA_VERSION, pack_tensor, to_row_table, unpack_tensor

log = logging.getLogger(__name__)

_SHOT_FIELDS = (
    "schema_version",
    "input_id",
    "video_id",
    "source",
    "source_path",
    "shot_index",
    "num_clips",
    "fps",
    "source_fps",
    "height",
    "width",
    "caption",
    "dynamism",
)


def section_latents(stream: np.ndarray, sections: int) -> list[np.ndarray]:
    """A stream's latents [C, 1 + 9n, h, w] → the n sections' [C, 9, h, w] (latent 0 is not stored: the start
    latent is frame 0 encoded alone)."""
    window = SECTION_LATENT_FRAMES
    if stream.shape[1] != 1 + window * sections:
        raise ValueError(f"a stream of {sections} sections has {1 + window * sections} latents, got {stream.shape[1]}")
    return [stream[:, 1 + window * s : 1 + window * (s + 1)] for s in range(sections)]


class ClipEncoder:
    """Callable over pyarrow batches of ROW_SCHEMA rows: `shots` rows in, `clips` + `videos` rows out."""

    def __init__(self, preset: str = "tiny", weights: str | None = None, seed: int = 0, vae_dtype: str = "auto"):
        """Text and image encoders in bf16 on a GPU (fp32 on a CPU), the VAE in `vae_dtype`
        (mempack.encoders.resolve_vae_dtype: "auto" is fp16 on a GPU, fp32 on a CPU)."""
        from mempack.encoders import VideoEncoders, resolve_vae_dtype

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.encoders = VideoEncoders.build(
            preset, weights, device=device, dtype=dtype, seed=seed, vae_dtype=resolve_vae_dtype(vae_dtype, device)
        )

    def encode_shot(self, row: dict) -> list[dict]:
        """One shot row → its n clip rows (sections of one stream) and its video row."""
        frames = unpack_tensor("frames", row["frames"], row["frames_shape"])
        sections = int(row["num_clips"])
        stream = self.encoders.encode_video(frames)[0].numpy()  # [C, 1 + 9n, h, w], float32
        per_section = (len(frames) - 1) // sections
        offsets = source_offsets(len(frames), row["source_fps"], row["fps"])  # stream frame → source frame
        shot = {k: row[k] for k in _SHOT_FIELDS}
        clips = [
            {
                **shot,
                "table": "clips",
                "clip_index": s,
                "num_frames": per_section,
                "start_frame": row["start_frame"] + int(offsets[1 + per_section * s]),
                "latent_dtype": "float16",
                **pack_tensor("latents", latents),
            }
            for s, latents in enumerate(section_latents(stream, sections))
        ]
        prompt = self.encoders.encode_prompt([row["caption"] or ""])
        first = frames[:1]
        video = {
            **shot,
            "table": "videos",
            "schema_version": SCHEMA_VERSION,
            "start_frame": row["start_frame"],
            "num_frames": len(frames),
            **pack_tensor("prompt_embeds", prompt.prompt_embeds[0].cpu().numpy()),
            **pack_tensor("prompt_mask", prompt.prompt_mask[0].cpu().numpy()),
            **pack_tensor("pooled_prompt_embeds", prompt.pooled[0].cpu().numpy()),
            **pack_tensor("image_embeds", self.encoders.encode_image(first)[0].cpu().numpy()),
            **pack_tensor("image_latent", self.encoders.encode_image_latent(first)[0].numpy()),
        }
        return clips + [video]

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict] = []
        for row in batch.to_pylist():
            out.extend(self.encode_shot(row) if row["table"] == "shots" else [row])
        return to_row_table(out)

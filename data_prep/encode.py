"""The encoding operator: VAE latents per clip, prompt and image embeddings once per video.

A class UDF so Ray Data builds the encoders once per actor (on a GPU when one is assigned). Reject
rows pass through untouched. For a video's first clip it also emits the per-video row (prompt
embeddings, pooled prompt, SigLIP tokens and start latent of the shot's first frame), so no
groupby is needed anywhere in the streaming graph.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import torch

from data_prep.schema import SCHEMA_VERSION, pack_tensor, to_row_table, unpack_tensor

log = logging.getLogger(__name__)


class ClipEncoder:
    """Callable over pyarrow batches of ROW_SCHEMA rows."""

    def __init__(self, preset: str = "tiny", weights: str | None = None, seed: int = 0):
        from mempack.encoders import VideoEncoders

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.encoders = VideoEncoders.build(preset, weights, device=device, dtype=dtype, seed=seed)

    def encode_clip(self, row: dict) -> list[dict]:
        frames = unpack_tensor("frames", row["frames"], row["frames_shape"])
        latents = self.encoders.encode_video(frames)[0]
        clip = {**row, "frames": None, "frames_shape": None, "latent_dtype": "float16",
                **pack_tensor("latents", latents.cpu().numpy())}
        if row["clip_index"] != 0:
            return [clip]
        prompt = self.encoders.encode_prompt([row["caption"] or ""])
        first = frames[:1]
        video = {
            "table": "videos", "schema_version": SCHEMA_VERSION, "video_id": row["video_id"],
            "num_clips": row["num_clips"], "caption": row["caption"], "source_path": row["source_path"],
            **pack_tensor("prompt_embeds", prompt.prompt_embeds[0].cpu().numpy()),
            **pack_tensor("prompt_mask", prompt.prompt_mask[0].cpu().numpy()),
            **pack_tensor("pooled_prompt_embeds", prompt.pooled[0].cpu().numpy()),
            **pack_tensor("image_embeds", self.encoders.encode_image(first)[0].cpu().numpy()),
            **pack_tensor("image_latent", self.encoders.encode_image_latent(first)[0].cpu().numpy()),
        }
        return [clip, video]

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict] = []
        for row in batch.to_pylist():
            out.extend(self.encode_clip(row) if row["table"] == "clips" else [row])
        return to_row_table(out)

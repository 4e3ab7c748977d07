"""Decode a video's latents section by section, giving exactly the frames of one whole decode.

Why this is possible without approximation. diffusers' HunyuanVideo VAE never decodes a long video
in one pass: above 4 latent frames (`use_framewise_decoding`, on by default) it cuts the latents into
temporal tiles of 5 latent frames every 3 (`_temporal_tiled_decode`), decodes each tile alone (the
causal decoder sees only that tile), drops each later tile's first frame (a one-frame decode of the
tile's first latent), cross-fades 4 frames with the previous tile and keeps 12 frames per tile. Each
tile depends only on its own 5 latents and on the previous tile, so the same tiles can be decoded as
soon as their latents exist, and their frames emitted at once: memory holds one tile and the latents
of the next, however long the video. The arithmetic is diffusers' own (`decoder`, `tiled_decode` for
large frames, `blend_t`), so the frames are bit-identical to `VideoEncoders.decode_latents`
(tests/test_pipeline.py checks it).

FramePack's own loop instead re-decodes the last two sections each time and linearly blends 33
overlapping frames into a video it keeps whole; that trades exactness and memory for simplicity.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mempack.encoders import VideoEncoders, onload, pixels_to_uint8

log = logging.getLogger(__name__)


class SectionDecoder:
    """Feed scaled latents [1, C, T, h, w] in order with `push`; get uint8 frames [T', H, W, 3] back.

    `finish()` decodes what the end of the video leaves. Frames come out in order, each exactly once,
    and their concatenation equals `encoders.decode_latents(all latents)[0]`.
    """

    def __init__(self, encoders: VideoEncoders):
        self.encoders = encoders
        vae = encoders.vae
        self.vae = vae
        temporal = vae.temporal_compression_ratio
        self.tile_latents = vae.tile_sample_min_num_frames // temporal + 1  # 5: one tile's latents
        self.stride_latents = vae.tile_sample_stride_num_frames // temporal  # 3
        self.stride_frames = vae.tile_sample_stride_num_frames  # 12 frames kept per tile
        self.blend_frames = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames  # 4
        self.temporal = temporal
        self._pending: torch.Tensor | None = None  # latents from index `_offset` on, VAE-scaled
        self._offset = 0
        self._seen = 0  # latent frames pushed so far
        self._next_tile = 0  # latent index where the next tile starts
        self._previous: torch.Tensor | None = None  # the last decoded tile (blended), float
        self._emitted = 0  # frames handed out so far
        self._finished = False

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    def push(self, latents: torch.Tensor) -> np.ndarray:
        """Add the next latent frames; return every frame that no later latent can change."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        if latents.ndim != 5 or latents.shape[0] != 1:
            raise ValueError(f"expected latents [1, C, T, h, w], got {tuple(latents.shape)}")
        scaled = latents.to(self.encoders.device, self.encoders.vae_dtype) / self.encoders.scaling_factor
        self._pending = scaled if self._pending is None else torch.cat([self._pending, scaled], dim=2)
        self._seen += latents.shape[2]
        if not self.vae.use_framewise_decoding or self._seen <= self.tile_latents - 1:
            return self._empty()  # a short video decodes in one pass at finish(), as diffusers does
        return self._decode_ready(final=False)

    def finish(self) -> np.ndarray:
        """Decode the tiles the end of the video cuts short; return the last frames."""
        if self._finished:
            return self._empty()
        self._finished = True
        if self._pending is None:
            return self._empty()
        if not self.vae.use_framewise_decoding or self._seen <= self.tile_latents - 1:
            if self._offset:
                raise RuntimeError("internal: direct decode after tiles were emitted")
            self._set_tiling()
            onload(self.vae)
            return self._emit(self.vae.decode(self._pending).sample)
        return self._decode_ready(final=True)

    # ----- internals ---------------------------------------------------------------------------
    def _set_tiling(self) -> None:
        s = self.encoders.preset.vae_spatial
        self.encoders._set_tiling(self._pending.shape[-2] * s, self._pending.shape[-1] * s)

    def _decode_ready(self, final: bool) -> np.ndarray:
        """Decode every tile whose latents are all here (all remaining ones when `final`)."""
        out = []
        while self._next_tile < self._seen and (final or self._next_tile + self.tile_latents <= self._seen):
            out.append(self._decode_tile(self._next_tile))
            self._next_tile += self.stride_latents
            self._drop_consumed()
        return np.concatenate(out) if out else self._empty()

    @torch.no_grad()
    def _decode_tile(self, start: int) -> np.ndarray:
        """diffusers' `_temporal_tiled_decode` for one tile: decode, drop, blend, keep."""
        vae = self.vae
        self._set_tiling()
        onload(vae)
        tile = self._pending[:, :, start - self._offset : start - self._offset + self.tile_latents]
        min_h = vae.tile_sample_min_height // vae.spatial_compression_ratio
        min_w = vae.tile_sample_min_width // vae.spatial_compression_ratio
        if vae.use_tiling and (tile.shape[-1] > min_w or tile.shape[-2] > min_h):
            decoded = vae.tiled_decode(tile, return_dict=True).sample
        else:
            decoded = vae.decoder(vae.post_quant_conv(tile))
        if start > 0:
            decoded = decoded[:, :, 1:]
            decoded = vae.blend_t(self._previous, decoded, self.blend_frames)
            kept = decoded[:, :, : self.stride_frames]
        else:
            kept = decoded[:, :, : self.stride_frames + 1]
        self._previous = decoded
        return self._emit(kept)

    def _emit(self, video: torch.Tensor) -> np.ndarray:
        total = (self._seen - 1) * self.temporal + 1  # diffusers trims to the causal frame count
        video = video[:, :, : max(0, total - self._emitted)]
        self._emitted += video.shape[2]
        return pixels_to_uint8(video)[0]

    def _drop_consumed(self) -> None:
        """Forget latents no future tile reads (tiles start at `_next_tile`)."""
        drop = self._next_tile - self._offset
        if drop > 0 and self._pending is not None:
            self._pending = self._pending[:, :, drop:]
            self._offset += drop

    def _empty(self) -> np.ndarray:
        s = self.encoders.preset.vae_spatial
        h, w = (0, 0) if self._pending is None else (self._pending.shape[-2] * s, self._pending.shape[-1] * s)
        return np.zeros((0, h, w, 3), np.uint8)

"""A synthetic long-video world made directly of latents, whose ground truth we know.

It exists to test the method's two claims where a real dataset cannot: that SemanticPack remembers
what left FramePack's window, and that Direct Forcing curbs drift. A video is latents [16, 1 + 9·n, h, w]
(the start latent, then n sections of `SECTION` latent frames, the model's window), no VAE in the way.

* **Background**: a smooth random pattern per video. With `camera="static"` it stays put (it *is* the
  start latent, so FramePack's always-kept start frame carries it, and "section minus start latent" is
  exactly the object). With `camera="moving"` the camera pans at a constant velocity, zooms in and out
  and the lighting drifts (`Camera`): the start latent is the pattern at t = 0 and no later frame equals
  it, as on walking, driving and drone footage. The pattern is a sum of waves defined on the whole
  plane, so the truth exists for any number of frames (`World.backgrounds`), rollouts longer than the
  video included.
* **Object**: one of K identities, each a fixed code vector written into the channels of a 2×2 block
  (`codes`). It is *not* in the start latent: it enters at the portal (left edge) at the start of
  section `enter` ≥ 1, moves and bounces for `visible` sections, then is out of view for `absent`
  sections — longer than FramePack's 1 + 2 + 16 latent-frame window once `absent` ≥ 3 — and comes back
  at the portal. A beacon (an identity-free code in a corner) lights during the section before each
  entrance, so *when* the object comes is visible in the recent history; *which* identity comes back
  is only in the far past (at its first entrance it is new: any of the K).
  Prompts and image features never carry the identity (ψ₀ sees the background only).
* **Distractors** (optional): extra objects of other identities that stay in view, in their own rows.

`score` is the world's own decoder: for any latent video of this world it says, per frame, where objects
are and which identity each has (nearest code), and how far the background is from the truth.
`render` maps latents to RGB with a fixed palette so a rollout can be watched (mp4) and logged.
Everything is seeded: `WorldConfig.seed` fixes the codes and palette; each video has its own seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mempack.model import Conditioning
from mempack.presets import SECTION_LATENT_FRAMES

SECTION = SECTION_LATENT_FRAMES
CHANNELS = 16
OBJECT = 2  # object side in latent cells


@dataclass(frozen=True)
class WorldConfig:
    """Every knob of the world (the benchmark exposes each as a flag)."""

    identities: int = 4  # K
    height: int = 8  # latent cells
    width: int = 8
    absence: tuple[int, int] = (1, 8)  # sections out of view, inclusive range
    visible: tuple[int, int] = (1, 2)  # sections in view before leaving
    enter: tuple[int, int] = (1, 2)  # section in which the object first appears (never the start latent)
    after_return: int = 0  # sections generated after the return section
    distractors: int = 0  # extra always-visible objects of other identities
    speed: tuple[int, int] = (2, 2)  # cells per latent frame (even speeds keep the object on the 2×2 patch grid)
    code_scale: float = 1.5  # per-channel amplitude of identity codes
    background_scale: float = 0.5
    text_dim: int = 32  # widths of the prompt / image features (the tiny preset's)
    pooled_dim: int = 32
    image_dim: int = 32
    prompt_tokens: int = 16
    seed: int = 0  # fixes codes, beacon, prompt and the image-feature projection
    camera: str = "static"  # "moving": pan, zoom and lighting drift (Camera); objects and events unchanged

    def __post_init__(self) -> None:
        if self.identities < 2:
            raise ValueError("need at least 2 identities")
        if self.height < 2 * OBJECT or self.width < 2 * OBJECT:
            raise ValueError(f"world too small: {self.height}x{self.width} latent cells")
        for name in ("absence", "visible", "enter", "speed"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 1:
                raise ValueError(f"bad {name} range {lo}..{hi}")
        if self.distractors + 1 > self.identities:
            raise ValueError("distractors need identities of their own")
        if self.distractors * OBJECT + OBJECT > self.height:
            raise ValueError("no room for that many distractor rows")
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {self.camera!r}")


CAMERAS = ("static", "moving")
# World seeds that choices were made on (SemanticPack's options, learning rates, the CI guard's size): the
# development worlds. Every other world seed is a report world, whose numbers never fed a choice.
DEVELOPMENT_WORLD_SEEDS = (0,)


def world_role(config: WorldConfig) -> str:
    """ "development" (choices were made on this world: its numbers are not evidence) or "report"."""
    return "development" if config.seed in DEVELOPMENT_WORLD_SEEDS else "report"


def describe_world(config: WorldConfig) -> dict:
    """What a results file says about the world it measured: seed, K, camera and role."""
    return {"seed": config.seed, "identities": config.identities, "camera": config.camera, "role": world_role(config)}


@dataclass(frozen=True)
class Camera:
    """A moving camera's path: frame t (latent frames from the start latent) shows the pattern at
    rows/columns c + (cell − c)/zoom(t) + pan·t, times gain(t).

    zoom(t) = 1 + zoom·sin(2πt/zoom_period) and gain(t) = 1 + light·sin(2πt/light_period) are 1 at t = 0,
    so the start latent is the pattern itself; the pan never stops, so no later frame repeats it.
    """

    pan: tuple[float, float]  # (rows, columns) per latent frame
    zoom: float
    zoom_period: float
    light: float
    light_period: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Camera:
        """Pan 0.4–0.7 cells per latent frame in any direction (3.2–5.6 pixels at the VAE's 8×), zoom ±10–25 %
        over 3–6 sections, lighting ±10–20 % over 4–8 sections."""
        angle, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 0.7)
        return cls(
            (speed * math.sin(angle), speed * math.cos(angle)),
            rng.uniform(0.1, 0.25),
            rng.uniform(3, 6) * SECTION,
            rng.uniform(0.1, 0.2),
            rng.uniform(4, 8) * SECTION,
        )


@dataclass
class WorldVideo:
    """One video: latents [C, 1 + 9·n, h, w], its conditions and its ground truth."""

    latents: torch.Tensor
    background: torch.Tensor  # [C, h, w]
    identity: int
    enter: int  # sections are numbered from 0 (latent frames 1 + 9s … 9 + 9s)
    leave: int  # first absent section
    returns: int  # the section in which the object comes back
    positions: list[tuple[int, int] | None]  # per latent frame: the tracked object's top-left cell
    distractor_ids: list[int] = field(default_factory=list)
    pattern: torch.Tensor | None = None  # [C, 3, 4] wave parameters of the background (moving camera)
    camera: Camera | None = None  # None: the background stays put (`background` in every frame)

    @property
    def sections(self) -> int:
        return (self.latents.shape[1] - 1) // SECTION

    @property
    def absence(self) -> int:
        return self.returns - self.leave

    def clips(self) -> torch.Tensor:
        """The sections as training clips [n, C, 9, h, w] (the start latent excluded)."""
        body = self.latents[:, 1:]
        return body.reshape(CHANNELS, self.sections, SECTION, *body.shape[2:]).permute(1, 0, 2, 3, 4).contiguous()

    def section_frames(self, section: int) -> slice:
        return slice(1 + SECTION * section, 1 + SECTION * (section + 1))


class World:
    """Draws videos, builds their conditions, scores and renders latent videos of this world."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        g = torch.Generator().manual_seed(10_000 + config.seed)
        # identity codes: random signs, so every pair differs in about half the channels
        signs = torch.randint(0, 2, (config.identities, CHANNELS), generator=g) * 2 - 1
        self.codes = signs.float() * config.code_scale  # [K, C]
        self.beacon = (torch.randint(0, 2, (CHANNELS,), generator=g) * 2 - 1).float() * config.code_scale
        self.prompt = torch.randn(config.prompt_tokens, config.text_dim, generator=g)
        self.pooled = torch.randn(config.pooled_dim, generator=g)
        self.image_projection = torch.randn(CHANNELS, config.image_dim, generator=g) / math.sqrt(CHANNELS)
        self.palette = _palette(g)

    # ----- drawing ---------------------------------------------------------------------------------
    def video(self, seed: int, absence: int | None = None, identity: int | None = None) -> WorldVideo:
        """One video from its own seed (`absence` forces the number of absent sections, `identity` the
        tracked object's identity: evaluation sets balance identities so that a model which always draws
        the same one scores exactly chance, not the share of its favourite in a small random draw)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, seed])
        enter = int(rng.integers(cfg.enter[0], cfg.enter[1] + 1))
        visible = int(rng.integers(cfg.visible[0], cfg.visible[1] + 1))
        absent = absence if absence is not None else int(rng.integers(cfg.absence[0], cfg.absence[1] + 1))
        leave = enter + visible
        returns = leave + absent
        sections = returns + 1 + cfg.after_return
        frames = 1 + SECTION * sections
        drawn = int(rng.integers(cfg.identities))  # drawn even when forced: the rest of the video stays the same
        if identity is not None and not 0 <= identity < cfg.identities:
            raise ValueError(f"identity must be in 0..{cfg.identities - 1}, got {identity}")
        identity = drawn if identity is None else identity
        others = [k for k in range(cfg.identities) if k != identity]
        distractor_ids = [int(k) for k in rng.permutation(others)[: cfg.distractors]]
        background, params = self._background(rng)
        latents = background[:, None].repeat(1, frames, 1, 1)
        speed = int(rng.integers(cfg.speed[0], cfg.speed[1] + 1))
        lane = cfg.height - OBJECT  # the tracked object's row: the bottom lane
        positions: list[tuple[int, int] | None] = [None] * frames
        for start_section, end_section in ((enter, leave), (returns, sections)):
            first = 1 + SECTION * start_section
            for k, x in enumerate(_bounce(SECTION * (end_section - start_section), cfg.width - OBJECT, speed)):
                positions[first + k] = (lane, x)
        camera = pattern = None
        if cfg.camera == "moving":  # drawn last: a moving-camera video keeps the static one's objects and events
            pattern = params
            camera = Camera.draw(np.random.default_rng([cfg.seed, seed, 2]))
            latents = _moving_background(pattern, camera, frames, cfg, background).contiguous()
        for f, pos in enumerate(positions):
            if pos is not None:
                self._draw(latents, f, pos, self.codes[identity])
        for section in (enter - 1, returns - 1):  # the beacon: in the section before each entrance
            for f in range(1 + SECTION * section, 1 + SECTION * (section + 1)):
                latents[:, f, 0, cfg.width - 1] = self.beacon
        for d, k in enumerate(distractor_ids):
            row = d * OBJECT
            phase = int(rng.integers(0, cfg.width - OBJECT))
            xs = _bounce(frames - 1 + phase, cfg.width - OBJECT, 1)[phase:]
            for f in range(1, frames):
                self._draw(latents, f, (row, xs[f - 1]), self.codes[k])
        return WorldVideo(
            latents, background, identity, enter, leave, returns, positions, distractor_ids, pattern, camera
        )

    def backgrounds(self, video: WorldVideo, frames: int) -> torch.Tensor:
        """The true background of latent frames 0 … frames − 1 [C, frames, h, w] (frame 0: the start latent),
        for any length: a rollout longer than the video is scored against where the camera went."""
        if video.camera is None:
            return video.background[:, None].expand(-1, frames, -1, -1)
        return _moving_background(video.pattern, video.camera, frames, self.config, video.background)

    def _background(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A smooth pattern [C, h, w] (a few low-frequency waves per channel) and its waves' parameters."""
        cfg = self.config
        y = torch.arange(cfg.height, dtype=torch.float32)[:, None]
        x = torch.arange(cfg.width, dtype=torch.float32)[None]
        out = torch.zeros(CHANNELS, cfg.height, cfg.width)
        params = torch.from_numpy(rng.uniform(0, 1, size=(CHANNELS, 3, 4))).float()
        for c in range(CHANNELS):
            for fy, fx, phase, amp in params[c]:
                out[c] += (amp - 0.5) * torch.cos(
                    math.pi * (fy * y / cfg.height + fx * x / cfg.width) * 2 + 6.28 * phase
                )
        return out / out.std().clamp_min(1e-6) * cfg.background_scale, params

    @staticmethod
    def _draw(latents: torch.Tensor, frame: int, pos: tuple[int, int], code: torch.Tensor) -> None:
        y, x = pos
        latents[:, frame, y : y + OBJECT, x : x + OBJECT] = code[:, None, None]

    def conditioning(self, video: WorldVideo) -> Conditioning:
        """Prompt (the same sentence for every video: it never names the identity), image features of
        the start latent (background only) and the start latent, batch 1."""
        start = video.latents[:, :1]
        image_tokens = start[:, 0].flatten(1).T @ self.image_projection  # [h·w, image_dim]
        cfg = self.config
        return Conditioning(
            prompt_embeds=self.prompt[None].clone(),
            prompt_mask=torch.ones(1, cfg.prompt_tokens, dtype=torch.int64),
            pooled=self.pooled[None].clone(),
            image_embeds=image_tokens[None],
            start_latent=start[None].clone(),
        )

    # ----- scoring ---------------------------------------------------------------------------------
    def detect(self, frame: torch.Tensor) -> list[tuple[int, int, int]]:
        """Objects in one latent frame [C, h, w]: (row, col, identity) of each cell that holds a code.

        A cell holds an object when its vector is close to one of the K codes in direction and size
        (cosine ≥ 0.7, norm within 0.5–1.5× a code's): a blurred average of several codes fails both.
        """
        vectors = frame.flatten(1).T.float()  # [h·w, C]
        norms = vectors.norm(dim=1)
        cos = (vectors @ self.codes.T) / (norms[:, None] * self.codes.norm(dim=1)[None]).clamp_min(1e-6)
        best, ident = cos.max(dim=1)
        size = norms / self.codes.norm(dim=1)[ident]
        hit = (best >= 0.7) & (size >= 0.5) & (size <= 1.5)
        width = frame.shape[2]
        return [(int(i) // width, int(i) % width, int(ident[i])) for i in torch.nonzero(hit).flatten()]

    def identity_in(self, latents: torch.Tensor, frames: slice, rows: tuple[int, int] | None = None) -> int | None:
        """The identity seen most in `frames` of a latent video [C, T, h, w] (within `rows`), or None."""
        votes = np.zeros(self.config.identities)
        for f in range(*frames.indices(latents.shape[1])):
            for y, _, k in self.detect(latents[:, f]):
                if rows is None or rows[0] <= y < rows[1]:
                    votes[k] += 1
        needed = OBJECT * OBJECT * max(1, (frames.stop - frames.start) // 3)  # a third of the frames
        return int(votes.argmax()) if votes.sum() >= needed else None

    def frame_errors(self, latents: torch.Tensor, background: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-frame error of a latent video [C, T, h, w] against this world's truth.

        `background` is the true background, [C, h, w] (static camera) or per frame [C, T, h, w]
        (`backgrounds`). `background`: mean squared error over cells where no object was detected. `object`: over
        detected object cells, 1 − cosine to the nearest code (how
        far objects are from a clean identity); 0 when none is seen. `total` is their sum.
        """
        bg, obj = [], []
        beacon = (0, self.config.width - 1)  # part of the world's truth, but not of the background
        codes_unit = self.codes / self.codes.norm(dim=1, keepdim=True)
        for f in range(latents.shape[1]):
            frame = latents[:, f].float()
            mask = torch.ones(frame.shape[1:], dtype=torch.bool)
            mask[beacon] = False
            cos_err = []
            for y, x, _ in self.detect(frame):
                mask[y, x] = False
                v = frame[:, y, x]
                cos_err.append(1 - float((v / v.norm().clamp_min(1e-6) @ codes_unit.T).max()))
            truth = background if background.ndim == 3 else background[:, f]
            diff = (frame - truth)[:, mask]
            bg.append(float(diff.square().mean()) if diff.numel() else 0.0)
            obj.append(float(np.mean(cos_err)) if cos_err else 0.0)
        bg_a, obj_a = np.asarray(bg), np.asarray(obj)
        return {"background": bg_a, "object": obj_a, "total": bg_a + obj_a}

    # ----- rendering -------------------------------------------------------------------------------
    def render(self, latents: torch.Tensor, scale: int = 8) -> np.ndarray:
        """RGB frames [T, h·scale, w·scale, 3] uint8: a fixed linear palette of the 16 channels."""
        x = latents.float().permute(1, 2, 3, 0) @ self.palette  # [T, h, w, 3]
        rgb = ((x.tanh() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        return rgb.repeat(scale, axis=1).repeat(scale, axis=2)


def _bounce(steps: int, span: int, speed: int) -> list[int]:
    """Positions of a point moving right from 0 at `speed` cells per frame, reflecting inside [0, span]."""
    out, x, v = [], 0, speed
    for _ in range(steps):
        out.append(x)
        x += v
        if x > span:
            x, v = 2 * span - x, -v
        elif x < 0:
            x, v = -x, -v
    return out


def _moving_background(
    pattern: torch.Tensor, camera: Camera, frames: int, cfg: WorldConfig, start: torch.Tensor
) -> torch.Tensor:
    """The pattern seen through `camera` in latent frames 0 … frames − 1 [C, frames, h, w], scaled as the
    start latent (`start`, the static pattern) was, so frame 0 is the start latent."""
    t = torch.arange(frames, dtype=torch.float64)[:, None, None]
    cy, cx = (cfg.height - 1) / 2, (cfg.width - 1) / 2
    zoom = 1 + camera.zoom * torch.sin(2 * math.pi * t / camera.zoom_period)
    rows = cy + (torch.arange(cfg.height, dtype=torch.float64)[None, :, None] - cy) / zoom + camera.pan[0] * t
    cols = cx + (torch.arange(cfg.width, dtype=torch.float64)[None, None, :] - cx) / zoom + camera.pan[1] * t
    p = pattern.double()
    fy, fx, phase, amp = (p[..., i][..., None, None, None] for i in range(4))  # [C, 3, 1, 1, 1]
    waves = (amp - 0.5) * torch.cos(math.pi * (fy * rows / cfg.height + fx * cols / cfg.width) * 2 + 6.28 * phase)
    raw = waves.sum(dim=1)  # [C, frames, h, w]
    scale = start.double().std() / raw[:, 0].std().clamp_min(1e-12)  # the start latent's normalisation
    gain = 1 + camera.light * torch.sin(2 * math.pi * t / camera.light_period)
    out = (raw * scale * gain).float()
    out[:, 0] = start  # exactly the start latent (float rounding aside, it is the same pattern)
    return out


def _palette(g: torch.Generator) -> torch.Tensor:
    """A fixed projection of 16 channels to RGB (columns normalised so a code maps to a saturated colour)."""
    p = torch.randn(CHANNELS, 3, generator=g)
    return p / p.norm(dim=0, keepdim=True) * 0.6

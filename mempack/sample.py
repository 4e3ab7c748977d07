"""The built-in sample: synthetic videos with known cuts, static and moving stretches, captions.

Each video is a sequence of shots; a shot is a textured background with a coloured square moving at
a constant speed (zero for a static shot). Consecutive shots differ in palette, so a content
detector sees a hard cut exactly at the boundary frames returned in `SampleVideo.cuts`.
Like edited real footage, at FramePack-F1's 30 fps, shots last 1.3–3.7 s: 1 + 36·n frames and a few
more hold n sections (1, 2 or 3), and one video is portrait, so prep fills two resolution buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mempack.video_io import write_mp4


@dataclass
class SampleShot:
    frames: int
    speed: float  # pixels per frame of the moving square; 0 = static shot
    hue: int


@dataclass
class SampleVideo:
    name: str
    caption: str
    shots: list[SampleShot]
    fps: float = 30.0
    size: tuple[int, int] = (96, 128)  # (height, width)

    @property
    def cuts(self) -> list[int]:
        """First frame of every shot after the first."""
        return np.cumsum([s.frames for s in self.shots])[:-1].tolist()

    @property
    def num_frames(self) -> int:
        return sum(s.frames for s in self.shots)


SAMPLE_VIDEOS = [  # sections per moving shot: 2, 1 | 2 | 3 (portrait)
    SampleVideo(
        "street_two_shots",
        "a red square drives across a striped street, then a blue one",
        [SampleShot(76, 1.5, 0), SampleShot(40, -2.0, 120)],
    ),
    SampleVideo(
        "static_then_moving",
        "a quiet wall, then a ball rolling across a field",
        [SampleShot(40, 0.0, 60), SampleShot(76, 1.0, 200)],
    ),
    SampleVideo(
        "long_single_shot", "a yellow kite sweeps across a long sky", [SampleShot(112, 1.2, 30)], size=(128, 96)
    ),
    SampleVideo("static_only", "", [SampleShot(40, 0.0, 90)]),
]


def render_shot(shot: SampleShot, size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 [frames, H, W, 3]: a textured background and a moving square, colours from `hue`."""
    h, w = size
    rng = np.random.default_rng(seed)
    base = np.array([(shot.hue * 3) % 256, (shot.hue * 5 + 80) % 256, (255 - shot.hue) % 256], dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (np.sin(xx / 6.0 + shot.hue) * 0.5 + 0.5)[..., None] * 60
    background = np.clip(base * 0.6 + stripes + rng.normal(0, 4, (h, w, 3)), 0, 255)
    frames = np.empty((shot.frames, h, w, 3), dtype=np.uint8)
    side = h // 4
    for i in range(shot.frames):
        img = background.copy()
        x = int((w // 4 + shot.speed * i) % (w - side))
        y = h // 2 - side // 2 + int(6 * np.sin(i / 8.0)) * (shot.speed != 0)
        img[y : y + side, x : x + side] = 255 - base
        frames[i] = img.astype(np.uint8)
    return frames


def make_sample(folder: str | Path, size: tuple[int, int] | None = None) -> list[SampleVideo]:
    """Write the sample videos (mp4) with caption sidecars into `folder`; return their ground truth.

    `size` (height, width) renders them all at another size than their own (96x128, one 128x96), e.g. to
    benchmark prep at 360p; speeds scale with the width, so every shot moves the same fraction of the frame.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos = SAMPLE_VIDEOS
    if size:
        videos = [
            replace(v, size=size, shots=[replace(s, speed=s.speed * size[1] / v.size[1]) for s in v.shots])
            for v in SAMPLE_VIDEOS
        ]
    for k, video in enumerate(videos):
        parts = [render_shot(shot, video.size, seed=100 * k + j) for j, shot in enumerate(video.shots)]
        write_mp4(np.concatenate(parts), folder / f"{video.name}.mp4", video.fps)
        if video.caption:
            (folder / f"{video.name}.txt").write_text(video.caption + "\n", encoding="utf-8")
    return videos


# The built-in conditioning inputs of inference: a synthetic first frame and a prompt, drawn the way
# the built-in training sample draws its shots, so a model trained by `make demo` is asked for something it has seen.

SAMPLE_PROMPT = SAMPLE_VIDEOS[2].caption  # "a yellow kite sweeps across a long sky"


def sample_image(height: int = 64, width: int = 64, seed: int = 200) -> np.ndarray:
    """uint8 [height, width, 3]: the first frame of a moving shot of the built-in sample."""
    shot = SampleShot(frames=1, speed=1.2, hue=SAMPLE_VIDEOS[2].shots[0].hue)
    return render_shot(shot, (height, width), seed=seed)[0]

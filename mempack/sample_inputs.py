"""The built-in conditioning inputs of `pipelines/infer.py`: a synthetic first frame and a prompt.

The image is drawn the way the built-in training sample draws its shots (striped background, a
coloured square), so a model trained by `make demo` is asked for something it has seen.
"""

from __future__ import annotations

import numpy as np

from data_prep.sample import SAMPLE_VIDEOS, SampleShot, render_shot

SAMPLE_PROMPT = SAMPLE_VIDEOS[2].caption  # "a yellow kite sweeps across a long sky"


def sample_image(height: int = 64, width: int = 64, seed: int = 200) -> np.ndarray:
    """uint8 [height, width, 3]: the first frame of a moving shot of the built-in sample."""
    shot = SampleShot(frames=1, speed=1.2, hue=SAMPLE_VIDEOS[2].shots[0].hue)
    return render_shot(shot, (height, width), seed=seed)[0]

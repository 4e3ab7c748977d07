"""FramePack-F1 history packing and RoPE indices against hand-computed layouts."""

import pytest
import torch

from mempack.model.history import HistoryLayout, pack_history, rope_indices

C, H, W = 2, 4, 4


def video(frames: int) -> torch.Tensor:
    """Latent frame k is filled with the value k + 1 (0 is reserved for padding)."""
    return (torch.arange(frames, dtype=torch.float32) + 1).reshape(1, 1, frames, 1, 1).expand(1, C, frames, H, W)


def frame_values(x: torch.Tensor) -> list[float]:
    return x[0, 0, :, 0, 0].tolist()


@pytest.mark.parametrize(
    "history_frames, four_x, two_x, one_x",
    [
        # context = start latent (value 1) + history frames (values 2..T+1); left-padded with zeros
        (0, [0.0] * 16, [0.0, 0.0], [1.0]),
        (1, [0.0] * 16, [0.0, 1.0], [2.0]),
        (3, [0.0] * 15 + [1.0], [2.0, 3.0], [4.0]),
        (30, [float(v) for v in range(13, 29)], [29.0, 30.0], [31.0]),
    ],
)
def test_packing_takes_the_newest_frames_into_4x_2x_1x(history_frames, four_x, two_x, one_x):
    full = video(1 + history_frames)
    packed = pack_history(full[:, :, :1], full[:, :, 1:])
    assert frame_values(packed.latents_4x) == four_x
    assert frame_values(packed.latents_2x) == two_x
    assert frame_values(packed.latents_clean) == [1.0] + one_x  # start latent beside the 1x frame


@pytest.mark.parametrize(
    "history_frames, clean, two_x, four_x_first, noisy_first",
    [
        (0, [0, 0], [-2, -1], -18, 1),
        (1, [0, 1], [-1, 0], -17, 2),
        (3, [0, 3], [1, 2], -15, 4),
        (30, [0, 30], [28, 29], 12, 31),
    ],
)
def test_absolute_rope_indices(history_frames, clean, two_x, four_x_first, noisy_first):
    packed = pack_history(video(1)[:, :, :1], video(history_frames) if history_frames else None)
    assert packed.indices_clean.tolist() == clean
    assert packed.indices_2x.tolist() == two_x
    assert packed.indices_4x.tolist() == list(range(four_x_first, four_x_first + 16))
    assert packed.indices_latents.tolist() == list(range(noisy_first, noisy_first + 9))


def test_absolute_indices_of_section_n_match_the_design():
    for n in (0, 1, 7):
        idx = rope_indices(1 + 9 * n, HistoryLayout())
        assert idx["indices_latents"].tolist() == list(range(1 + 9 * n, 10 + 9 * n))
        assert idx["indices_clean"].tolist() == [0, 9 * n]
        assert idx["indices_2x"].tolist() == [9 * n - 2, 9 * n - 1]
        assert idx["indices_4x"].tolist() == list(range(9 * n - 18, 9 * n - 2))


def test_relative_indices_reproduce_diffusers_vanilla_f1():
    # diffusers: arange(29).split([1, 16, 2, 1, 9]) = start, 4x, 2x, 1x, noisy, for every section
    for context in (1, 10, 100):
        idx = rope_indices(context, HistoryLayout(), mode="relative")
        assert idx["indices_clean"].tolist() == [0, 19]
        assert idx["indices_4x"].tolist() == list(range(1, 17))
        assert idx["indices_2x"].tolist() == [17, 18]
        assert idx["indices_latents"].tolist() == list(range(20, 29))


def test_custom_layout_is_respected():
    layout = HistoryLayout(frames_1x=2, frames_2x=4, frames_4x=8, window=5)
    full = video(1 + 20)
    packed = pack_history(full[:, :, :1], full[:, :, 1:], layout)
    assert packed.latents_clean.shape[2] == 3 and packed.latents_2x.shape[2] == 4
    assert packed.latents_4x.shape[2] == 8 and packed.indices_latents.tolist() == list(range(21, 26))


def test_empty_streams_are_refused():
    with pytest.raises(ValueError):
        HistoryLayout(frames_2x=0)

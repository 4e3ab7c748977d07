"""Prompts per section, sections as they come, the scheduler, and continued videos at another frame rate.

The pipeline runs the tiny preset at 32x32 with one or two Euler steps: the code path of the real model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mempack.encoders import VideoEncoders
from mempack.model import MemoryPackTransformer
from mempack.pipeline import MemoryPackPipeline
from mempack.presets import section_start_seconds
from mempack.sample import sample_image
from mempack.timeline import PromptTimeline, TimelineError, read_prompt
from mempack.video_io import on_clock, read_video, write_mp4
from tests.entry_points import error_line

ROOT = Path(__file__).resolve().parents[1]
KW = dict(image=sample_image(32, 32), height=32, width=32, num_inference_steps=1)


@pytest.fixture(scope="module")
def pipe() -> MemoryPackPipeline:
    pipe = MemoryPackPipeline.from_model(
        MemoryPackTransformer.from_preset("tiny", seed=1).eval(), VideoEncoders.build("tiny", seed=0)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe, prompt, sections: int = 3, seed: int = 4) -> torch.Tensor:
    frames = 1 + 36 * sections
    return pipe(
        prompt=prompt, num_frames=frames, output_type="latent", generator=torch.Generator().manual_seed(seed), **KW
    ).frames


def test_timeline_syntax_and_snapping():
    """The three spellings agree; switches go to the nearest 1.2 s section start; bad timelines are one line."""
    line = PromptTimeline.parse("0s: a kite rises | 12s: it dives")
    assert line == PromptTimeline.from_mapping({0: "a kite rises", "12s": "it dives"})
    assert read_prompt("a kite | no timeline") == "a kite | no timeline"
    assert section_start_seconds(10) == pytest.approx(12.0)
    assert PromptTimeline.parse("0s: a | 1.7s: b").section_indices(3) == [0, 1, 1]  # 1.7 s → 1.2 s
    assert PromptTimeline.parse("0s: a | 1.9s: b").section_indices(3) == [0, 0, 1]  # 1.9 s → 2.4 s
    for text, needle in (
        ("0s: a | 3.6s: b", "past the video's end"),
        ("0s: a | 0.5s: b", "same section start"),
        ("2s: a", "starts at 0s"),
        ("0s: a | b", "SECONDSs: prompt"),
    ):
        with pytest.raises(TimelineError, match=needle):
            PromptTimeline.parse(text).section_indices(3)


def test_timeline_file(tmp_path):
    (tmp_path / "t.yaml").write_text("0: a kite rises\n12s: it dives\n")
    (tmp_path / "t.json").write_text(json.dumps({"0": "a kite rises", "12": "it dives"}))
    assert PromptTimeline.load(tmp_path / "t.yaml") == PromptTimeline.load(tmp_path / "t.json")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(TimelineError, match="one mapping"):
        PromptTimeline.load(tmp_path / "bad.yaml")


def test_one_prompt_timeline_is_the_plain_call(pipe):
    plain = latents(pipe, "a kite")
    assert torch.equal(latents(pipe, {0: "a kite"}), plain)
    assert torch.equal(latents(pipe, ["a kite"]), plain)  # a list is a batch: of one here
    with pytest.raises(ValueError, match="one video per call"):
        latents(pipe, ["a kite", "a dog"])


def test_switch_changes_only_the_sections_after_it(pipe):
    """Same seed: sections before the switch are the unswitched video's, bit for bit; those after differ."""
    plain = latents(pipe, "a kite rises")
    switched = latents(pipe, {0: "a kite rises", 2.4: "it dives"})  # the start of section 2
    window = 9
    before, after = slice(0, 1 + 2 * window), slice(1 + 2 * window, None)
    assert torch.equal(switched[:, :, before], plain[:, :, before])
    assert (switched[:, :, after] - plain[:, :, after]).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="past the video's end"):
        latents(pipe, {0: "a kite rises", 4: "it dives"})  # 4 s snaps to 3.6 s: after 3 sections of 1.2 s


def test_sections_come_as_they_are_made(pipe):
    """The generator yields each section before sampling the next; its frames are the whole video's."""
    kw = dict(prompt={0: "a kite rises", 1.2: "it dives"}, num_frames=1 + 36 * 3, **KW)
    whole = pipe(output_type="np", generator=torch.Generator().manual_seed(2), **kw).frames[0]
    forwards = []
    handle = pipe.memorypack.backbone.register_forward_hook(lambda *a: forwards.append(1))
    try:
        seen = []
        for section in pipe.sections(generator=torch.Generator().manual_seed(2), **kw):
            seen.append((section.index, len(forwards), section.seconds, section.prompt, section.frames))
    finally:
        handle.remove()
    assert [(i, calls) for i, calls, *_ in seen] == [(0, 1), (1, 2), (2, 3)]  # one step per section, lazily
    assert [s for _, _, s, _, _ in seen] == pytest.approx([0.0, 1.2, 2.4])
    assert [p for _, _, _, p, _ in seen] == ["a kite rises", "it dives", "it dives"]
    frames = np.concatenate([f for *_, f in seen])
    assert len(seen[0][4]) > 0 and np.array_equal(frames, np.round(whole * 255).astype(np.uint8))


def test_a_swapped_scheduler_is_refused(pipe):
    original = pipe.scheduler
    try:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # another sampler: it would be ignored
        with pytest.raises(ValueError, match="keep the pipeline's scheduler"):
            latents(pipe, "a kite", sections=1)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(original.config)  # the same one: fine
        assert latents(pipe, "a kite", sections=1).shape[2] == 10
    finally:
        pipe.scheduler = original


def test_a_60fps_video_continues_at_the_models_clock(pipe, tmp_path):
    """A 60 fps file is put on the 30 fps clock as prep does (every other frame), so it plays at its speed."""
    frames = np.stack([np.roll(sample_image(32, 32), 3 * k, axis=1) for k in range(74)])  # 74 frames = 1.23 s
    path = write_mp4(frames, tmp_path / "fast.mp4", fps=60, crf=0)
    decoded, fps = read_video(path)
    assert fps == 60.0 and len(decoded) == 74
    assert np.array_equal(on_clock(decoded, fps, 30.0), decoded[::2])
    kw = dict(prompt="a kite", num_frames=36, num_inference_steps=1, output_type="latent", height=32, width=32)
    at_60 = pipe(video=decoded, video_fps=fps, generator=torch.Generator().manual_seed(1), **kw).frames
    at_30 = pipe(video=decoded[::2], generator=torch.Generator().manual_seed(1), **kw).frames
    assert torch.equal(at_60, at_30) and at_60.shape[2] == 1 + 9 + 9  # 37 frames at 30 fps: 1 + 9 latents


def test_cli_timeline_errors_are_one_line(tmp_path):
    """A timeline past the video's end, or unreadable, is one `error:` line from the CLI, and no mp4."""
    out = tmp_path / "x.mp4"
    common = ("--quiet", "--sections", "1", "--steps", "1", "--height", "32", "--width", "32", "--out", str(out))
    (tmp_path / "t.json").write_text("{not json")
    for args, needle in (
        (("--prompt", "0s: a kite | 5s: it dives"), "past the video's end"),
        (("--timeline", str(tmp_path / "t.json")), "cannot read timeline"),
    ):
        assert needle in error_line(["pipelines/infer.py", *common, *args])
    assert not out.exists()


def test_docs_python_blocks_run(tmp_path):
    """docs/generation.md's Python examples, run as written (tiny random weights: no export needed)."""
    text = (ROOT / "docs" / "generation.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]

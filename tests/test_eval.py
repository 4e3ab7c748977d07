"""Evaluation metrics on synthetic videos with hand-computable answers, plus the evaluate CLI end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mempack.eval import (
    ClipFeatures,
    DinoFeatures,
    PixelFeatures,
    brightness,
    consistency_to_first,
    drift,
    dynamic_threshold,
    evaluate_video,
    flow_stats,
    motion_smoothness,
    vbench_consistency,
)
from mempack.video_io import write_mp4

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
DIAG = math.hypot(SIZE, SIZE)


def static_video(t: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return np.repeat(frame[None], t, axis=0)


def moving_square(t: int = 10, step: int = 2, side: int = 24) -> np.ndarray:
    """A bright square translating `step` px/frame to the right on a dark background."""
    v = np.full((t, SIZE, SIZE, 3), 20, np.uint8)
    for i in range(t):
        v[i, 20 : 20 + side, 4 + step * i : 4 + step * i + side] = 230
    return v


def moving_texture(t: int = 10, step: int = 2, moving_pairs: int | None = None) -> np.ndarray:
    """A smooth random texture filling the frame, panning `step` px/frame: every pixel moves.

    With `moving_pairs=k` it pans for the first k frame pairs only, then holds still.
    """
    rng = np.random.default_rng(1)
    wide = cv2.GaussianBlur(rng.random((SIZE, SIZE + step * t)).astype(np.float32), (0, 0), 2)
    wide = (wide - wide.min()) / (wide.max() - wide.min()) * 255
    k = t if moving_pairs is None else moving_pairs
    offsets = [step * min(i, k) for i in range(t)]
    return np.stack([np.repeat(wide[:, o : o + SIZE, None], 3, 2) for o in offsets]).astype(np.uint8)


def pixel_reference(frame: np.ndarray) -> np.ndarray:
    x = cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    x -= x.mean()
    return x / np.linalg.norm(x)


def test_static_video_is_perfectly_consistent_and_still():
    m = evaluate_video(static_video())
    assert m["dynamic_degree"] == 0.0 and m["flow_magnitude"] == 0.0
    assert m["subject_consistency"] >= 0.999 and m["background_consistency"] >= 0.999
    assert m["motion_smoothness"] == 1.0
    assert m["drift_brightness"] == 0.0 and m["drift_subject_consistency"] == pytest.approx(0.0, abs=1e-12)


def test_single_frame_scores_one():
    assert evaluate_video(static_video(1))["subject_consistency"] == 1.0


def test_scene_change_halfway_matches_hand_computation():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 100, (SIZE, SIZE, 3), dtype=np.uint8)
    b = rng.integers(100, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    video = np.stack([a] * 5 + [b] * 5)
    m = evaluate_video(video)
    assert m["drift_brightness"] == pytest.approx(abs(a.mean() - b.mean()) / 255)
    fa, fb = pixel_reference(a), pixel_reference(b)
    c = max(0.0, float(fa @ fb))
    # frames 1..4: (1 + 1)/2; frame 5: (c + c)/2; frames 6..9: (c + 1)/2
    expected = (4 * 1.0 + c + 4 * (c + 1) / 2) / 9
    assert m["subject_consistency"] == pytest.approx(expected) and m["subject_consistency"] < 1
    assert m["drift_subject_consistency"] == pytest.approx(1 - float(fa @ fb))


def test_pixel_features_flat_frames():
    black, white = np.zeros((1, SIZE, SIZE, 3), np.uint8), np.full((1, SIZE, SIZE, 3), 255, np.uint8)
    f = PixelFeatures()(np.concatenate([black, white, static_video(1)]))
    assert np.allclose(np.linalg.norm(f, axis=1), 1)
    assert f[0] @ f[1] == pytest.approx(1.0) and f[0] @ f[2] == pytest.approx(0.0, abs=1e-9)


def test_vbench_consistency_clamps_negative_cosines():
    f = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert vbench_consistency(f) == 0.0
    assert consistency_to_first(f).tolist() == [1.0, -1.0]


def test_moving_square_is_dynamic_with_right_speed():
    stats = flow_stats(moving_square())
    assert stats.dynamic_degree > 0
    assert 2.0 * 0.5 < stats.flow_top5 * DIAG < 2.0 * 2  # the moving region moves ~2 px/frame
    assert dynamic_threshold(SIZE) == 1.5


def test_panning_texture_flow_magnitude_matches():
    stats = flow_stats(moving_texture())
    assert stats.flow_magnitude == pytest.approx(2.0 / DIAG, rel=0.5)
    assert stats.dynamic_degree == 1.0 and stats.moving_pairs == 1.0


@pytest.mark.parametrize("moving, dynamic", [(3, 0.0), (4, 1.0)])
def test_dynamic_degree_is_vbenchs_verdict(moving, dynamic):
    # 16 sampled frames: VBench calls the video dynamic when round(4 * 16 / 16) = 4 pairs move
    stats = flow_stats(moving_texture(t=16, moving_pairs=moving))
    assert stats.moving_pairs == pytest.approx(moving / 15)
    assert stats.dynamic_degree == dynamic


def test_flow_is_measured_at_about_8_fps():
    from mempack.eval.motion import flow_stride

    assert [flow_stride(f) for f in (None, 4.0, 8.0, 16.0, 30.0, 60.0)] == [1, 1, 1, 2, 4, 8]
    video = moving_texture(t=17, step=1)
    assert flow_stats(video, fps=32.0) == flow_stats(video[::4])
    assert evaluate_video(video, fps=32.0)["moving_pairs"] == flow_stats(video[::4]).moving_pairs


def test_motion_smoothness_fade_and_flicker():
    fade = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(10)])
    assert motion_smoothness(fade) == pytest.approx(1.0)
    flicker = np.stack([np.full((8, 8, 3), 100 * (i % 2), np.uint8) for i in range(10)])
    assert motion_smoothness(flicker) == pytest.approx(1 - 100 / 255)
    # only the odd frames are interpolated (from their even neighbours): a glitch on an even frame
    # shows up through its two odd neighbours, each half as large
    glitch = np.stack([np.full((8, 8, 3), 200 if i == 4 else 0, np.uint8) for i in range(11)])
    assert motion_smoothness(glitch) == pytest.approx(1 - (100 + 100) / 255 / 5)


def test_drift_hand_computation_and_rounding():
    v = np.arange(10, dtype=float)  # ceil(0.15 * 10) = 2 frames each end
    assert drift(v) == pytest.approx(abs((0 + 1) / 2 - (8 + 9) / 2))
    w = np.arange(20, dtype=float)  # 0.15 * 20 = 3.0000000000000004 must still mean 3 frames
    assert drift(w) == pytest.approx(abs((0 + 1 + 2) / 3 - (17 + 18 + 19) / 3))
    assert drift([5.0]) == 0.0
    assert drift(v, fraction=1.0) == 0.0


def test_brightness_is_mean_over_255():
    v = np.stack([np.full((4, 4, 3), 51, np.uint8), np.full((4, 4, 3), 255, np.uint8)])
    assert brightness(v).tolist() == pytest.approx([0.2, 1.0])


def test_local_model_loading_and_missing_folder(tmp_path):
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    size = {"shortest_edge": 32}, {"height": 28, "width": 28}
    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=28,
            patch_size=14,
        )
    ).save_pretrained(tmp_path / "dino")
    BitImageProcessor(size=size[0], crop_size=size[1]).save_pretrained(tmp_path / "dino")
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        )
    ).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size=size[0], crop_size=size[1]).save_pretrained(tmp_path / "clip")
    dino, clip = DinoFeatures(tmp_path / "dino", device="cpu"), ClipFeatures(tmp_path / "clip", device="cpu")
    video = static_video(3)
    assert dino(video).shape == (3, 32) and clip(video).shape == (3, 16)
    m = evaluate_video(video, dino=dino, clip=clip)
    assert m["subject_consistency"] == pytest.approx(1.0) and m["background_consistency"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="DINO model folder not found"):
        DinoFeatures(tmp_path / "missing")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "pipelines/evaluate.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_table_json_and_mlflow(tmp_path):
    videos = tmp_path / "videos"
    write_mp4(static_video(6), videos / "still.mp4", fps=8)
    write_mp4(moving_square(6), videos / "moving.mp4", fps=8)
    out = tmp_path / "nested" / "eval.json"
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = run_cli(str(videos), "--json", str(out), "--mlflow-uri", uri, "--run-name", "t")
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header[:3] == ["video", "frames", "fps"] and "subject_consistency" in header
    assert "still.mp4" in proc.stdout and "mean" in proc.stdout
    payload = json.loads(out.read_text())
    assert sorted(Path(p).name for p in payload["videos"]) == ["moving.mp4", "still.mp4"]
    for key in (
        "frames",
        "fps",
        "subject_consistency",
        "background_consistency",
        "dynamic_degree",
        "flow_magnitude",
        "motion_smoothness",
        "drift_subject_consistency",
        "drift_brightness",
    ):
        assert key in payload["mean"]
    assert payload["videos"][str(videos / "still.mp4")]["frames"] == 6

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mempack-eval")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["subject_consistency"] == pytest.approx(payload["mean"]["subject_consistency"])
    assert run.data.metrics["still.dynamic_degree"] == payload["videos"][str(videos / "still.mp4")]["dynamic_degree"]
    assert run.data.params["videos"] == "2"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["eval.json"]


@pytest.mark.parametrize("kind", ["missing", "not_video", "empty_dir"])
def test_cli_bad_input_is_one_error_line(tmp_path, kind):
    target = tmp_path / "x.mp4"
    if kind == "not_video":
        target.write_text("not a video\n")
    elif kind == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    proc = run_cli(str(target))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr

"""`pipelines/infer.py`: the mp4 matches the request, runs are reproducible, bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mempack.inference import InferenceRequest, run_inference
from mempack.model import MemoryPackTransformer
from tests.entry_points import error_line, run_main
from tests.test_model import open_gate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A run folder laid out as training leaves it: model/ (tiny weights) + encoders.json."""
    run = tmp_path_factory.mktemp("stage2")
    open_gate(MemoryPackTransformer.from_preset("tiny", seed=1)).save_pretrained(run / "model")  # ψ read, as trained
    (run / "encoders.json").write_text(json.dumps({"preset": "tiny", "path": None, "seed": 0}))
    return run


def read_back(path: Path) -> tuple[np.ndarray, float]:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), reader.get_avg_fps()


def run_cli(*args: str, process: bool = False) -> subprocess.CompletedProcess:
    """`pipelines/infer.py --quiet ARGS`: its main in this process (tests/entry_points.py), or with `process` a
    real interpreter (for runs that set MLflow's global tracking URI, and where a fresh process is the point)."""
    argv = ["pipelines/infer.py", "--quiet", *args]
    if process:
        return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    status, out, err = run_main(argv)
    return subprocess.CompletedProcess(argv, status, out, err)


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith(("error:", "infer.py: error:")) and needle in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_writes_the_requested_frames_size_and_fps(export, tmp_path):
    out = tmp_path / "video.mp4"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "--checkpoint",
        str(export),
        "--seconds",
        "3",
        "--fps",
        "10",
        "--height",
        "48",
        "--width",
        "32",
        "--steps",
        "2",
        "--out",
        str(out),
        "--mlflow-uri",
        uri,
        process=True,
    )
    assert result.returncode == 0, result.stderr
    frames, fps = read_back(out)
    assert frames.shape == (30, 48, 32, 3) and fps == 10.0
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("mempack-infer").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["frames"] == 30 and runs[0].data.params["seconds"] == "3.0"
    assert [a.path for a in MlflowClient(uri).list_artifacts(runs[0].info.run_id, "video")] == ["video/video.mp4"]


def test_sections_decide_the_length(export, tmp_path):
    result = run_inference(
        InferenceRequest(model_dir=str(export), sections=2, steps=1, out=str(tmp_path / "a.mp4"), progress=False)
    )
    frames, fps = read_back(Path(result.path))
    # the start frame + 2 sections of 9 latent frames, 4 pixel frames each; tiny's 64x64 at the one clock's 30 fps
    assert frames.shape == (1 + 2 * 9 * 4, 64, 64, 3) and fps == 30.0 and result.sections == 2


def test_same_seed_same_video_frame_for_frame(export, tmp_path):
    """Two runs of the same command write the same frames; another seed another video.

    Lossless x264 (--crf 0), because lossy x264 is not bit-stable in this build: its first encode in a
    process after torch has run can differ in low bits (it reads memory it did not initialise).
    """

    def make(name: str, seed: int) -> Path:
        out = tmp_path / name
        result = run_cli(
            "--checkpoint",
            str(export),
            "--sections",
            "2",
            "--steps",
            "2",
            "--seed",
            str(seed),
            "--crf",
            "0",
            "--out",
            str(out),
            process=True,
        )
        assert result.returncode == 0, result.stderr
        return out

    a, b, c = make("a.mp4", 3), make("b.mp4", 3), make("c.mp4", 4)
    assert np.array_equal(read_back(a)[0], read_back(b)[0])
    assert not np.array_equal(read_back(a)[0], read_back(c)[0])


def test_no_memory_runs_and_differs(export, tmp_path):
    base = dict(model_dir=str(export), sections=2, steps=2, progress=False)
    with_memory = run_inference(InferenceRequest(**base, out=str(tmp_path / "m.mp4")))
    without = run_inference(InferenceRequest(**base, use_memory=False, out=str(tmp_path / "n.mp4")))
    a, b = read_back(Path(with_memory.path))[0], read_back(Path(without.path))[0]
    assert a.shape == b.shape and not np.array_equal(a[1:], b[1:])


def test_image_and_prompt_condition_the_video(export, tmp_path):
    from PIL import Image

    image = np.zeros((80, 120, 3), np.uint8)
    image[20:60, 30:90] = (250, 40, 40)
    Image.fromarray(image).save(tmp_path / "red.png")
    base = dict(model_dir=str(export), sections=1, steps=2, progress=False)
    red = run_inference(
        InferenceRequest(**base, image=str(tmp_path / "red.png"), prompt="a red box", out=str(tmp_path / "red.mp4"))
    )
    sample = run_inference(InferenceRequest(**base, out=str(tmp_path / "sample.mp4")))
    assert not np.array_equal(read_back(Path(red.path))[0], read_back(Path(sample.path))[0])


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    out = tmp_path / "x.mp4"
    assert_one_line_error(run_cli("--checkpoint", str(tmp_path / "none"), "--out", str(out)), "checkpoint not found")
    assert not out.exists()


def test_corrupt_checkpoint_is_one_clear_line(export, tmp_path):
    broken = tmp_path / "broken"
    MemoryPackTransformer.from_preset("tiny").save_pretrained(broken)
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])  # a truncated download
    out = tmp_path / "x.mp4"
    assert_one_line_error(run_cli("--checkpoint", str(broken), "--out", str(out)), "cannot load checkpoint")
    assert not out.exists() and not list(tmp_path.glob("*.mp4"))


def huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height (no pixel data): what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_bad_requests_are_one_clear_line(export, tmp_path):
    """Each bad request through the CLI's main in this process (tests/entry_points.py); one real process
    below shows the same line reaches a shell with no traceback."""
    text = tmp_path / "photo.png"
    text.write_text("not an image")
    out = tmp_path / "x.mp4"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (("--image", str(text)), "not an image"),
        (("--image", str(huge_png(tmp_path / "huge.png", 9000, 9000))), "image too large"),
        (("--image", str(huge_png(tmp_path / "bomb.png", 30000, 30000))), "image too large"),
        (("--seconds", "0"), "--seconds must be > 0 and finite"),
        (("--seconds", "nan"), "--seconds must be > 0 and finite, got nan"),
        (("--seconds", "inf"), "--seconds must be > 0 and finite, got inf"),
        (("--fps", "nan"), "--fps must be > 0 and finite, got nan"),
        (("--fps=-inf",), "--fps must be > 0 and finite"),
        (("--sections", "0"), "--sections must be >= 1"),
        (("--height", "50"), "--height must be a positive multiple of 16"),  # the pipeline's check, as a flag
        (("--steps", "0"), "--steps must be >= 1"),
        (("--out", str(blocker / "x.mp4")), "cannot create output folder"),
    ]
    for args, needle in cases:
        line = error_line(["pipelines/infer.py", "--quiet", "--checkpoint", str(export), "--out", str(out), *args])
        assert needle in line, (args, line)
    real = run_cli("--checkpoint", str(export), "--out", str(out), "--image", str(text), process=True)
    assert_one_line_error(real, "not an image")
    assert not out.exists() and not list(tmp_path.rglob("*.mp4"))


def test_library_refuses_nan_and_infinite_lengths(export, tmp_path):
    from mempack.inference import InferenceError

    for field, value in (("seconds", float("nan")), ("seconds", float("inf")), ("fps", float("nan"))):
        with pytest.raises(InferenceError, match=f"--{field} must be > 0 and finite"):
            run_inference(
                InferenceRequest(model_dir=str(export), out=str(tmp_path / "x.mp4"), progress=False, **{field: value})
            )
    assert not list(tmp_path.iterdir())


def test_exif_rotated_photo_is_upright(export, tmp_path):
    """A phone photo stored sideways with an EXIF rotation conditions the video the way it is shown."""
    from PIL import Image

    from mempack.inference import load_image

    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[:, :32] = 255
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 8  # "rotate 90° counter-clockwise to display"
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=100)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.shape == (96, 64, 3) and upright[-32:].mean() > 200 and upright[:32].mean() < 50


def test_pipeline_export_and_missing_encoders(tmp_path):
    """A complete export (model_index.json) runs; a bare model folder with no encoders named is one line."""
    from mempack.export import EncoderSpec, export_pipeline

    model = MemoryPackTransformer.from_preset("tiny", seed=2)
    model.save_pretrained(tmp_path / "bare")
    export_pipeline(tmp_path / "bare", tmp_path / "run" / "model", EncoderSpec("tiny", None, 0))
    out = tmp_path / "a.mp4"
    result = run_cli("--checkpoint", str(tmp_path / "run"), "--sections", "1", "--steps", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert read_back(out)[0].shape == (37, 64, 64, 3)
    assert_one_line_error(
        run_cli("--checkpoint", str(tmp_path / "bare"), "--out", str(tmp_path / "b.mp4")), "holds no encoders"
    )
    assert not (tmp_path / "b.mp4").exists()


def test_cli_continues_a_given_video(export, tmp_path):
    """--video: the given clip is the start of the output (as the VAE reconstructs it), then new sections."""
    given = tmp_path / "given.mp4"
    first = run_inference(
        InferenceRequest(model_dir=str(export), sections=1, steps=1, out=str(given), crf=0, progress=False)
    )
    out = tmp_path / "continued.mp4"
    result = run_cli(
        "--checkpoint", str(export), "--video", str(given), "--sections", "2", "--steps", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    frames, _ = read_back(out)
    given_frames, _ = read_back(given)
    assert len(frames) == len(given_frames) + 2 * 9 * 4 and first.frames == len(given_frames)
    assert frames.shape[1:] == given_frames.shape[1:]
    missing = run_cli("--checkpoint", str(export), "--video", str(tmp_path / "nope.mp4"))
    assert_one_line_error(missing, "video not found")


def test_a_failed_inference_ends_its_mlflow_run_failed(export, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "--checkpoint", str(export), "--image", str(tmp_path / "missing.png"), "--mlflow-uri", uri, process=True
    )
    assert_one_line_error(result, "image not found")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mempack-infer").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "image not found" in runs[0].data.tags["mempack.error"]


def test_offload_modes_give_the_plain_frames(export, tmp_path):
    """Through `run_inference`, lossless mp4s (--crf 0): group offload writes the plain run's frames bit for
    bit, and float8 weight storage moves them by its rounding only (at most 13/255, the 0.05 of the range
    tests/test_offload.py states). `gpu_gb` between the group and the model offload's planned peaks
    (+ margin) picks group; a size nothing fits in is one line. Model offload: the next test. Sequential
    offload runs only on a GPU (accelerate's leaf hooks fail on a CPU device: tests/test_offload.py)."""
    import torch

    from mempack.inference import InferenceError
    from mempack.inference_plan import INFERENCE_MARGIN_BYTES, plan_inference

    base = dict(model_dir=str(export), sections=2, steps=2, crf=0, progress=False)

    def run(name: str, **settings) -> tuple[str, np.ndarray]:
        result = run_inference(InferenceRequest(**base, out=str(tmp_path / f"{name}.mp4"), **settings))
        return result.offload, read_back(Path(result.path))[0]

    plan = plan_inference("tiny", (64, 64), dtype=torch.float32)  # the export is tiny; a CPU computes in fp32
    between = (INFERENCE_MARGIN_BYTES + (plan.peak("model")[0] + plan.peak("group")[0]) / 2) / 1e9
    mode, plain = run("none")
    assert mode == "none"
    mode, frames = run("group", gpu_gb=between)
    assert mode == "group"
    np.testing.assert_array_equal(frames, plain)
    mode, frames = run("fp8", weights_dtype="fp8")
    diff = np.abs(frames.astype(int) - plain.astype(int))
    print(f"fp8 weights vs plain, uint8 frames: max |d| {diff.max()}, mean {diff.mean():.3f}")
    assert mode == "none" and 0 < diff.max() <= 13
    with pytest.raises(InferenceError, match="does not fit 1 GB in any offload mode"):
        run("small", gpu_gb=1)
    assert not (tmp_path / "small.mp4").exists()


def test_model_offload_gives_the_plain_frames_from_an_export(export, tmp_path):
    """Model offload from an export on disk gives the plain run's latents and frames bit for bit, once the
    weights sit in aligned memory. As loaded, safetensors maps them from the file at unaligned addresses
    (56 mod 64 here), and the CPU's GEMM then rounds by the alignment of its operands, which the offload
    hooks' allocations change: 4.8e-7 in a latent, 1/255 in a frame, up to 3/255 after the mp4's YUV
    conversion (measured; the bound checked through `run_inference` below). On a GPU the weights are copied
    to the device, aligned."""
    import torch

    from mempack.export import load_pipeline
    from mempack.offload import apply_memory_settings

    def sections(mode: str) -> list:
        pipe = load_pipeline(str(export), device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in [*module.parameters(), *module.buffers()]:
                    tensor.data = tensor.data.clone()  # out of the file's mapping, into aligned memory
        apply_memory_settings(pipe, "cpu", mode)
        generator = torch.Generator().manual_seed(0)
        image = np.full((64, 64, 3), 128, np.uint8)
        return list(pipe.sections(image=image, num_frames=37, num_inference_steps=1, generator=generator))

    for plain, offloaded in zip(sections("none"), sections("model"), strict=True):
        assert torch.equal(plain.latents, offloaded.latents)
        np.testing.assert_array_equal(plain.frames, offloaded.frames)
    base = dict(model_dir=str(export), sections=1, steps=1, crf=0, progress=False)
    a = run_inference(InferenceRequest(**base, out=str(tmp_path / "a.mp4")))
    b = run_inference(InferenceRequest(**base, offload="model", out=str(tmp_path / "b.mp4")))
    assert b.offload == "model"
    diff = np.abs(read_back(Path(a.path))[0].astype(int) - read_back(Path(b.path))[0].astype(int))
    assert diff.max() <= 3, diff.max()


def test_a_60_fps_video_continues_on_the_30_fps_clock(export, tmp_path):
    """--video at 60 fps is read on the model's 30 fps clock (every other frame, as prep reads it):
    continuing it gives the video that continuing the same motion recorded at 30 fps gives, frame for
    frame. Read at its own rate it would hold 73 given frames, not 37, and play at half speed."""
    from mempack.video_io import write_mp4

    motion = read_back(
        Path(
            run_inference(
                InferenceRequest(
                    model_dir=str(export), sections=1, steps=1, crf=0, out=str(tmp_path / "m.mp4"), progress=False
                )
            ).path
        )
    )[0]
    slow = write_mp4(motion, tmp_path / "slow.mp4", fps=30, crf=0)
    fast = write_mp4(np.repeat(motion, 2, axis=0), tmp_path / "fast.mp4", fps=60, crf=0)
    assert np.array_equal(read_back(fast)[0][::2], read_back(slow)[0]) and read_back(fast)[1] == 60.0

    def continue_(video: Path, name: str) -> np.ndarray:
        request = InferenceRequest(
            model_dir=str(export),
            video=str(video),
            sections=1,
            steps=1,
            crf=0,
            out=str(tmp_path / name),
            progress=False,
        )
        return read_back(Path(run_inference(request).path))[0]

    at_60, at_30 = continue_(fast, "c60.mp4"), continue_(slow, "c30.mp4")
    assert len(motion) == 37 and len(at_60) == 37 + 36
    np.testing.assert_array_equal(at_60, at_30)

"""`MemoryPackPipeline`, its export and its MLflow Model: the numbers are `generate`'s, the folder is portable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_SEED
from PIL import Image

from mempack.export import EncoderSpec, ExportError, export_pipeline
from mempack.model import MemoryPackTransformer
from mempack.pipeline import MemoryPackPipeline, conditioning, image_to_array
from mempack.sample import sample_image
from mempack.sampling import GenerationConfig, generate, section_times
from mempack.stream_decode import SectionDecoder

ROOT = Path(__file__).resolve().parents[1]
SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def model() -> MemoryPackTransformer:
    return MemoryPackTransformer.from_preset("tiny", seed=TINY_MODEL_SEED).eval()


@pytest.fixture(scope="module")
def pipe(model, encoders) -> MemoryPackPipeline:
    pipe = MemoryPackPipeline.from_model(model, encoders)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def export(tiny_export) -> Path:
    """What training exports: `model`'s weights assembled with its (tiny, seed 0) encoders."""
    return tiny_export / "model"


def image() -> Image.Image:
    return Image.fromarray(sample_image(48, 40))


def test_streaming_decode_equals_one_whole_decode(encoders):
    """Section-by-section decoding gives the whole decode's frames bit for bit, in any chunking."""
    latents = torch.randn(1, 16, 1 + 9, 2, 4, generator=torch.Generator().manual_seed(0))
    whole = encoders.decode_latents(latents)[0]
    for chunks in ([1, 9], [5, 3, 2]):
        decoder, out, start = SectionDecoder(encoders), [], 0
        for n in chunks:
            out.append(decoder.push(latents[:, :, start : start + n]))
            start += n
        out.append(decoder.finish())
        assert [len(o) for o in out][-1] < len(whole)  # frames really came out before the end
        assert np.array_equal(np.concatenate(out), whole)


def test_pipeline_is_generate_plus_decode(pipe, model, encoders):
    """The pipeline adds nothing to the numbers: `generate` + one whole decode, frame for frame."""
    out = pipe(
        image=image(),
        prompt="a kite",
        num_frames=40,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
        **SIZE,
    ).frames
    first = image_to_array(image())
    from mempack.encoders import resize_center_crop

    cond = conditioning(encoders, resize_center_crop(first[None], 32, 32)[0], "a kite")
    ref = generate(
        model, cond, GenerationConfig(sections=2, steps=2), progress=False, generator=torch.Generator().manual_seed(3)
    )
    frames = encoders.decode_latents(ref.latents)[0][:40]
    assert out.shape == (1, 40, 32, 32, 3)
    assert np.array_equal(np.round(out[0] * 255).astype(np.uint8), frames)
    pil = pipe(image=image(), prompt="a kite", num_frames=5, num_inference_steps=1, **SIZE).frames[0]
    assert len(pil) == 5 and pil[0].size == (32, 32)


def test_default_size_is_the_bucket_nearest_the_image(pipe):
    wide = np.zeros((300, 620, 3), np.uint8)  # about 2:1
    assert pipe.default_size(wide) == (48, 96) and pipe.default_size(None) == (64, 64)
    frames = pipe(image=wide, num_frames=1, num_inference_steps=1, output_type="np").frames
    assert frames.shape == (1, 1, 48, 96, 3)


def test_latents_callbacks_and_interrupt(pipe):
    kw = dict(image=image(), prompt="a kite", num_frames=40, num_inference_steps=3, **SIZE)
    plain = pipe(generator=torch.Generator().manual_seed(5), output_type="latent", **kw).frames
    assert plain.shape == (1, 16, 1 + 2 * 9, 4, 4)
    seen = []

    def record(p, step, timestep, tensors):
        seen.append((step, float(timestep), tensors["latents"].clone()))
        return {}

    same = pipe(
        generator=torch.Generator().manual_seed(5), output_type="latent", callback_on_step_end=record, **kw
    ).frames
    assert torch.equal(same, plain)
    assert [s for s, _, _ in seen] == list(range(6))  # 2 sections × 3 steps, counted across sections
    assert seen[0][1] == 1000.0 and seen[3][1] == 1000.0  # each section starts from pure noise (σ = 1)
    assert torch.equal(seen[2][2], plain[:, :, 1:10]) and torch.equal(seen[5][2], plain[:, :, 10:])

    def zero_after_first(p, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 0 else {}

    changed = pipe(
        generator=torch.Generator().manual_seed(5), output_type="latent", callback_on_step_end=zero_after_first, **kw
    ).frames
    assert not torch.allclose(changed[:, :, 1:10], plain[:, :, 1:10])

    def stop(p, step, timestep, tensors):
        p._interrupt = True
        return {}

    calls = []
    handle = pipe.memorypack.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        pipe(generator=torch.Generator().manual_seed(5), output_type="latent", callback_on_step_end=stop, **kw)
    finally:
        handle.remove()
    assert len(calls) == 1  # diffusers' interrupt: every later step skipped


def test_scheduler_time_grid_is_generates(pipe, model):
    """The registered scheduler describes the sampler: its shifted sigmas are 1 − generate's times."""
    times = section_times(model, (1, 16, 9, 4, 4), 6)
    scheduler, tokens = pipe.scheduler, 9 * 4 * 4 // 4
    from mempack import flow

    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, 7)[:-1], mu=flow.dynamic_shift_mu(tokens))
    torch.testing.assert_close(scheduler.sigmas.double(), 1 - times.double(), atol=1e-6, rtol=0)


def test_continue_a_video(pipe, model, encoders):
    """A given video's latents become the history and feed ψ; the output starts with it, re-decoded."""
    from mempack.encoders import resize_center_crop

    video = np.stack([np.roll(sample_image(32, 32), 2 * k, axis=1) for k in range(39)])  # 39 → first 37 used
    kw = dict(prompt="a kite", num_frames=36, num_inference_steps=2, output_type="latent", **SIZE)
    out = pipe(video=video, generator=torch.Generator().manual_seed(4), **kw).frames
    latents = encoders.encode_video(resize_center_crop(video[:37], 32, 32))  # one causal stream
    cond = conditioning(encoders, video[0], "a kite")  # the start latent: the first frame alone, as in training
    assert out.shape == (1, 16, 1 + 9 + 9, 4, 4) and torch.equal(out[:, :, 1:10], latents[:, :, 1:])
    assert torch.equal(out[:, :, :1], cond.start_latent)
    ref = generate(
        model,
        cond,
        GenerationConfig(sections=1, steps=2),
        progress=False,
        prefix=latents[:, :, 1:],
        generator=torch.Generator().manual_seed(4),
    ).latents
    assert torch.equal(out, ref)
    fresh = pipe(image=video[0], generator=torch.Generator().manual_seed(4), **kw).frames
    assert not torch.allclose(out[:, :, 10:], fresh[:, :, 1:10])  # the history changed what comes next
    frames = pipe(
        video=video,
        generator=torch.Generator().manual_seed(4),
        prompt="a kite",
        num_frames=36,
        num_inference_steps=2,
        output_type="np",
        **SIZE,
    ).frames[0]
    assert frames.shape == (37 + 36, 32, 32, 3)


def test_cpu_offload_hooks_give_the_same_video(model, encoders):
    """`enable_model_cpu_offload` (accelerate hooks; device "cpu" here, no GPU): same latents."""
    pipe = MemoryPackPipeline.from_model(model, encoders)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(image=image(), prompt="a kite", num_frames=5, num_inference_steps=2, output_type="latent", **SIZE)
    before = pipe(generator=torch.Generator().manual_seed(1), **kw).frames
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.transformer, "_hf_hook") and hasattr(pipe.vae, "_hf_hook")
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(1), **kw).frames, before)
    pipe.remove_all_hooks()
    # the hooks re-create each weight when they move it; moved under `inference_mode` the weights would
    # stay inference tensors and the next gradient through them would fail (a shared fixture did)
    inference = [n for n, p in pipe.components.items() if isinstance(p, torch.nn.Module) and _any_inference(p)]
    assert inference == []


def _any_inference(module: torch.nn.Module) -> bool:
    return any(t.is_inference() for t in [*module.parameters(), *module.buffers()])


def test_export_is_a_portable_pipeline_folder(export, pipe, tmp_path):
    index = json.loads((export / "model_index.json").read_text())
    pipe.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index == saved  # what diffusers itself writes for these components
    for path in export.rglob("*.json"):
        assert str(export) not in path.read_text() and "/tmp" not in path.read_text(), path
    moved = tmp_path / "elsewhere"
    export.rename(moved)  # "another machine": nothing may point back at where it was written
    try:
        loaded = MemoryPackPipeline.from_pretrained(moved, dtype=torch.float32)
        loaded.set_progress_bar_config(disable=True)
        kw = dict(image=image(), prompt="a kite", num_frames=5, num_inference_steps=2, output_type="latent", **SIZE)
        a = loaded(generator=torch.Generator().manual_seed(2), **kw).frames
        b = pipe(generator=torch.Generator().manual_seed(2), **kw).frames
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # loaded weights: same numbers up to kernel rounding
        assert MemoryPackTransformer.from_pretrained(moved).config == pipe.model_config  # stage 2 reads it too
    finally:
        moved.rename(export)


def test_export_is_atomic_and_never_falls_back_to_random_encoders(export, tmp_path):
    before = (export / "model_index.json").read_bytes()
    with pytest.raises(ExportError, match="encoder weights folder not found"):
        export_pipeline(export, export, EncoderSpec("tiny", str(tmp_path / "gone"), 0))
    with pytest.raises(ExportError, match="needs real encoder weights"):
        export_pipeline(export, tmp_path / "f1", EncoderSpec("framepack-f1", None, 0))
    assert (export / "model_index.json").read_bytes() == before and (export / "vae").is_dir()
    assert not list(tmp_path.iterdir()) and not list(export.parent.glob(".*staging*"))


def test_real_encoder_folder_is_bundled(export, encoders, tmp_path):
    """An encoder weights folder (as prep was given) is linked into the export, loadable from there."""
    weights = encoders.save_pretrained(tmp_path / "weights")
    dst = export_pipeline(export, tmp_path / "model", EncoderSpec("tiny", str(weights), 0))
    note = json.loads((dst / "encoders.json").read_text())
    assert note["source"] == "weights" and note["bundled"]
    loaded = MemoryPackPipeline.from_pretrained(dst)
    assert torch.equal(
        loaded.vae.state_dict()["decoder.conv_in.conv.weight"], encoders.vae.state_dict()["decoder.conv_in.conv.weight"]
    )


def test_exif_orientation_and_oversized_images(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :10] = 255  # white left third
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=100)
    shown = image_to_array(Image.open(tmp_path / "phone.jpg"))
    assert shown.shape == (30, 20, 3) and shown[:10].mean() > 200 and shown[-10:].mean() < 50  # white on top
    with pytest.raises(ValueError, match="image too large"):
        image_to_array(np.broadcast_to(np.zeros(3, np.uint8), (7000, 7000, 3)))  # 49 Mpx, never allocated


def test_readme_snippet_runs(export, tmp_path):
    """The README's five-line Python example, run as written against a training export."""
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"<!-- pipeline-snippet -->\s*```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in snippet.splitlines() if line.strip()]) == 5  # five lines of code
    (tmp_path / "outputs" / "train" / "stage2").mkdir(parents=True)
    (tmp_path / "outputs" / "train" / "stage2" / "model").symlink_to(export)
    Image.fromarray(sample_image(64, 64)).save(tmp_path / "first_frame.png")
    sections = re.search(r"<!-- sections-snippet[^>]*-->\s*```python\n(.*?)```", text, re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", snippet + sections],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import decord

    reader = decord.VideoReader(str(tmp_path / "kite.mp4"))
    assert len(reader) == 37 and reader.get_avg_fps() == 30.0
    assert len(decord.VideoReader(str(tmp_path / "kite_timeline.mp4"))) == 73  # two prompts, three sections


def test_mlflow_pyfunc_model_loads_and_predicts(export, tmp_path):
    """log_pipeline_model → runs:/ID/model → pyfunc predict → mp4 bytes of the asked length."""
    import io

    import decord
    import mlflow
    import pandas as pd

    from mempack.mlflow_model import log_pipeline_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("pyfunc")
    with mlflow.start_run() as run:
        info = log_pipeline_model(export, registered_model_name="mempack-test")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert [c.name for c in model.metadata.signature.inputs.inputs] == ["image", "prompt", "seconds"]
    png = io.BytesIO()
    image().save(png, format="PNG")
    prompt = "0s: a kite | 1.2s: it dives"  # the column may hold a timeline (the switch is the second section's)
    out = model.predict(
        pd.DataFrame({"image": [png.getvalue()], "prompt": [prompt], "seconds": [1.5]}),
        params={"steps": 1, "height": 32, "width": 32},
    )
    (tmp_path / "v.mp4").write_bytes(out["video"][0])
    reader = decord.VideoReader(str(tmp_path / "v.mp4"))
    from mempack.pipeline import DEFAULT_FPS

    assert len(reader) == round(1.5 * DEFAULT_FPS["tiny"]) and reader[0].shape == (
        32,
        32,
        3,
    )  # 1.5 s at the preset's fps
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("mempack-test", "candidate").version == info.registered_model_version
    # the CLI reads the same model
    result = subprocess.run(
        [
            sys.executable,
            "pipelines/infer.py",
            "--quiet",
            "--mlflow-model",
            f"runs:/{run.info.run_id}/model",
            "--mlflow-uri",
            mlflow.get_tracking_uri(),
            "--sections",
            "1",
            "--steps",
            "1",
            "--height",
            "32",
            "--width",
            "32",
            "--out",
            str(tmp_path / "cli.mp4"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(decord.VideoReader(str(tmp_path / "cli.mp4"))) == 37


def test_mlflow_model_by_reference_uploads_kilobytes_follows_the_folder_and_refuses_changed_weights(
    export, tmp_path, uploaded_bytes
):
    """--mlflow-weights reference: the run's MLflow Model holds a reference to the export, not its weights
    (< 1 MB uploaded, no weight file), and still loads, through pyfunc and through infer's --mlflow-model."""
    import shutil

    import mlflow

    from mempack.export import CheckpointError, download_mlflow_model, load_pipeline
    from mempack.mlflow_model import log_pipeline_model

    kept = tmp_path / "storage" / "model"  # the run's storage: where the weights stay
    shutil.copytree(export, kept)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("reference", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_pipeline_model(kept, reference=True)
    sizes = uploaded_bytes(client, run.info.run_id)
    export_weights = sum(f.stat().st_size for f in Path(export).rglob("*.safetensors"))
    assert sizes["weights"] == 0 and 0 < sizes["all"] < 1_000_000 < export_weights, (sizes, export_weights)

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.unwrap_python_model().pipe.model_config.preset == "tiny"
    from pipelines import infer

    infer.main(
        [
            "--quiet",
            "--mlflow-model",
            f"runs:/{run.info.run_id}/model",
            "--mlflow-uri",
            uri,
            "--sections",
            "1",
            "--steps",
            "1",
            "--height",
            "32",
            "--width",
            "32",
            "--out",
            str(tmp_path / "r.mp4"),
        ]
    )
    assert (tmp_path / "r.mp4").stat().st_size > 0
    with open(next(kept.rglob("*.safetensors")), "ab") as f:  # a later run rewrote the weights in place
        f.write(b"0")
    with pytest.raises(CheckpointError, match="changed since this model was logged"):
        load_pipeline(download_mlflow_model(f"runs:/{run.info.run_id}/model", uri, tmp_path / "again"))

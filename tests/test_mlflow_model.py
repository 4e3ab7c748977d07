"""The pyfunc model's placement: `model_config` at load time (offload, weights_dtype, gpu_gb), as infer.py's flags."""

from __future__ import annotations

import io

import numpy as np
import pytest


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny pipeline folder saved as an MLflow pyfunc model (no tracking server: `save_model`)."""
    import mlflow

    from mempack.export import EncoderSpec, export_pipeline
    from mempack.mlflow_model import ARTIFACT_KEY, MODEL_CONFIG, MemoryPackPyfunc, signature
    from mempack.model import MemoryPackTransformer

    root = tmp_path_factory.mktemp("pyfunc")
    MemoryPackTransformer.from_preset("tiny", seed=2).save_pretrained(root / "bare")
    folder = export_pipeline(root / "bare", root / "pipeline", EncoderSpec("tiny", None, 0))
    mlflow.pyfunc.save_model(
        str(root / "model"),
        python_model=MemoryPackPyfunc(),
        artifacts={ARTIFACT_KEY: str(folder)},
        signature=signature(),
        model_config=MODEL_CONFIG,
    )
    return root / "model"


def _frames(model, path) -> np.ndarray:
    import decord
    import pandas as pd
    from PIL import Image

    from mempack.sample import sample_image

    png = io.BytesIO()
    Image.fromarray(sample_image(32, 32)).save(png, format="PNG")
    rows = pd.DataFrame({"image": [png.getvalue()], "prompt": ["a kite"], "seconds": [1.2]})
    video = model.predict(rows, params={"steps": 1, "crf": 0, "height": 32, "width": 32})["video"][0]
    path.write_bytes(video)
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_model_config_places_the_pipeline_and_keeps_the_frames(saved_model, tmp_path):
    """Group offload set at load time installs diffusers' hooks and writes the plain model's frames."""
    import mlflow
    from diffusers.hooks import HookRegistry

    plain = mlflow.pyfunc.load_model(str(saved_model))
    grouped = mlflow.pyfunc.load_model(str(saved_model), model_config={"offload": "group"})
    pipe = grouped.unwrap_python_model().pipe
    assert (
        "group_offloading"
        in HookRegistry.check_if_exists_or_initialize(pipe.transformer.transformer_blocks[0])._hook_order
    )
    np.testing.assert_array_equal(_frames(grouped, tmp_path / "g.mp4"), _frames(plain, tmp_path / "p.mp4"))

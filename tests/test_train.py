"""Training on Ray Train + DeepSpeed (2 CPU workers, gloo): both stages, MLflow, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from mempack.train.config import (
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    OptimConfig,
    PlacementConfig,
    ScheduleConfig,
    TrackingConfig,
    TrainConfig,
    ValidationConfig,
)
from mempack.train.data import video_index
from mempack.train.trainer import run_training
from tests.entry_points import run_main

ROOT = Path(__file__).resolve().parents[1]
HEAD = {"norm_out.linear.weight", "norm_out.linear.bias", "proj_out.weight", "proj_out.bias"}


def weights(export: str | Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(next((Path(export) / part).glob("*.safetensors")))


def metric(uri: str, run_id: str, key: str) -> list[float]:
    history = MlflowClient(uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def stage1(sample_prep, tmp_path_factory, mlflow_uri):
    out = tmp_path_factory.mktemp("stage1")
    config = TrainConfig(
        stage=1,
        output=str(out),
        data=DataConfig(path=str(sample_prep[0])),
        optim=OptimConfig(lr=3e-3),
        schedule=ScheduleConfig(max_steps=80),
        checkpoint=CheckpointConfig(every_steps=40),
        tracking=TrackingConfig(mlflow_uri=mlflow_uri, register_model="mempack-stage1"),
    )
    return run_training(config)


@pytest.fixture(scope="module")
def stage2(stage1, sample_prep, tmp_path_factory, mlflow_uri):
    out = tmp_path_factory.mktemp("stage2")
    config = TrainConfig(
        stage=2,
        output=str(out),
        init=str(Path(stage1["export"]).parent),
        data=DataConfig(path=str(sample_prep[0]), batch_size=2),
        optim=OptimConfig(lr=1e-3, ema_decay=0.9),
        schedule=ScheduleConfig(max_steps=6),
        checkpoint=CheckpointConfig(every_steps=5),
        tracking=TrackingConfig(mlflow_uri=mlflow_uri),
        validation=ValidationConfig(every=6, steps=2),  # one validation video, at the last step
    )  # the scale options, on the real Ray + DeepSpeed path
    return run_training(config)


@pytest.mark.slow
def test_stage1_loss_falls_in_the_mlflow_run(stage1):
    losses = metric(stage1["tracking_uri"], stage1["mlflow_run_id"], "loss")
    assert len(losses) == 80
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)


@pytest.mark.slow
def test_stage1_run_holds_params_metrics_and_model(stage1):
    client = MlflowClient(stage1["tracking_uri"])
    run = client.get_run(stage1["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["stage"] == "1" and float(run.data.params["lr"]) == 3e-3
    assert {"loss", "lr", "grad_norm", "clips_per_s", "latent_tokens_per_s"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "data"} <= artifacts
    ds = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert "config/deepspeed.json" in ds
    # the export is the run's MLflow Model (runs:/ID/model), logged once
    [model] = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert model.name == "model"
    files = {
        str(f.relative_to(urlparse(model.artifact_location).path))
        for f in Path(urlparse(model.artifact_location).path).rglob("*")
    }
    assert {
        "artifacts/model/mempack.json",
        "artifacts/model/transformer",
        "artifacts/model/semantic_pack",
        "artifacts/model/encoders.json",
        "MLmodel",
    } <= files


@pytest.mark.slow
def test_mlflow_holds_one_copy_of_the_export(stage1, uploaded_bytes):
    """Issue 20: the export is uploaded once (the MLflow Model's artifacts are the export), not again as run
    files: the weight bytes in the artifact store equal the export's, and the rest is code and configs."""
    export = Path(stage1["export"])
    weights = sum(f.stat().st_size for f in export.rglob("*") if f.suffix in (".safetensors", ".bin"))
    everything = sum(f.stat().st_size for f in export.rglob("*") if f.is_file())
    sizes = uploaded_bytes(MlflowClient(stage1["tracking_uri"]), stage1["mlflow_run_id"])
    assert weights > 1_000_000 and sizes["weights"] == weights, (sizes, weights)
    assert everything <= sizes["all"] < everything + 1_000_000, (sizes, everything)  # + code, MLmodel, configs


@pytest.mark.slow
def test_register_model_registers_the_run_s_mlflow_model_under_an_alias(stage1):
    client = MlflowClient(stage1["tracking_uri"], registry_uri=stage1["tracking_uri"])
    version = client.get_model_version_by_alias("mempack-stage1", "candidate")
    assert version.run_id == stage1["mlflow_run_id"] and str(version.version) == "1"


@pytest.mark.slow
def test_training_export_is_a_pipeline_that_generates(stage1, sample_prep):
    """The export is a complete diffusers pipeline folder: loads by itself and samples a video."""
    from mempack import MemoryPackPipeline
    from mempack.sample import sample_image

    pipe = MemoryPackPipeline.from_pretrained(stage1["export"])
    pipe.set_progress_bar_config(disable=True)
    # the export records the longest video the run trained on: generation past it moves positions
    longest = max(b.num_clips for b in video_index(sample_prep[0]))
    assert longest > 1 and pipe.model_config.trained_sections == longest
    frames = pipe(
        image=sample_image(32, 32),
        prompt="a kite",
        num_frames=5,
        num_inference_steps=1,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert frames.shape == (5, 32, 32, 3) and pipe.model_config.preset == "tiny"


@pytest.mark.slow
def test_stage2_run_records_its_data_source_and_a_validation_video(stage2, sample_prep):
    """Issue 13 §2/§3 on a real run: the prep output as a dataset input, the source commit, samples/ in MLflow."""
    from mempack import tracking

    client = MlflowClient(stage2["tracking_uri"])
    run = client.get_run(stage2["mlflow_run_id"])
    summary = json.loads((Path(sample_prep[0]) / "summary.json").read_text())
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [tracking.prep_digest(summary)]
    assert run.data.tags["mlflow.source.name"] == "pipelines/train.py"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/step_000006.mp4"]
    assert (Path(stage2["export"]).parent / "samples" / "step_000006.mp4").is_file()
    assert str(Path(tracking.artifact_location(stage2["tracking_uri"])).name) == "mlartifacts"
    assert run.info.artifact_uri.startswith(tracking.artifact_location(stage2["tracking_uri"]))


@pytest.mark.slow
def test_stage2_changes_only_the_head(stage1, stage2):
    before, after = weights(stage1["export"], "transformer"), weights(stage2["export"], "transformer")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == HEAD
    sp_before, sp_after = weights(stage1["export"], "semantic_pack"), weights(stage2["export"], "semantic_pack")
    assert all(torch.equal(sp_before[k], sp_after[k]) for k in sp_before)


@pytest.mark.slow
def test_stage2_steps_once_per_video_in_curriculum_order(stage2):
    uri, run_id = stage2["tracking_uri"], stage2["mlflow_run_id"]
    # the sample's buckets hold 1, 2 and 1 videos of 1, 2 and 3 clips; with 2 workers and batch 2 each bucket
    # is padded to 4 videos, one batch per worker, so 6 steps are two passes of each bucket: one progression,
    # every pass of the shortest bucket before the next (data.curriculum, "progression")
    assert metric(uri, run_id, "clips_per_video") == [1, 1, 2, 2, 3, 3]
    assert metric(uri, run_id, "curriculum_bucket") == [0, 0, 1, 1, 2, 2]
    assert metric(uri, run_id, "optimizer_steps") == [1, 2, 3, 4, 5, 6]  # DeepSpeed stepped once per video


@pytest.mark.slow
def test_stage2_batch_size_trains_two_videos_per_step(stage1, stage2, sample_prep):
    """--batch-size 2: every step's forward takes two videos of one bucket (twice one video's latent tokens)."""
    from mempack.train.data import video_index

    # the sample's 2-clip bucket holds two different videos of one size, so a batch of two real videos forms
    # (the other buckets hold one video, which the per-bucket padding repeats to fill the batch)
    assert max(len(ids) for ids in video_index(sample_prep[0]).values()) == 2
    uri = stage2["tracking_uri"]
    assert metric(uri, stage2["mlflow_run_id"], "videos_per_step") == [2] * 6
    # stage 1 (batch 1, teacher forcing) trains one clip of one video per step: its tokens per clip, per bucket
    one_clip = set(
        zip(
            metric(uri, stage1["mlflow_run_id"], "clips_per_video"),
            metric(uri, stage1["mlflow_run_id"], "latent_tokens_per_step"),
            strict=False,
        )
    )
    per_clip = dict(one_clip)
    assert len(per_clip) == len(one_clip) == 3 and all(v > 0 for v in per_clip.values())
    clips = metric(uri, stage2["mlflow_run_id"], "clips_per_video")
    tokens = metric(uri, stage2["mlflow_run_id"], "latent_tokens_per_step")
    assert tokens == [2 * n * per_clip[n] for n in clips]  # stage 2 trains every clip of both videos


@pytest.mark.slow
def test_stage2_ema_decay_exports_the_average_beside_the_model(stage1, stage2):
    """--ema-decay 0.9: model_ema/ is a pipeline like model/, its head is the EMA of the trained head."""
    from mempack import MemoryPackPipeline
    from mempack.model import MemoryPackTransformer

    run_dir = Path(stage2["export"]).parent
    assert stage2["export_ema"] == str(run_dir / "model_ema")
    start, raw = weights(stage1["export"], "transformer"), weights(stage2["export"], "transformer")
    ema = weights(stage2["export_ema"], "transformer")
    assert set(ema) == set(raw)
    for k in HEAD:
        assert torch.isfinite(ema[k]).all() and not torch.equal(ema[k], raw[k]) and not torch.equal(ema[k], start[k])
    assert all(torch.equal(ema[k], raw[k]) for k in raw if k not in HEAD)  # frozen: as trained (stage 1's)
    sp_raw, sp_ema = weights(stage2["export"], "semantic_pack"), weights(stage2["export_ema"], "semantic_pack")
    assert all(torch.equal(sp_raw[k], sp_ema[k]) for k in sp_raw)

    # the EMA state of the step-5 checkpoint and of the final one: the last step's update was
    # ema_6 = ema_5 + 0.1 (θ_6 - ema_5), with θ_6 the exported weights, and model_ema/ holds ema_6
    model = MemoryPackTransformer.from_pretrained(stage2["export"])
    model.set_trainable("head")
    names = [n.removeprefix("backbone.") for n, p in model.named_parameters() if p.requires_grad]
    assert set(names) == HEAD
    states = sorted(run_dir.glob("ray/stage2/*/ema_rank0.pt"))
    final = [f for f in states if (f.parent / "model_ema").is_dir()]
    assert len(states) == 2 and len(final) == 1, states
    step5 = torch.load(next(f for f in states if f not in final), weights_only=True)
    step6 = torch.load(final[0], weights_only=True)
    rank1 = torch.load(final[0].with_name("ema_rank1.pt"), weights_only=True)
    assert all(
        torch.equal(a, b) for a, b in zip(step6, rank1, strict=True)
    )  # ZeRO-2: every rank averaged the same weights
    for name, e5, e6 in zip(names, step5, step6, strict=True):
        assert not torch.equal(e5, start[name])  # five updates already moved it
        torch.testing.assert_close(e6, e5.lerp(raw[name].float(), 0.1), atol=1e-7, rtol=0)
        assert torch.equal(e6, ema[name])

    # loads with the loader model/ loads with, into the same configuration
    pipe, pipe_ema = (
        MemoryPackPipeline.from_pretrained(stage2["export"]),
        MemoryPackPipeline.from_pretrained(stage2["export_ema"]),
    )
    assert pipe_ema.model_config == pipe.model_config
    state = pipe_ema.transformer.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in HEAD)
    client = MlflowClient(stage2["tracking_uri"])
    run = client.get_run(stage2["mlflow_run_id"])
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert sorted(m.name for m in models) == ["model", "model_ema"]  # both MLflow Models, each logged once


@pytest.mark.slow
def test_checkpoints_go_straight_into_the_run_storage_and_stage2_s_hold_the_head_not_the_model(stage1, stage2):
    """Issue 20: every rank writes its shard into the checkpoint folder in the run's storage, which Ray registers
    as it is (no node-local staging: 0 bytes, per MLflow's checkpoint_staged_bytes); a stage-2 checkpoint keeps
    the head, its optimizer state and the EMA, not the frozen model (`checkpoint_size`'s bytes, + metadata)."""
    from mempack.model import MemoryPackTransformer
    from mempack.train.checkpoint import checkpoint_size, folder_bytes

    storage = Path(stage1["export"]).parent / "ray" / "stage1"
    assert sorted(p.name for p in storage.glob("checkpoint_step*")) == [
        "checkpoint_step0000040_attempt0",
        "checkpoint_step0000080_attempt0",
    ]
    assert (storage / "checkpoint_step0000040_attempt0" / "state" / "mp_rank_00_model_states.pt").is_file()
    for run in (stage1, stage2):
        assert metric(run["tracking_uri"], run["mlflow_run_id"], "checkpoint_staged_bytes") == [0, 0]

    model = MemoryPackTransformer.from_pretrained(stage1["export"])
    total = sum(p.numel() for p in model.parameters())
    head = model.set_trainable("head")
    step5 = Path(stage2["export"]).parent / "ray" / "stage2" / "checkpoint_step0000005_attempt0"
    written = folder_bytes(step5)  # DeepSpeed's files and both ranks' EMA (ZeRO-2: each rank averages the head)
    expected = checkpoint_size(total, head, 4, 2, ema=True, world=2).checkpoint  # fp32 on CPU
    assert head == 4224 and total * 4 > 1_000_000, (head, total)
    assert expected <= written < expected + 150_000, (written, expected)  # + pickled metadata
    assert written < 0.2 * total * 4  # the frozen model (fp32) is ≥ 5× what the checkpoint holds


@pytest.mark.slow
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(stage1, sample_prep, tmp_path, mlflow_uri):
    """Under ZeRO-3 (the stage-1 full fine-tune's setting): sharded checkpoints save, restore and export; the
    checkpoint holds no frozen weight (resume takes them from the init weights) and may come from a scratch disk."""
    from mempack.train.checkpoint import folder_bytes

    def config(out, steps, scratch=None):
        return TrainConfig(
            stage=2,
            output=str(out),
            init=str(Path(stage1["export"]).parent),
            data=DataConfig(path=str(sample_prep[0])),
            optim=OptimConfig(lr=1e-3),
            schedule=ScheduleConfig(max_steps=steps),
            distributed=DistributedConfig(num_workers=1, zero_stage=3),
            placement=PlacementConfig(cpus_per_worker=1),
            checkpoint=CheckpointConfig(every_steps=2, scratch=scratch),
            tracking=TrackingConfig(mlflow_uri=mlflow_uri, run_name="resume"),
        )

    whole = run_training(config(tmp_path / "whole", 4))
    # the interrupted run writes to a scratch disk that Ray uploads from in the background (ASYNC) and empties
    scratch = tmp_path / "scratch"
    parted = run_training(config(tmp_path / "parts", 2, str(scratch)))
    staged = metric(mlflow_uri, parted["mlflow_run_id"], "checkpoint_staged_bytes")
    uploaded = sorted((tmp_path / "parts" / "ray" / "resume").glob("checkpoint_step*"))
    assert [p.name for p in uploaded] == ["checkpoint_step0000002_attempt0"]
    assert staged == [folder_bytes(uploaded[0])] and staged[0] > 0  # all of it passed through the scratch disk ...
    assert not [p for p in scratch.rglob("*") if p.is_file()]  # ... and was deleted there once uploaded
    assert metric(mlflow_uri, whole["mlflow_run_id"], "checkpoint_staged_bytes") == [0, 0]
    resumed = run_training(config(tmp_path / "parts", 4), resume=True)
    assert resumed["mlflow_run_id"] == json.loads((tmp_path / "parts" / "mlflow_run.json").read_text())["run_id"]
    a, b = weights(whole["export"], "transformer"), weights(resumed["export"], "transformer")
    for k in HEAD:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    before = weights(stage1["export"], "transformer")
    assert {k for k in a if not torch.equal(a[k], before[k])} == HEAD  # the gathered export holds real weights
    assert metric(mlflow_uri, resumed["mlflow_run_id"], "resumed_from_step") == [2]


def assert_one_line_error(args: tuple[str, ...], needle: str) -> None:
    """`pipelines/train.py ARGS` fails with exactly one `error:` line naming `needle` (its main, in this process)."""
    status, _, stderr = run_main(["pipelines/train.py", *args])
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert status != 0 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], stderr


def test_missing_data_is_one_clear_line(tmp_path):
    assert_one_line_error(("--stage", "1", "--data", str(tmp_path / "nope")), "training data not found")


def test_empty_dataset_is_one_clear_line(tmp_path):
    (tmp_path / "videos").mkdir()
    assert_one_line_error(("--stage", "1", "--data", str(tmp_path)), "no training videos")


def test_schema_mismatch_is_one_clear_line(sample_prep, tmp_path):
    copy = tmp_path / "prep"
    shutil.copytree(sample_prep[0], copy)
    for f in (copy / "clips").rglob("*.parquet"):
        table = pq.read_table(f)
        i = table.schema.get_field_index("schema_version")
        pq.write_table(table.set_column(i, "schema_version", pa.array([7] * table.num_rows, pa.int32())), f)
    assert_one_line_error(("--stage", "1", "--data", str(copy)), "re-run pipelines/prep.py")


def test_stage2_without_stage1_weights_is_one_clear_line(sample_prep, tmp_path):
    args = ("--stage", "2", "--data", str(sample_prep[0]), "--init", str(tmp_path / "none"))
    assert_one_line_error(args, "stage 2 needs stage-1 weights")


def test_architecture_options_reach_the_model_its_export_and_stage_2(tmp_path):
    """`--set model.*` builds longer histories and the paper's ablations; stage 2 keeps what stage 1 saved."""
    from mempack.config import load_config
    from mempack.model import HistoryLayout, MemoryPackTransformer, pack_history
    from mempack.train.config import ArchitectureConfig
    from mempack.train.loop import build_model

    config = load_config(
        TrainConfig(stage=1),
        None,
        [
            "model.frames_4x=32",
            "model.structure=B",
            "model.memory_init=zero",
            "model.memorize_input=segment",
            "model.pooling=learned",
            "model.carry=false",
        ],
    )
    model = build_model(config)
    assert model.config.layout == HistoryLayout(1, 2, 32, 9)
    sp = model.semantic_pack.config
    assert (sp.structure, sp.init, sp.memorize_input, sp.pooling, sp.carry) == (
        "B",
        "zero",
        "segment",
        "learned",
        False,
    )
    start, history = torch.randn(1, 16, 1, 8, 8), torch.randn(1, 16, 45, 8, 8)
    packed = pack_history(start, history, model.config.layout)
    assert packed.latents_4x.shape[2] == 32 and packed.indices_4x.tolist() == list(range(46 - 35, 46 - 3))
    assert torch.equal(packed.latents_4x, history[:, :, -35:-3])
    model.save_pretrained(tmp_path / "stage1")
    again = build_model(TrainConfig(stage=2, init=str(tmp_path / "stage1")))
    assert again.config.layout == model.config.layout and again.semantic_pack.config.structure == "B"
    assert (again.semantic_pack.config.memorize_input, again.semantic_pack.config.carry) == ("segment", False)
    assert isinstance(again, MemoryPackTransformer)

    ablation = build_model(TrainConfig(stage=1, model=ArchitectureConfig(semantic_pack=False, rope="relative")))
    assert ablation.semantic_pack is None and ablation.config.rope == "relative"
    with pytest.raises(ValueError, match="model.structure"):
        load_config(TrainConfig(), None, ["model.structure=D"])
    with pytest.raises(ValueError, match="model.pooling"):
        load_config(TrainConfig(), None, ["model.pooling=max"])
    with pytest.raises(ValueError, match="at least one frame"):
        ArchitectureConfig(frames_2x=0)


def test_stage2_architecture_settings_are_one_clear_line(tmp_path):
    args = ("--stage", "2", "--data", str(tmp_path), "--set", "model.frames_4x=32")
    assert_one_line_error(args, "stage 2 keeps the stage-1 export's architecture")

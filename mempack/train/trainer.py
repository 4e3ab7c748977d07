"""The driver side of a training run: validate, open the MLflow run, fit on Ray Train, export.

Ray Train V2 pieces: `TorchTrainer(train_loop_per_worker, scaling_config, run_config, datasets)`,
`RunConfig(name, storage_path, failure_config)`. A rerun with the same name and storage path resumes
from the run's latest checkpoint (that is what --resume does); without --resume an existing run
folder is cleared first, so a new run never silently continues an old one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from mempack.train.config import ArchitectureConfig, TrainConfig
from mempack.presets import get_preset
from mempack.train.data import check_dataset, check_shapes
from mempack.train.run_digest import ResumeMismatchError, check_or_write

log = logging.getLogger(__name__)
RUN_FILE = "mlflow_run.json"


class TrainSetupError(ValueError):
    """A run that cannot start (bad data, missing stage-1 weights): one clear line for the CLI."""


def default_mlflow_uri(base: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI (a team server, set on a cluster), else a sqlite store under ./outputs."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    base = (base or Path.cwd()) / "outputs"
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def newest_export(stage_dir: Path) -> Path | None:
    model = stage_dir / "model"
    return stage_dir if (model / "mempack.json").is_file() else None


def validate(config: TrainConfig) -> dict[int, list[str]]:
    """Everything that can be checked before Ray starts; returns the curriculum index."""
    from data_prep.schema import SchemaVersionError
    from mempack.train.data import EmptyDatasetError

    if config.stage == 2:
        if config.model != ArchitectureConfig():
            raise TrainSetupError("stage 2 keeps the stage-1 export's architecture: drop the model.* settings")
        init = Path(config.init) if config.init else Path(config.output).parent / "stage1"
        if (init / "model" / "mempack.json").is_file():
            init = init / "model"
        if not (init / "mempack.json").is_file() and not (init / "config.json").is_file():
            raise TrainSetupError(f"stage 2 needs stage-1 weights: none at {init} (run --stage 1 first or pass --init)")
        config.init = str(init.resolve())
    if config.pretrained and not Path(config.pretrained).is_dir():
        raise TrainSetupError(f"--pretrained folder not found: {config.pretrained}")
    # workers run in their own working directories: every path they read must be absolute
    config.data = str(Path(config.data).resolve())
    config.output = str(Path(config.output).resolve())
    if config.pretrained:
        config.pretrained = str(Path(config.pretrained).resolve())
    try:
        index = check_dataset(config.data)
        check_shapes(config.data, get_preset(_model_preset(config)))
    except (FileNotFoundError, EmptyDatasetError, SchemaVersionError, ValueError) as err:
        raise TrainSetupError(str(err)) from None
    return index


def _model_preset(config: TrainConfig) -> str:
    """The preset whose widths the data must have: the stage-1 export's in stage 2, else the run's."""
    if config.stage == 2 and config.init and (Path(config.init) / "mempack.json").is_file():
        return json.loads((Path(config.init) / "mempack.json").read_text()).get("preset", config.preset)
    return config.preset


def _mlflow_run(config: TrainConfig, uri: str, out: Path, resume: bool, ds_config: dict) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_file = out / RUN_FILE
    if resume and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
        client.set_terminated(run_id, status="RUNNING")
        return run_id
    experiment = client.get_experiment_by_name(config.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
    run = client.create_run(experiment_id, run_name=config.run_name or f"stage{config.stage}",
                            tags={"stage": str(config.stage)})
    run_id = run.info.run_id
    flat = _flatten(asdict(config))
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat.items()])
    client.log_dict(run_id, asdict(config), "config/train_config.json")
    client.log_dict(run_id, ds_config, "config/deepspeed.json")
    summary = Path(config.data) / "summary.json"
    if summary.is_file():
        client.log_artifact(run_id, str(summary), "data")
    run_file.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    return run_id


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_training(config: TrainConfig, resume: bool = False) -> dict:
    """Train one stage on the current Ray cluster; returns {"export", "mlflow_run_id", "metrics"}."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mempack.train import deepspeed_config
    from mempack.train.loop import EXPORT_DIR, train_loop_per_worker

    index = validate(config)
    out = Path(config.output).resolve()
    name = config.run_name or f"stage{config.stage}"
    storage = out / "ray"
    if not resume:
        shutil.rmtree(storage / name, ignore_errors=True)
        (out / RUN_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_or_write(config, index, out, resume)
    except ResumeMismatchError as err:
        raise TrainSetupError(str(err)) from None
    try:
        ds_config = deepspeed_config.resolve(config)
    except (FileNotFoundError, ValueError) as err:
        raise TrainSetupError(str(err)) from None
    uri = config.mlflow_uri or default_mlflow_uri()
    run_id = _mlflow_run(config, uri, out, resume, ds_config)

    from mempack.train.data import bucket_datasets

    datasets = bucket_datasets(config.data, index, config.num_workers, config.batch_size)
    for ds in datasets.values():
        ds.context.execution_options.preserve_order = True
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "deepspeed": ds_config, "buckets": list(index),
                           "mlflow_uri": uri, "mlflow_run_id": run_id},
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=config.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": _worker_env()}),
        datasets=datasets,
    )
    result = trainer.fit()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if result.error:
        client.set_terminated(run_id, status="FAILED")
        raise result.error
    export = out / EXPORT_DIR
    shutil.rmtree(export, ignore_errors=True)
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(Path(folder) / EXPORT_DIR, export)
    _write_encoders_json(config, out)
    client.log_artifacts(run_id, str(export), "model")
    client.log_artifact(run_id, str(out / "encoders.json"), "model")
    client.set_terminated(run_id, status="FINISHED")
    return {"export": str(export), "mlflow_run_id": run_id, "tracking_uri": uri, "metrics": result.metrics}


def _worker_env() -> dict[str, str]:
    cache = Path.home() / ".cache" / "mempack" / "torch_extensions"
    return {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(cache)),
            "TOKENIZERS_PARALLELISM": "false"}


def _write_encoders_json(config: TrainConfig, out: Path) -> None:
    """Which encoders made the training data, so inference builds the same ones."""
    encoders = {"preset": config.preset, "path": None, "seed": 0}
    summary = Path(config.data) / "summary.json"
    if summary.is_file():
        prep = json.loads(summary.read_text()).get("config", {})
        encoders = {"preset": prep.get("preset", config.preset), "path": prep.get("encoders"),
                    "seed": prep.get("encoder_seed", 0)}
    (out / "encoders.json").write_text(json.dumps(encoders, indent=2))

"""The driver side of a training run: validate, open the MLflow run, fit on Ray Train, export.

Ray Train V2 pieces: `TorchTrainer(train_loop_per_worker, scaling_config, run_config, datasets)`,
`RunConfig(name, storage_path, failure_config)`. A rerun with the same name and storage path resumes
from the run's latest checkpoint (that is what --resume does); without --resume an existing run
folder is cleared first, so a new run never silently continues an old one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from mempack import layout, tracking
from mempack.config import flatten
from mempack.layout import RUN_FILE
from mempack.model.memorypack import MemoryPackConfig
from mempack.presets import get_preset
from mempack.schema import summary_path
from mempack.train.checkpoint import ResumeMismatchError, check_or_write
from mempack.train.config import ArchitectureConfig, TrackingConfig, TrainConfig
from mempack.train.data import check_dataset, check_shapes

log = logging.getLogger(__name__)


class TrainSetupError(ValueError):
    """A run that cannot start (bad data, missing stage-1 weights): one clear line for the CLI."""


def validate(config: TrainConfig) -> dict:
    """Everything that can be checked before Ray starts; returns the curriculum index."""
    from mempack.schema import SchemaVersionError
    from mempack.train.data import EmptyDatasetError

    if config.stage == 2:
        if config.model != ArchitectureConfig():
            raise TrainSetupError("stage 2 keeps the stage-1 export's architecture: drop the model.* settings")
        init = Path(config.init) if config.init else Path(config.output).parent / layout.stage_name(1)
        if MemoryPackConfig.saved_in(init / layout.EXPORT_DIR):
            init = init / layout.EXPORT_DIR
        if not MemoryPackConfig.saved_in(init) and not (init / "config.json").is_file():
            raise TrainSetupError(f"stage 2 needs stage-1 weights: none at {init} (run --stage 1 first or pass --init)")
        config.init = str(init.resolve())
    tracked, validation = config.tracking, config.validation
    if tracked.register_model and importlib.util.find_spec("mempack.mlflow_model") is None:
        raise TrainSetupError(
            "--register-model needs mempack.mlflow_model (the MLflow pyfunc model), which this build does not have"
        )
    if validation.image:
        if not Path(validation.image).is_file():
            raise TrainSetupError(f"--sample-image not found: {validation.image}")
        validation.image = str(Path(validation.image).resolve())
    for flag, value in (("--sample-every", validation.every), ("--progress-every", tracked.progress_every)):
        if value < 0:
            raise TrainSetupError(f"{flag} must be >= 0 (0: off)")
    if validation.sections < 1 or validation.steps < 1:
        raise TrainSetupError("--sample-sections and --sample-steps must be >= 1")
    if config.pretrained and not Path(config.pretrained).is_dir():
        raise TrainSetupError(f"--pretrained folder not found: {config.pretrained}")
    # workers run in their own working directories: every path they read must be absolute
    config.data.path = str(Path(config.data.path).resolve())
    config.output = str(Path(config.output).resolve())
    if config.pretrained:
        config.pretrained = str(Path(config.pretrained).resolve())
    try:
        index = check_dataset(config.data.path)
        check_shapes(config.data.path, get_preset(_model_preset(config)))
    except (FileNotFoundError, EmptyDatasetError, SchemaVersionError, ValueError) as err:
        raise TrainSetupError(str(err)) from None
    return index


def _model_preset(config: TrainConfig) -> str:
    """The preset whose widths the data must have: the stage-1 export's in stage 2, else the run's."""
    if config.stage == 2 and config.init and MemoryPackConfig.saved_in(config.init):
        return MemoryPackConfig.load(config.init).preset
    return config.preset


def _mlflow_run(config: TrainConfig, uri: str, out: Path, resume: bool, ds_config: dict) -> str:
    """Create the run (or reopen it on --resume): params, configs, source tags and the prep input it reads."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_file = out / RUN_FILE
    if resume and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
        client.set_terminated(run_id, status="RUNNING")
        return run_id
    client, run_id = tracking.create_run(
        uri,
        config.tracking.experiment,
        run_name=config.tracking.run_name or f"stage{config.stage}",
        tags={"stage": str(config.stage)},
        entry_point="pipelines/train.py",
    )
    with tracking.run_status(client, run_id, finish=False):  # a run that cannot start ends FAILED
        flat = _params(config)
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat.items()])
        client.log_dict(run_id, asdict(config), "config/train_config.json")
        client.log_dict(run_id, ds_config, "config/deepspeed.json")
        summary = summary_path(config.data.path)
        if summary.is_file():
            client.log_artifact(run_id, str(summary), "data")
        tracking.log_prep_input(client, run_id, config.data.path)
        tracking.write_run_file(out, run_id, uri)
    return run_id


def _params(config: TrainConfig) -> dict:
    """The run's MLflow params, a part's leaf under its flag's name (`lr`, not `optim.lr`): runs from before
    the config had parts compare with newer ones in the MLflow UI."""
    flat_name = {dotted: flat for flat, dotted in TrainConfig.ALIASES.items()}
    return {flat_name.get(k, k): v for k, v in flatten(asdict(config)).items()}


def run_training(config: TrainConfig, resume: bool = False) -> dict:
    """Train one stage on the current Ray cluster; returns {"export", "mlflow_run_id", "metrics"}."""
    from mempack.train import deepspeed_config

    index = validate(config)
    out = Path(config.output).resolve()
    name = config.tracking.run_name or f"stage{config.stage}"
    storage = out / layout.RAY_DIR
    if not resume:
        shutil.rmtree(storage / name, ignore_errors=True)
        (out / RUN_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_or_write(config, index, out, resume)
    except ResumeMismatchError as err:
        raise TrainSetupError(str(err)) from None
    try:
        ds_config = deepspeed_config.resolve(config.distributed, config.optim)
    except (FileNotFoundError, ValueError) as err:
        raise TrainSetupError(str(err)) from None
    uri = config.tracking.mlflow_uri or tracking.default_tracking_uri()
    run_id = _mlflow_run(config, uri, out, resume, ds_config)
    from mlflow.tracking import MlflowClient

    # from here on the run ends FINISHED, or FAILED (KILLED on Ctrl-C) whatever goes wrong: never left RUNNING
    with tracking.run_status(MlflowClient(uri), run_id):
        return _fit_and_export(config, index, ds_config, uri, run_id, out, name, storage)


def _fit_and_export(
    config: TrainConfig, index: dict, ds_config: dict, uri: str, run_id: str, out: Path, name: str, storage: Path
) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mempack.layout import EXPORT_DIR, EXPORT_EMA_DIR
    from mempack.train.data import locate_videos
    from mempack.train.loop import train_loop_per_worker

    # where each video's rows are, read once here; every worker streams its own videos (data.worker_videos)
    locations = locate_videos(config.data.path)
    distributed = config.distributed
    resources = {"CPU": config.placement.cpus_per_worker}
    if distributed.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config,
            "deepspeed": ds_config,
            "index": index,
            "locations": locations,
            "mlflow_uri": uri,
            "mlflow_run_id": run_id,
            "run_storage": str(storage / name),
        },
        torch_config=TorchConfig(backend="nccl" if distributed.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=distributed.num_workers,
            use_gpu=distributed.use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.placement.strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=config.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    from mempack.export import encoders_of_prep, export_pipeline

    # a complete pipeline folder (weights + the encoders that made the data), swapped in atomically
    # (--ema-decay: the EMA weights too, as a second pipeline folder model_ema/ beside model/)
    encoders = encoders_of_prep(config.data.path, config.preset)
    export_ema = None
    with result.checkpoint.as_directory() as folder:
        export = export_pipeline(Path(folder) / EXPORT_DIR, out / EXPORT_DIR, encoders)
        if config.optim.ema_decay > 0:
            export_ema = export_pipeline(Path(folder) / EXPORT_EMA_DIR, out / EXPORT_EMA_DIR, encoders)
    if export_ema is None and (out / EXPORT_EMA_DIR).exists():
        # an earlier run's EMA must not sit beside weights it was never averaged from
        log.info("removing %s: this run keeps no EMA", out / EXPORT_EMA_DIR)
        shutil.rmtree(out / EXPORT_EMA_DIR)
    _log_mlflow_model(config.tracking, uri, run_id, export, EXPORT_DIR, config.tracking.register_model)
    if export_ema is not None:
        _log_mlflow_model(config.tracking, uri, run_id, export_ema, EXPORT_EMA_DIR, None)
    return {
        "export": str(export),
        "export_ema": str(export_ema) if export_ema else None,
        "mlflow_run_id": run_id,
        "tracking_uri": uri,
        "metrics": result.metrics,
    }


def _log_mlflow_model(
    settings: TrackingConfig, uri: str, run_id: str, export: Path, name: str, register: str | None
) -> None:
    """Log the export once, as the run's MLflow Model `name` (pyfunc: `runs:/ID/name`), registered as
    `register` if given. Its artifacts are the export itself, or with --mlflow-weights reference only a small
    file naming the export in the run's storage (at 12.9 B the export is 25.8 GB per copy).

    The pyfunc wrapper lives in mempack.mlflow_model; a build without it logs the files under `name`/.
    """
    try:
        from mempack.mlflow_model import log_pipeline_model
    except ImportError:
        log.info("mempack.mlflow_model not available: the export is logged as files under %s/ only", name)
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).log_artifacts(run_id, str(export), name)
        return
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):  # the fluent API inside our already-open run
        log_pipeline_model(
            str(export), registered_model_name=register, name=name, reference=settings.mlflow_weights == "reference"
        )
    # start_run(run_id=...) ends the run FINISHED on exit: the caller's run_status decides the final state
    mlflow.tracking.MlflowClient(uri).set_terminated(run_id, status="RUNNING")


def _worker_env() -> dict[str, str]:
    from mempack.train.metrics import FAST_FAIL_ENV

    cache = Path.home() / ".cache" / "mempack" / "torch_extensions"
    # the workers' MLflow client fails fast in an outage; MlflowRunLogger buffers and retries instead
    mlflow_env = {k: os.environ.get(k, v) for k, v in FAST_FAIL_ENV.items()}
    return {
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(cache)),
        "TOKENIZERS_PARALLELISM": "false",
        **mlflow_env,
    }

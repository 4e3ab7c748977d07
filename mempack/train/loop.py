"""The Ray Train worker loop: DeepSpeed engine, curriculum buckets, forcing, checkpoints, metrics.

The run's steps are `mempack.train.data.curriculum` (buckets short → long, the same list on every
rank); each worker streams its share of each step's videos (`worker_videos`). Per video (one Ray Data row),
`mempack.train.step.train_video` makes one step: stage 1 samples one
clip and trains it with teacher forcing (history and ψ from the ground truth of the earlier clips,
ψ's graph kept through `forcing.memory_grad_window` updates); stage 2 runs Direct Forcing (or the
teacher/student controls) over all clips in order. Each clip's loss is back-propagated at once, and
DeepSpeed's gradient accumulation is set to the clips trained per video, so the optimizer steps
exactly once per video.

Checkpoints (docs/checkpoints.md): every `checkpoint_minutes` (and/or `checkpoint_every` steps) every rank
writes its DeepSpeed shard straight into one folder of the run's storage and reports it without upload
(`CheckpointUploadMode.NO_UPLOAD`); with `checkpoint_scratch` it writes to that node-local folder and Ray
uploads it in the background and deletes the local copy (`ASYNC`). Frozen parameters are not saved (stage 2:
only the head, its optimizer state and the loop's position): on resume they come from the init weights
`build_model` loads. On (re)start the loop loads the latest checkpoint — after a worker crash (FailureConfig)
or a rerun with the same run name (--resume) — and streams the curriculum from the step it had reached
(a resume with another max_steps or epochs re-plans the curriculum and continues it at that step).

The training forward goes through the engine (`engine(...)`, DeepSpeed's forward with its backward hooks),
never around it.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path

import torch

from mempack.layout import EXPORT_DIR, EXPORT_EMA_DIR, SAMPLES_DIR
from mempack.model import MemoryPackTransformer
from mempack.model.memorypack import BACKBONE_DIR, SEMANTIC_PACK_DIR, pretrained_folders
from mempack.train import zero3
from mempack.train.checkpoint import (
    CHECKPOINT_TAG,
    CheckpointSchedule,
    checkpoint_dir_name,
    checkpoint_folder,
    folder_bytes,
    rank0_decides,
)
from mempack.train.config import TrainConfig
from mempack.train.data import Bucket, collate_videos, curriculum, to_training_inputs, worker_videos
from mempack.train.deepspeed_config import with_group_rates
from mempack.train.ema import ParameterEMA
from mempack.train.guards import NonFiniteSteps, NonFiniteTrainingError, weights_finite
from mempack.train.metrics import ProgressLine, console_logger, worker_logger
from mempack.train.optim import parameter_groups
from mempack.train.step import clips_trained_per_video, train_video, trained_clip
from mempack.train.validation import SampleSettings, ValidationSampler

log = logging.getLogger(__name__)


def build_model(config: TrainConfig, ds_config: dict | None = None, rank: int | None = None) -> MemoryPackTransformer:
    """Stage 1: the preset (random) or --pretrained weights, with `config.model`'s architecture;
    stage 2: the stage-1 export, exactly as it was saved.

    Built directly in the training dtype (no fp32 copy of a bf16 run). Under ZeRO-3 the backbone is
    built inside `deepspeed.zero.Init` (each module partitioned as soon as it exists) and pretrained
    weights are loaded into the partitions module by module, so no rank ever holds the whole model.
    """
    if rank is None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    dtype = zero3.training_dtype(ds_config)
    sharded = zero3.is_zero3(ds_config)
    context = zero3.partitioned_construction(ds_config) if sharded else None
    source = config.init if config.stage == 2 else config.pretrained
    overrides = {} if config.stage == 2 else config.model.model_overrides()
    if source:
        model = MemoryPackTransformer.from_pretrained(source, dtype=dtype, backbone_context=context, **overrides)
    else:
        model = MemoryPackTransformer.from_preset(
            config.preset, seed=config.seed, dtype=dtype, backbone_context=context, **overrides
        )
    if sharded:
        zero3.register_directly_used_parameters(model)
        if source:
            count = zero3.load_into_partitions(model, {"backbone.": pretrained_folders(source).backbone}, rank)
            log.info("rank %d: loaded %d pretrained tensors into ZeRO-3 partitions from %s", rank, count, source)
    return model


def load_trained_part(src: dict, dst: torch.nn.Module) -> None:
    """DeepSpeed's module load, for checkpoints written with `exclude_frozen_parameters`: the frozen weights
    are not in them (build_model loaded those from the init weights), and DeepSpeed's strict load would
    refuse exactly those. Anything else missing, and any key the model does not have, is still an error."""
    frozen = {name for name, p in dst.named_parameters() if not p.requires_grad}
    result = dst.load_state_dict(src, strict=False)
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def _init_engine(model: MemoryPackTransformer, ds_config: dict, use_gpu: bool, memory_lr: float | None):
    import deepspeed

    if not use_gpu:
        # The shared-memory allreduce op only speeds up CPU collectives and costs a ~1 min C++ build on
        # first use; gloo alone is correct, so skip it.
        # (importlib: `import deepspeed.comm.torch as m` binds deepspeed.comm's attribute `torch`, the torch package)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    groups = parameter_groups(model, ds_config["optimizer"]["params"]["lr"], memory_lr)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, config=with_group_rates(ds_config, groups), dist_init_required=False
    )
    return engine


def _steps(rows, size: int, start: int):
    """(step, its `size` rows) from a worker's rows in step order; a row out of order is an error, never a
    silently shifted curriculum (the ranks would train different buckets at one step and deadlock)."""
    batch: list = []
    for i, row in enumerate(rows):
        step = start + i // size
        if int(row["step"]) != step:
            raise RuntimeError(f"training data out of order: row {i} is of step {row['step']}, expected {step}")
        batch.append(row)
        if len(batch) == size:
            yield step, batch
            batch = []


def _generator(seed: int, *keys: int) -> torch.Generator:
    g = torch.Generator()
    value = seed
    for k in keys:
        value = (value * 1_000_003 + k) % (2**63 - 1)
    return g.manual_seed(value)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    config: TrainConfig = loop_config["config"]
    ds_config: dict = loop_config["deepspeed"]
    index: dict[Bucket, list[str]] = loop_config["index"]  # {(num_clips, height, width): video ids}, short first
    buckets = list(index)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data, optim, schedule, tracked = config.data, config.optim, config.schedule, config.tracking
    torch.manual_seed(config.seed)
    device = torch.device(f"cuda:{ctx.get_local_rank()}" if config.distributed.use_gpu else "cpu")
    if config.distributed.use_gpu:
        torch.cuda.set_device(device)

    model = build_model(config, ds_config, rank)
    model.set_trainable(config.resolved_trainable())
    if config.distributed.gradient_checkpointing:
        model.backbone.enable_gradient_checkpointing()
    engine = _init_engine(model, ds_config, config.distributed.use_gpu, optim.memory_lr)
    module: MemoryPackTransformer = engine.module
    dtype = next(module.parameters()).dtype
    logger = worker_logger(
        loop_config["mlflow_uri"], loop_config["mlflow_run_id"], config.output, rank, tracked.system_metrics
    )

    ema = ParameterEMA(module, optim.ema_decay) if optim.ema_decay > 0 else None
    state = {"step": 0, "restarts": 0, "skipped_steps": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            # pickle inside: only ever our own run folder's checkpoints (README: trust boundary); frozen
            # parameters are not in it (exclude_frozen_parameters): they are the init weights build_model loaded
            _, client_state = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG, custom_load_fn=load_trained_part)
            if ema is not None:
                ema.load(folder, rank)
        state.update({k: client_state[k] for k in state if k in client_state})
        state["restarts"] += 1
        logger.log({"resumed_from_step": state["step"], "restarts": state["restarts"]}, step=state["step"])
        log.info("rank %d resumed at step %d", rank, state["step"])

    forcing = config.resolved_forcing()
    nonfinite = NonFiniteSteps(schedule.max_nonfinite_steps, skipped=state["skipped_steps"])
    progress = ProgressLine(schedule.max_steps, tracked.progress_every if rank == 0 else 0, state["step"])
    sampler = _validation_sampler(config, rank, engine.zero_optimization_stage() == 3, world)
    checkpoints = config.checkpoint
    saving = CheckpointSchedule(checkpoints.every_steps, checkpoints.every_minutes, rank0_decides(device))

    def save_and_report(metrics: dict, final: bool = False) -> None:
        if not weights_finite(module):
            raise NonFiniteTrainingError(
                f"weights are non-finite at step {state['step']}: not checkpointing or exporting them"
            )
        name = checkpoint_dir_name(state["step"], state["restarts"])
        folder, upload = checkpoint_folder(loop_config["run_storage"], checkpoints.scratch, name, rank)
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(
            str(folder), tag=CHECKPOINT_TAG, client_state=dict(state), exclude_frozen_parameters=True
        )
        if ema is not None:
            ema.save(folder, rank)
        if final:
            _export(engine, module, os.path.join(folder, EXPORT_DIR), rank)
            if ema is not None:
                with ema.swapped_in():
                    _export(engine, module, os.path.join(folder, EXPORT_EMA_DIR), rank)
        # what this rank wrote to the node's own disk (0 when it wrote into the run's storage)
        staged = folder_bytes(folder) if upload else 0
        written = {"checkpoint_seconds": time.perf_counter() - started, "checkpoint_staged_bytes": staged}
        logger.log(written, step=state["step"])
        metrics = {**metrics, **written}
        mode = CheckpointUploadMode.ASYNC if upload else CheckpointUploadMode.NO_UPLOAD
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(str(folder)),
            checkpoint_dir_name=name,
            checkpoint_upload_mode=mode,
        )
        saving.saved()

    steps = curriculum(index, schedule.max_steps, schedule.epochs, world * data.batch_size, data.curriculum)
    # the export records the longest video this run trains on (and its source's): generation past it
    # moves positions by the model's `positions` rule (docs/long_videos.md)
    longest = max((buckets[s.bucket].num_clips for s in steps), default=0)
    module.config.trained_sections = max(module.config.trained_sections or 0, longest) or None
    stream = (
        worker_videos(data.path, steps, rank, world, loop_config["locations"], state["step"]).iter_rows()
        if state["step"] < len(steps)
        else []
    )
    last_metrics: dict = {}
    train_batch = None
    for step, rows in _steps(stream, data.batch_size, state["step"]):
        num_clips = buckets[steps[step].bucket].num_clips
        batch = clips_trained_per_video(config.stage, forcing.mode, num_clips, data.stage1_clips) * world
        if batch != train_batch:
            train_batch = batch
            engine.set_train_batch_size(train_batch)
        started = time.perf_counter()
        clips, cond = collate_videos([to_training_inputs(row, device, dtype) for row in rows])
        g = _generator(config.seed, step, rank)
        shared = _generator(config.seed, step)
        only = trained_clip(config.stage, forcing.mode, num_clips, shared, data.stage1_clips)

        def backward(loss, last: bool, retain: bool) -> None:
            # the video's last clip is the accumulation boundary, whatever DeepSpeed's micro-step
            # counter says: it runs across buckets of different lengths and is not checkpointed
            engine.set_gradient_accumulation_boundary(last)
            engine.backward(loss, retain_graph=retain)
            engine.step()

        stats = train_video(module, clips, cond, forcing, backward, only_clip=only, generator=g, forward=engine)
        applied = nonfinite.record(stats.loss, engine.was_step_applied(), state["step"] + 1)
        state["skipped_steps"] = nonfinite.skipped
        if applied and ema is not None:
            ema.update()
        state["step"] += 1
        seconds = time.perf_counter() - started
        grad_norm = engine.get_global_grad_norm()
        last_metrics = {
            "loss": stats.loss if applied else None,
            "lr": engine.get_lr()[0],
            "skipped_steps": state["skipped_steps"],
            "grad_norm": float(grad_norm) if grad_norm is not None and applied else None,
            "clips_per_s": stats.clips / seconds,
            "latent_tokens_per_s": stats.tokens / seconds,
            "videos_per_step": len(rows),
            "latent_tokens_per_step": stats.tokens,  # per worker; batch × clips
            "clips_per_video": num_clips,
            "optimizer_steps": engine.global_steps,
            "curriculum_bucket": steps[step].bucket,
        }
        if state["step"] % tracked.log_every == 0:
            logger.log(last_metrics, step=state["step"])
        progress.update(state["step"], stats.loss)  # nan on a skipped step
        if config.validation.every > 0 and state["step"] % config.validation.every == 0:
            _validation_sample(module, sampler, config.output, state["step"], logger)
        if state["step"] < len(steps) and saving.due(state["step"]):
            save_and_report({**last_metrics, "step": state["step"]})
    save_and_report({**last_metrics, "step": state["step"], "optimizer_steps": engine.global_steps}, final=True)
    logger.close()


def _validation_sampler(config: TrainConfig, rank: int, zero3_sharded: bool, world: int) -> ValidationSampler | None:
    """The ranks that render (all under ZeRO-3, whose forwards are collectives; rank 0 otherwise) get a
    sampler; rank 0 encodes the prompt and image once on the CPU and shares the embeddings."""
    video = config.validation
    if video.every <= 0 or (rank != 0 and not zero3_sharded):
        return None
    settings = SampleSettings(video.image, video.prompt, video.sections, video.steps, config.seed)
    return ValidationSampler(config.data.path, config.preset, settings, rank=rank, share=zero3_sharded and world > 1)


def _validation_sample(
    module: MemoryPackTransformer, sampler: ValidationSampler | None, output: str, step: int, logger
) -> None:
    """Render a validation video and queue it for MLflow (`samples/`). Under ZeRO-3 every rank runs the
    sampling forwards (DeepSpeed gathers one module at a time, never the whole model) and rank 0 writes
    the video; otherwise rank 0 renders alone and the others wait at the next collective."""
    if sampler is None:
        return
    started = time.perf_counter()
    path = sampler.render(module, Path(output) / SAMPLES_DIR / f"step_{step:06d}.mp4")
    if path is not None:
        logger.log_artifact(path, SAMPLES_DIR)
        console_logger().info("step %d: validation video %s (%.1f s)", step, path, time.perf_counter() - started)


def _export(engine, module: MemoryPackTransformer, folder: str, rank: int) -> None:
    """Full weights as safetensors in the layout infer loads (`MemoryPackTransformer.save_pretrained`'s).

    Under ZeRO-3 the weights are gathered one module at a time and rank 0 writes bounded shards
    (`zero3.export_by_module`): no rank ever holds the whole model. Otherwise every rank has the full
    weights and rank 0 saves them as they are.
    """
    if engine.zero_optimization_stage() == 3:
        parts = {BACKBONE_DIR: module.backbone}
        if module.semantic_pack is not None:
            parts[SEMANTIC_PACK_DIR] = module.semantic_pack
        zero3.export_by_module(parts, Path(folder), rank)
        if rank == 0:
            module.config.save(folder)
    elif rank == 0:
        module.save_pretrained(folder)

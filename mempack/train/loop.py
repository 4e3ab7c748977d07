"""The Ray Train worker loop: DeepSpeed engine, curriculum buckets, forcing, checkpoints, metrics.

Per video (one Ray Data row), `mempack.train.step.train_video` makes one step: stage 1 samples one
clip and trains it with teacher forcing (history and ψ from the ground truth of the earlier clips,
ψ's graph kept through `forcing.memory_grad_window` updates); stage 2 runs Direct Forcing (or the
teacher/student controls) over all clips in order. Each clip's loss is back-propagated at once, and
DeepSpeed's gradient accumulation is set to the clips trained per video, so the optimizer steps
exactly once per video.

Checkpoints: every `checkpoint_every` optimizer steps every rank writes its DeepSpeed shard to a
temporary folder and reports it (`ray.train.report(..., checkpoint=...)`); Ray merges the shards into
one checkpoint. On (re)start the loop loads the latest one — after a worker crash (FailureConfig) or
a rerun with the same run name (--resume) — and skips the videos it had already trained on.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mempack.train.step import clips_trained_per_video, train_video, trained_clip
from mempack.model import MemoryPackTransformer
from mempack.model.memorypack import CONFIG_NAME, SEMANTIC_PACK_DIR, BACKBONE_DIR, pretrained_folders
from mempack.train import zero3
from mempack.train.deepspeed_config import with_group_rates
from mempack.train.ema import ParameterEMA
from mempack.train.guards import NonFiniteSteps, NonFiniteTrainingError, weights_finite
from mempack.train.config import TrainConfig
from mempack.train.data import Bucket, collate_videos, to_training_inputs
from mempack.train.metrics import worker_logger
from mempack.train.optim import parameter_groups
from mempack.train.metrics import ProgressLine, console_logger
from mempack.train.validation import SampleSettings, ValidationSampler

log = logging.getLogger(__name__)
CHECKPOINT_TAG = "state"  # not "latest": DeepSpeed writes a file of that name
EXPORT_DIR = "model"
EXPORT_EMA_DIR = "model_ema"  # the EMA weights, same layout, when ema_decay > 0
SAMPLES_DIR = "samples"  # validation videos: in the run folder and the MLflow run


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
        model = MemoryPackTransformer.from_preset(config.preset, seed=config.seed, dtype=dtype,
                                                  backbone_context=context, **overrides)
    if sharded:
        zero3.register_directly_used_parameters(model)
        if source:
            count = zero3.load_into_partitions(model, {"backbone.": pretrained_folders(source).backbone}, rank)
            log.info("rank %d: loaded %d pretrained tensors into ZeRO-3 partitions from %s", rank, count, source)
    return model


def _init_engine(model: MemoryPackTransformer, ds_config: dict, use_gpu: bool, memory_lr: float | None):
    import deepspeed

    if not use_gpu:
        # The shared-memory allreduce op only speeds up CPU collectives and costs a ~1 min C++ build on
        # first use; gloo alone is correct, so skip it.
        # (importlib: `import deepspeed.comm.torch as m` binds deepspeed.comm's attribute `torch`, the torch package)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    groups = parameter_groups(model, ds_config["optimizer"]["params"]["lr"], memory_lr)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups,
                                           config=with_group_rates(ds_config, groups), dist_init_required=False)
    return engine


def _batches(rows, size: int):
    """(position of the first row, rows) of `size` consecutive rows (the last batch may be shorter)."""
    batch: list = []
    position = 0
    for i, row in enumerate(rows):
        if not batch:
            position = i
        batch.append(row)
        if len(batch) == size:
            yield position, batch
            batch = []
    if batch:
        yield position, batch


def _generator(seed: int, *keys: int) -> torch.Generator:
    g = torch.Generator()
    value = seed
    for k in keys:
        value = (value * 1_000_003 + k) % (2**63 - 1)
    return g.manual_seed(value)


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    config: TrainConfig = loop_config["config"]
    ds_config: dict = loop_config["deepspeed"]
    buckets: list[Bucket] = loop_config["buckets"]  # (num_clips, height, width), curriculum order
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config.seed)
    device = torch.device(f"cuda:{ctx.get_local_rank()}" if config.use_gpu else "cpu")
    if config.use_gpu:
        torch.cuda.set_device(device)

    model = build_model(config, ds_config, rank)
    model.set_trainable(config.resolved_trainable())
    if config.gradient_checkpointing:
        model.backbone.enable_gradient_checkpointing()
    engine = _init_engine(model, ds_config, config.use_gpu, config.memory_lr)
    module: MemoryPackTransformer = engine.module
    dtype = next(module.parameters()).dtype
    logger = worker_logger(loop_config["mlflow_uri"], loop_config["mlflow_run_id"], config.output, rank,
                           config.system_metrics)

    ema = ParameterEMA(module, config.ema_decay) if config.ema_decay > 0 else None
    state = {"step": 0, "epoch": 0, "bucket": 0, "videos_done": 0, "restarts": 0, "skipped_steps": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            # pickle inside: only ever our own run folder's checkpoints (README: trust boundary)
            _, client_state = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
            if ema is not None:
                ema.load(folder, rank)
        state.update({k: client_state[k] for k in state if k in client_state})
        state["restarts"] += 1
        logger.log({"resumed_from_step": state["step"], "restarts": state["restarts"]}, step=state["step"])
        log.info("rank %d resumed at step %d", rank, state["step"])

    forcing = config.resolved_forcing()
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps, skipped=state["skipped_steps"])
    progress = ProgressLine(config.max_steps, config.progress_every if rank == 0 else 0, state["step"])
    sampler = _validation_sampler(config, device, dtype) if config.sample_every > 0 and rank == 0 else None

    def save_and_report(metrics: dict, final: bool = False) -> None:
        if not weights_finite(module):
            raise NonFiniteTrainingError(f"weights are non-finite at step {state['step']}: "
                                         "not checkpointing or exporting them")
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state=dict(state))
            if ema is not None:
                ema.save(tmp, rank)
            if final:
                _export(engine, module, os.path.join(tmp, EXPORT_DIR), rank)
                if ema is not None:
                    with ema.swapped_in():
                        _export(engine, module, os.path.join(tmp, EXPORT_EMA_DIR), rank)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

    done = state["step"] >= config.max_steps
    last_metrics: dict = {}
    while not done and state["epoch"] < config.epochs:
        for b in range(state["bucket"], len(buckets)):
            num_clips = buckets[b].num_clips
            engine.set_train_batch_size(clips_trained_per_video(config.stage, forcing.mode, num_clips,
                                                         config.stage1_clips) * world)
            shard = ray.train.get_dataset_shard(buckets[b].name)
            skip = state["videos_done"] if b == state["bucket"] else 0
            for position, rows in _batches(shard.iter_rows(), config.batch_size):
                if position < skip:
                    continue
                started = time.perf_counter()
                clips, cond = collate_videos([to_training_inputs(row, device, dtype) for row in rows])
                g = _generator(config.seed, state["epoch"], num_clips, position, rank)
                shared = _generator(config.seed, state["epoch"], num_clips, position)
                only = trained_clip(config.stage, forcing.mode, num_clips, shared, config.stage1_clips)

                def backward(loss, last: bool, retain: bool) -> None:
                    # the video's last clip is the accumulation boundary, whatever DeepSpeed's micro-step
                    # counter says: it runs across buckets of different lengths and is not checkpointed
                    engine.set_gradient_accumulation_boundary(last)
                    engine.backward(loss, retain_graph=retain)
                    engine.step()

                stats = train_video(module, clips, cond, forcing, backward, only_clip=only, generator=g)
                losses, tokens, n_clips = [stats.loss], stats.tokens, stats.clips
                applied = nonfinite.record(stats.loss, engine.was_step_applied(), state["step"] + 1)
                state["skipped_steps"] = nonfinite.skipped
                if applied and ema is not None:
                    ema.update()
                state["step"] += 1
                state["videos_done"] = position + len(rows)
                state["bucket"] = b
                seconds = time.perf_counter() - started
                grad_norm = engine.get_global_grad_norm()
                last_metrics = {
                    "loss": sum(losses) / len(losses) if applied else None, "lr": engine.get_lr()[0],
                    "skipped_steps": state["skipped_steps"],
                    "grad_norm": float(grad_norm) if grad_norm is not None and applied else None,
                    "clips_per_s": n_clips / seconds, "latent_tokens_per_s": tokens / seconds,
                    "videos_per_step": len(rows), "latent_tokens_per_step": tokens,  # per worker; batch × clips
                    "clips_per_video": num_clips, "optimizer_steps": engine.global_steps, "epoch": state["epoch"],
                }
                if state["step"] % config.log_every == 0:
                    logger.log(last_metrics, step=state["step"])
                progress.update(state["step"], stats.loss)  # nan on a skipped step
                if config.sample_every > 0 and state["step"] % config.sample_every == 0:
                    _validation_sample(engine, module, sampler, config.output, state["step"], logger)
                done = state["step"] >= config.max_steps
                if done:
                    break
                if state["step"] % config.checkpoint_every == 0:
                    save_and_report({**last_metrics, "step": state["step"]})
            if done:
                break
            state["videos_done"] = 0
        if not done:
            state["epoch"] += 1
            state["bucket"] = 0
    save_and_report({**last_metrics, "step": state["step"], "optimizer_steps": engine.global_steps}, final=True)
    logger.close()


def _validation_sampler(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> ValidationSampler:
    settings = SampleSettings(config.sample_image, config.sample_prompt, config.sample_sections, config.sample_steps,
                              config.seed)
    return ValidationSampler(config.data, config.preset, settings, device, dtype)


def _validation_sample(engine, module: MemoryPackTransformer, sampler: ValidationSampler | None, output: str,
                       step: int, logger) -> None:
    """Rank 0 renders a validation video and queues it for MLflow (`samples/`); every rank takes part in
    gathering ZeRO-3's sharded weights first (a collective), the others then wait at the next one."""
    gathered = contextlib.nullcontext()
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gathered:
        if sampler is not None:
            started = time.perf_counter()
            path = sampler.render(module, Path(output) / SAMPLES_DIR / f"step_{step:06d}.mp4")
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
            (Path(folder) / CONFIG_NAME).write_text(json.dumps(asdict(module.config), indent=2))
    elif rank == 0:
        module.save_pretrained(folder)

"""Will my run fit? The per-GPU memory of a training run, computed before any weight exists.

Two parts, each from the thing that decides it rather than a rule of thumb:

* **Model states** (weights, gradients, optimizer states) follow from the parameter counts, the ZeRO
  stage, the precision and the offload settings. For mixed precision (bf16/fp16) the totals are
  DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
  `estimate_zero3_model_states_mem_needs`); the split into parts uses the multipliers those estimators
  are built from (2 bytes of 16-bit weights, 2 + 4 bytes of gradients, 4 + 8 bytes of fp32 master
  weights and Adam moments per parameter; ZeRO-3's estimator counts 18 bytes in all, i.e. 4 of
  gradients, plus 4 bytes per parameter of the largest layer, gathered whole). In fp32 (the CPU path) DeepSpeed's
  ZeRO optimizer still clones the fp32 partition it
  steps on, so states are 4 (weights) + 4 (gradients) + 4 (master) + 8 (Adam) bytes per parameter.
* **Activations** come from tracing one training forward of the real network on PyTorch's `meta`
  device: nothing is allocated, but every tensor autograd saves for backward is seen with its real shape
  and dtype. Attention is counted as a fused kernel (flash / memory-efficient attention, which saves q,
  k, v, the output and the log-sum-exp), as it runs on GPUs and in PyTorch's CPU SDPA — never the
  sequence² matrix. With the model's own gradient checkpointing the peak comes in backward (one block
  recomputed, its gradients and its backward's temporaries alive beside every block's inputs), so that
  figure is the live-bytes peak of a traced forward and backward on meta.

Meta tensors have no data, so the one data-dependent step (the backbone trims padded prompt tokens by
the mask's sum) is answered with the full prompt length: the plan is for prompts that fill the
tokenizer's budget, the largest case.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from mempack.model import Conditioning, MemoryPackTransformer, pack_history
from mempack.presets import Preset, get_preset, nearest_bucket

log = logging.getLogger(__name__)

GB = 10**9  # GPU sizes are sold in GB (80 GB H100/A100, 96 GB H20/GH200, 141 GB H200)
GIB = 2**30
GPU_SIZES_GB = (80, 96, 141)
SIGLIP_IMAGE_TOKENS = 729  # FramePack's SigLIP (so400m, patch 14 at 384 px): 27 × 27 tokens
DEFAULT_ASPECT = (480, 832)  # with no data to read: the preset's bucket nearest 480p landscape (F1's 480x832)
# What the CUDA caching allocator, NCCL buffers and the CUDA context take beside tensors (a margin, not
# a measurement: the fit column only says "yes" when this much is left over).
RUNTIME_MARGIN_BYTES = 4 * GB


# ----- model states -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParameterCounts:
    """What the ZeRO estimators need: all parameters, the trained ones, and the largest module's."""

    total: int
    trainable: int
    largest_layer: int

    @classmethod
    def of(cls, model: nn.Module) -> ParameterCounts:
        """Counted by tensor, not by storage: meta tensors all share data_ptr 0, which DeepSpeed's own
        `model_to_params` would collapse into one."""
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
        return cls(total, trainable, largest)


@dataclass
class ModelStates:
    """Bytes per GPU of weights, gradients and optimizer states."""

    params: int
    grads: int
    optimizer: int
    source: str  # which estimator gave the total

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer


def _gpu_layout(world: int) -> tuple[int, int]:
    """(GPUs per node, nodes) for DeepSpeed's estimators: 8-GPU nodes, or one node of `world`."""
    per_node = min(world, 8)
    return per_node, math.ceil(world / per_node)


def model_state_bytes(
    counts: ParameterCounts,
    world: int,
    zero_stage: int,
    mixed_precision: bool,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> ModelStates:
    """Per-GPU bytes of the model states of one rank.

    Frozen parameters (stage 2 trains only the head) hold their weights alone, partitioned under ZeRO-3.
    """
    n = world
    weight_bytes = 2 if mixed_precision else 4
    frozen = counts.total - counts.trainable
    frozen_bytes = frozen * weight_bytes // (n if zero_stage == 3 else 1)
    p = counts.trainable
    if not mixed_precision:
        # fp32 (the CPU path): ZeRO-1/2/3 still clone an fp32 partition for the optimizer to step on
        params = 4 * p // (n if zero_stage == 3 else 1)
        grads = 4 * p // (n if zero_stage >= 2 else 1)
        optimizer = (12 if zero_stage >= 1 else 8) * p // (n if zero_stage >= 1 else 1)
        if offload_optimizer:
            grads, optimizer = 0 if zero_stage >= 2 else grads, 0
        return ModelStates(
            params + frozen_bytes, grads, optimizer, "fp32: 4 weights + 4 grads + 4 master + 8 Adam bytes/param"
        )
    per_node, nodes = _gpu_layout(n)
    if zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, total, gather = estimate_zero3_model_states_mem_needs(
            p,
            counts.largest_layer,
            num_gpus_per_node=per_node,
            num_nodes=nodes,
            cpu_offload=offload_optimizer,
            cpu_offload_params=offload_params,
            zero_init=True,
        )
        if offload_optimizer and offload_params:
            params, grads, optimizer = gather, 0, 0
        elif offload_optimizer:
            params, grads, optimizer = gather + 2 * p // n, 0, 0
        else:
            params, grads, optimizer = gather + 2 * p // n, 4 * p // n, 12 * p // n
        source = "deepspeed estimate_zero3_model_states_mem_needs"
    elif zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, total = estimate_zero2_model_states_mem_needs(
            p, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload_optimizer
        )
        params, grads, optimizer = (2 * p, 0, 0) if offload_optimizer else (2 * p, 6 * p // n, 12 * p // n)
        source = "deepspeed estimate_zero2_model_states_mem_needs"
    else:  # ZeRO-1 / 0 have no DeepSpeed estimator: the same multipliers, gradients unpartitioned
        total = None
        params, grads, optimizer = 2 * p, 2 * p + 4 * p // n, 12 * p // (n if zero_stage == 1 else 1)
        source = f"16-bit weights + 16/32-bit grads + fp32 master and Adam (ZeRO-{zero_stage})"
    if total is not None and abs(params + grads + optimizer - total) > 8:
        raise AssertionError(f"state split {params + grads + optimizer} disagrees with DeepSpeed's {total}")
    return ModelStates(params + frozen_bytes, grads, optimizer, source)


# ----- activations -------------------------------------------------------------------------------
@dataclass
class ActivationTrace:
    """Bytes of one training step's activations (per rank)."""

    outside_blocks: int  # saved by embedders, ψ, final norm/projection, loss
    per_block: list[int] = field(default_factory=list)  # saved inside each transformer block
    checkpointed_peak: int = 0  # the peak of a forward and backward with gradient checkpointing (traced)
    sequence_tokens: int = 0  # tokens every attention layer sees (video + history + context)
    noisy_tokens: int = 0  # tokens of the section being denoised (what the loss covers)

    @property
    def without_checkpointing(self) -> int:
        return self.outside_blocks + sum(self.per_block)

    @property
    def with_checkpointing(self) -> int:
        return self.checkpointed_peak


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA as the fused kernels GPUs (and PyTorch's CPU SDPA) run: they save q, k, v, the output and the
    log-sum-exp, with or without a mask (the backbone's padded prompts at batch > 1, Memorize's salience
    bias: both small beside q, k, v); on meta PyTorch would otherwise decompose it into the math path and
    save a sequence² matrix per head."""
    return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, scale=scale)[0]


class _FusedAttention(TorchFunctionMode):
    """`_fused_sdpa` for every SDPA call: direct ones (diffusers' attention) through this mode, and those
    made inside torch's own functions (`nn.MultiheadAttention` in Memorize/Squeeze, which a function mode
    does not see: it is disabled while it handles the outer call) through `F.scaled_dot_product_attention`,
    swapped for the duration."""

    def __enter__(self):
        self._original = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _fused_sdpa
        return super().__enter__()

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._original
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is self._original and not kwargs.get("enable_gqa"):
            return _fused_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


class _FullPromptScalars(TorchDispatchMode):
    """Answers `.item()` on meta tensors (the backbone's prompt-length trim) with a fixed value."""

    def __init__(self, value: int):
        super().__init__()
        self.value = value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return self.value
        return func(*args, **(kwargs or {}))


@contextmanager
def _meta_boolean_masks():
    """Boolean-mask indexing on meta assumes every element is True (ψ's mask is: all tokens real)."""
    import torch.fx.experimental._config as fx_config

    old = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    try:
        yield
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = old


@contextmanager
def _meta_shapes(scalar: int):
    """What a meta trace of the network needs: boolean masks all True, `.item()` answered with `scalar` (the
    full prompt), attention as the fused kernels run it."""
    with _meta_boolean_masks(), _FullPromptScalars(scalar), _FusedAttention():
        yield


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def trace_activations(
    model: MemoryPackTransformer,
    preset: Preset,
    latent_hw: tuple[int, int],
    *,
    batch: int = 1,
    image_tokens: int = SIGLIP_IMAGE_TOKENS,
    prompt_tokens: int | None = None,
    memory_updates: int = 1,
) -> ActivationTrace:
    """Trace one teacher-forced training step (full history, ψ₀ and `memory_updates` ψ updates with their
    graphs: the back-propagation window, see `graphed_memory_updates`) on a `model` on the meta device.

    Without checkpointing the peak is the end of the forward: what autograd saves, each storage counted once.
    With the model's own checkpointing, a block's inputs are all that it saves, and the peak comes in
    backward, while one block is recomputed and back-propagated: its activations, its gradients in flight and
    the temporaries its backward makes (ψ's gated attention, `context_gate.py`, runs a second attention
    whose key/value gradients are scattered into full-size zeros). So that figure is the live-bytes peak of a
    real forward and backward with checkpointing on meta, with the gradients already allocated (they are model
    states, counted apart), not a sum of parts."""
    prompt_tokens = prompt_tokens or preset.max_prompt_tokens
    params = {_storage_key(p) for p in model.parameters()}
    trace = ActivationTrace(outside_blocks=0)
    seen: set[int] = set()
    current: list[int | None] = [None]
    blocks = list(model.backbone.transformer_blocks) + list(model.backbone.single_transformer_blocks)
    trace.per_block = [0] * len(blocks)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key in params or key in seen:
            return t
        seen.add(key)
        if current[0] is None:
            trace.outside_blocks += t.untyped_storage().nbytes()
        else:
            trace.per_block[current[0]] += t.untyped_storage().nbytes()
        return t

    def enter(i):
        def hook(module, args):
            current[0] = i
            if i == 0:
                trace.sequence_tokens = sum(a.shape[1] for a in args[:2])

        return hook

    def leave(module, args, output):
        current[0] = None

    handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(leave) for b in blocks]
    was_checkpointing = model.backbone.gradient_checkpointing
    trained = [p for p in model.parameters() if p.requires_grad]
    old_grads = [p.grad for p in trained]
    args = (model, preset, latent_hw, batch, image_tokens, prompt_tokens, memory_updates)
    try:
        model.backbone.gradient_checkpointing = False
        with (
            _meta_shapes(image_tokens + prompt_tokens),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.enable_grad(),
        ):
            _training_loss(*args)
        while handles:
            handles.pop().remove()
        model.backbone.enable_gradient_checkpointing()
        for p in trained:
            p.grad = torch.zeros_like(p)
        tracker = _LiveBytes(params | {_storage_key(p.grad) for p in trained})
        with _meta_shapes(image_tokens + prompt_tokens), tracker, torch.enable_grad():
            _training_loss(*args).backward()
        trace.checkpointed_peak = tracker.peak
    finally:
        for handle in handles:
            handle.remove()
        for p, g in zip(trained, old_grads, strict=True):
            p.grad = g
        if was_checkpointing:
            model.backbone.gradient_checkpointing = True
        else:
            model.backbone.disable_gradient_checkpointing()
    h, w = latent_hw
    p, pt = model.backbone.config.patch_size, model.backbone.config.patch_size_t
    trace.noisy_tokens = batch * (model.config.window // pt) * (h // p) * (w // p)
    return trace


def _training_loss(
    model: MemoryPackTransformer,
    preset: Preset,
    latent_hw: tuple[int, int],
    batch: int,
    image_tokens: int,
    prompt_tokens: int,
    memory_updates: int,
) -> torch.Tensor:
    """One teacher-forced training forward on random inputs of the run's shapes, to its loss."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    h, w = latent_hw
    c = preset.latent_channels

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    cond = Conditioning(
        rand(batch, prompt_tokens, preset.text_embed_dim),
        torch.ones(batch, prompt_tokens, dtype=torch.int64, device=device),
        rand(batch, preset.pooled_dim),
        rand(batch, image_tokens, preset.image_embed_dim),
        rand(batch, c, 1, h, w),
    )
    history = rand(batch, c, model.config.layout.context_frames, h, w)
    section = rand(batch, c, model.config.window, h, w)
    if memory_updates:
        memory = model.initial_memory(cond)
    else:  # ψ still has its updated size (structure A: the Memorize tokens), only without a graph
        with torch.no_grad():
            memory = model.update_memory(model.initial_memory(cond), rand(*section.shape))
    for _ in range(memory_updates):  # each update reads its own finished segment
        memory = model.update_memory(memory, rand(*section.shape))
    packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
    t = torch.full((batch,), 0.5, device=device)
    noise = rand(*section.shape)
    velocity = model(section * 0.5 + noise * 0.5, t, cond, packed, memory)
    return F.mse_loss(velocity.float(), (section - noise).float())


def graphed_memory_updates(stage: int, mode: str, window: int, clips_per_video: int | None) -> int:
    """ψ updates whose Memorize/Squeeze graphs are alive during a clip's forward (mempack/train/forcing.py).

    Stage-1 teacher forcing trains one sampled clip i and keeps the graphs of the `window` updates before
    it (all of them with window -1): the worst clip is the last of the longest video. When every clip
    trains (stage 2, stage-1 direct/student), ψ's graph is cut every `window` updates, so up to window − 1
    earlier updates are alive (the current clip's own update comes after its forward). With no prep
    output to read the longest video from, videos are assumed long enough to fill the window
    (window -1 with no data: `DEFAULT_MEMORY_GRAD_WINDOW`).
    """
    from mempack.train.forcing import DEFAULT_MEMORY_GRAD_WINDOW
    from mempack.train.step import samples_one_clip

    if window == 0:
        return 0
    earlier = None if clips_per_video is None else max(clips_per_video - 1, 0)
    if window < 0:
        return DEFAULT_MEMORY_GRAD_WINDOW if earlier is None else earlier
    reach = window if samples_one_clip(stage, mode) else window - 1
    return reach if earlier is None else min(reach, earlier)


def ema_bytes(counts: ParameterCounts, world: int, zero_stage: int) -> int:
    """The EMA shadow (mempack/train/ema.py): fp32 copies of this rank's trained parameters, its ZeRO-3
    partition or (ZeRO-0/1/2) all of them."""
    return 4 * counts.trainable // (world if zero_stage == 3 else 1)


class _LiveBytes(TorchDispatchMode):
    """The peak of bytes alive at once, counted as tensors are made and collected: what a no-grad forward
    (sampling) needs at its worst moment, on meta as on a real device. Parameters are not counted."""

    def __init__(self, exclude: set[int]):
        super().__init__()
        self.exclude, self.refs, self.live, self.peak = exclude, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = _storage_key(t)
                if key in self.exclude:
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.live += t.untyped_storage().nbytes()
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key, t.untyped_storage().nbytes())
        return out

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= nbytes


def trace_sampling(
    model: MemoryPackTransformer,
    preset: Preset,
    latent_hw: tuple[int, int],
    *,
    image_tokens: int = SIGLIP_IMAGE_TOKENS,
    prompt_tokens: int | None = None,
) -> int:
    """Peak bytes of rendering a validation video with the trained model (mempack/train/validation.py):
    the conditioning embeddings, a full history, one no-grad denoising forward and one ψ update, as
    `mempack.sampling.generate` runs them section after section (batch 1; F1's guidance is distilled, so
    one forward per step). The encoders and the VAE are not on the training device in that design."""
    from mempack import flow

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    h, w = latent_hw
    c = preset.latent_channels
    prompt_tokens = prompt_tokens or preset.max_prompt_tokens
    tracker = _LiveBytes({_storage_key(p) for p in model.parameters()})
    was_training = model.training
    model.eval()
    try:
        with _meta_shapes(image_tokens + prompt_tokens), tracker, torch.no_grad():
            cond = Conditioning(
                torch.randn(1, prompt_tokens, preset.text_embed_dim, device=device, dtype=dtype),
                torch.ones(1, prompt_tokens, dtype=torch.int64, device=device),
                torch.randn(1, preset.pooled_dim, device=device, dtype=dtype),
                torch.randn(1, image_tokens, preset.image_embed_dim, device=device, dtype=dtype),
                torch.randn(1, c, 1, h, w, device=device, dtype=torch.float32),
            )
            history = torch.randn(1, c, model.config.layout.context_frames, h, w, device=device)
            memory = model.initial_memory(cond)
            packed = pack_history(cond.start_latent, history, model.config.layout, model.config.rope)
            x = torch.randn(1, c, model.config.window, h, w, device=device)
            v = model(x, torch.tensor([0.5], device=device), cond, packed, memory, 10.0)
            x = flow.euler_step(x, v.float(), 0.5, 0.75)
            del v
            memory = model.update_memory(memory, x)
            del memory, packed, x, history, cond
    finally:
        model.train(was_training)
    return tracker.peak


# ----- the plan --------------------------------------------------------------------------------------
@dataclass
class MemoryPlan:
    """Per-GPU memory of one run, and whether it fits the usual GPU sizes."""

    preset: str
    stage: int
    world: int
    zero_stage: int
    dtype: str
    pixel_size: tuple[int, int]
    latent_size: tuple[int, int]
    batch: int
    counts: ParameterCounts
    states: ModelStates
    activations: ActivationTrace
    gradient_checkpointing: bool
    clips_per_step: int  # sections trained per optimizer step and worker
    tokens_per_step: int  # noisy latent tokens per optimizer step, all workers
    memory_updates: int = 1  # ψ updates back-propagated through (the memory_grad_window's graphs)
    ema: int = 0  # bytes of the EMA shadow (ema_decay > 0)
    validation: int = 0  # peak bytes of rendering a validation video (sample_every > 0), between steps

    def total(self, checkpointing: bool) -> int:
        """States and the EMA live all run; validation renders between steps, when the step's activations
        are freed, so the larger of the two sets the peak."""
        act = self.activations.with_checkpointing if checkpointing else self.activations.without_checkpointing
        return self.states.total + self.ema + max(act, self.validation)

    def fits(self, checkpointing: bool, gpu_gb: int) -> bool:
        return self.total(checkpointing) + RUNTIME_MARGIN_BYTES <= gpu_gb * GB

    def to_dict(self) -> dict:
        out = {
            "preset": self.preset,
            "stage": self.stage,
            "workers": self.world,
            "zero_stage": self.zero_stage,
            "dtype": self.dtype,
            "pixel_size": list(self.pixel_size),
            "latent_size": list(self.latent_size),
            "batch_per_worker": self.batch,
            "parameters": self.counts.total,
            "trainable_parameters": self.counts.trainable,
            "params_bytes": self.states.params,
            "grads_bytes": self.states.grads,
            "optimizer_bytes": self.states.optimizer,
            "states_source": self.states.source,
            "activations_bytes": self.activations.without_checkpointing,
            "activations_checkpointed_bytes": self.activations.with_checkpointing,
            "sequence_tokens": self.activations.sequence_tokens,
            "tokens_per_step": self.tokens_per_step,
            "gradient_checkpointing": self.gradient_checkpointing,
            "memory_updates": self.memory_updates,
            "ema_bytes": self.ema,
            "validation_bytes": self.validation,
        }
        for ckpt in (False, True):
            key = "checkpointed" if ckpt else "plain"
            out[f"total_{key}_bytes"] = self.total(ckpt)
            out[f"fits_{key}"] = {str(g): self.fits(ckpt, g) for g in GPU_SIZES_GB}
        return out


def latent_size(preset: Preset, pixel_size: tuple[int, int]) -> tuple[int, int]:
    h, w = pixel_size
    s = preset.vae_spatial
    if h % s or w % s:
        raise ValueError(f"{h}x{w} is not a multiple of the VAE's {s}x spatial compression")
    return h // s, w // s


def data_shapes(root: str | Path) -> tuple[tuple[int, int] | None, int | None]:
    """(largest latent (h, w), most clips per video) of a prep output, read from its small columns
    only; (None, None) when there is no readable prep output yet (planning before prep)."""
    import pyarrow.dataset as pads

    root = Path(root)
    try:
        shapes = (
            pads.dataset(root / "clips", format="parquet", partitioning="hive")
            .to_table(columns=["latents_shape"])
            .column("latents_shape")
            .to_pylist()
        )
        clips = (
            pads.dataset(root / "videos", format="parquet", partitioning="hive")
            .to_table(columns=["num_clips"])
            .column("num_clips")
            .to_pylist()
        )
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        log.info("no prep output to size the plan from at %s (%s)", root, err)
        return None, None
    if not shapes:
        return None, None
    h, w = max((int(s[-2]), int(s[-1])) for s in shapes)
    return (h, w), max(int(n) for n in clips) if clips else None


# plan_run's traces by what they depend on (the model's config and trained parameters, dtype and shapes),
# not by the run's workers, ZeRO stage or EMA: several plans in one process (the shipped-commands check,
# bench/plan_f1.py) trace F1 once per shape
_TRACES: dict[tuple, object] = {}


def _traced(key: tuple, trace):
    """`trace()`'s result, computed once per `key` in this process."""
    if key not in _TRACES:
        _TRACES[key] = trace()
    return _TRACES[key]


def plan_run(
    config,
    ds_config: dict,
    pixel_size: tuple[int, int] | None = None,
    *,
    clips_per_video: int | None = None,
    batch: int | None = None,
    image_tokens: int | None = None,
) -> MemoryPlan:
    """The plan of a `TrainConfig` run with its resolved DeepSpeed config (what `deepspeed_config.resolve`
    returns): its backbone, ψ's back-propagation window, batch, EMA and validation videos.
    `clips_per_video` is the data's longest video (None: unknown, the window is assumed full); stage 2
    makes one optimizer step per video."""
    model = _meta_model(config)
    preset = get_preset(model.config.preset)
    batch = batch or getattr(config, "batch_size", 1)
    pixel_size = tuple(pixel_size or nearest_bucket(preset.name, *DEFAULT_ASPECT))
    latent_hw = latent_size(preset, pixel_size)
    mixed = bool(ds_config.get("bf16", {}).get("enabled")) or bool(ds_config.get("fp16", {}).get("enabled"))
    dtype = torch.bfloat16 if mixed else torch.float32
    zero = ds_config.get("zero_optimization", {})
    zero_stage = int(zero.get("stage", 0))
    offload_optimizer = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
    offload_params = zero.get("offload_param", {}).get("device", "none") == "cpu"
    model = model.to(dtype)
    model.set_trainable(config.resolved_trainable())
    counts = ParameterCounts.of(model)
    states = model_state_bytes(counts, config.num_workers, zero_stage, mixed, offload_optimizer, offload_params)
    if image_tokens is None:
        image_tokens = SIGLIP_IMAGE_TOKENS if preset.image_embed_dim == 1152 else 4
    forcing = config.resolved_forcing()
    updates = graphed_memory_updates(config.stage, forcing.mode, forcing.memory_grad_window, clips_per_video)
    if not model.uses_memory:
        updates = 0
    trained = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    activations = _traced(  # one trace per model and shape: F1's takes ~30 s; commands differ mostly elsewhere
        (repr(model.config), str(dtype), trained, latent_hw, batch, image_tokens, updates),
        lambda: trace_activations(
            model, preset, latent_hw, batch=batch, image_tokens=image_tokens, memory_updates=updates
        ),
    )
    from mempack.train.step import clips_trained_per_video

    clips = clips_trained_per_video(config.stage, forcing.mode, clips_per_video or 1)
    ema = ema_bytes(counts, config.num_workers, zero_stage) if config.ema_decay > 0 else 0
    validation = 0
    if config.sample_every > 0:
        validation = _traced(
            ("sampling", repr(model.config), str(dtype), latent_hw, image_tokens),
            lambda: trace_sampling(model, preset, latent_hw, image_tokens=image_tokens),
        )
    return MemoryPlan(
        preset.name,
        config.stage,
        config.num_workers,
        zero_stage,
        str(dtype).replace("torch.", ""),
        pixel_size,
        latent_hw,
        batch,
        counts,
        states,
        activations,
        config.gradient_checkpointing,
        clips,
        activations.noisy_tokens * clips * config.num_workers,
        updates,
        ema,
        validation,
    )


def _meta_model(config) -> MemoryPackTransformer:
    """The run's network on the meta device: the preset's shapes with the run's architecture choices.
    Stage 2 (and --pretrained exports) keep the export's own choices, read from its mempack.json."""
    from mempack.model.memorypack import MemoryPackConfig

    preset, overrides = config.preset, config.model.model_overrides()
    source = config.init if config.stage == 2 else config.pretrained
    if source and MemoryPackConfig.saved_in(source):
        overrides = asdict(MemoryPackConfig.load(source))
        preset = overrides.pop("preset")
    return MemoryPackTransformer.from_preset(preset, device="meta", seed=None, **overrides)


def format_plan(plan: MemoryPlan) -> str:
    """The table `train.py --plan` prints."""

    def gib(b):
        return f"{b / GIB:8.2f} GiB" if b >= GIB else f"{b / 2**20:8.1f} MiB"

    act, ck = plan.activations.without_checkpointing, plan.activations.with_checkpointing
    lines = [
        f"memory plan: preset {plan.preset}, stage {plan.stage}, {plan.world} worker(s), ZeRO-{plan.zero_stage}, "
        f"{plan.dtype}, {plan.pixel_size[0]}x{plan.pixel_size[1]} px "
        f"(latent {plan.latent_size[0]}x{plan.latent_size[1]}), "
        f"batch {plan.batch}/worker",
        f"  parameters        {plan.counts.total:,} ({plan.counts.trainable:,} trained)",
        f"  weights           {gib(plan.states.params)}  per GPU",
        f"  gradients         {gib(plan.states.grads)}",
        f"  optimizer states  {gib(plan.states.optimizer)}   ({plan.states.source})",
        f"  EMA shadow        {gib(plan.ema)}" + ("" if plan.ema else "   (off: --ema-decay)"),
        f"  activations       {gib(act)}  without gradient checkpointing "
        f"(batch {plan.batch}, {plan.memory_updates} ψ update(s) back-propagated)",
        f"                    {gib(ck)}  with gradient checkpointing",
        f"  validation video  {gib(plan.validation)}"
        + ("  between steps, instead of the activations" if plan.validation else "   (off: --sample-every)"),
        f"  attention tokens  {plan.activations.sequence_tokens:,} per section; "
        f"{plan.tokens_per_step:,} noisy latent tokens per optimizer step ({plan.clips_per_step} section(s)/worker)",
        f"  total per GPU     {gib(plan.total(False))} plain, {gib(plan.total(True))} checkpointed "
        f"(+{RUNTIME_MARGIN_BYTES / GB:.0f} GB runtime margin to fit)",
    ]
    for ckpt in (False, True):
        fits = ", ".join(f"{g} GB {'yes' if plan.fits(ckpt, g) else 'no'}" for g in GPU_SIZES_GB)
        chosen = " <- this run" if ckpt == plan.gradient_checkpointing else ""
        lines.append(f"  fits ({'checkpointed' if ckpt else 'plain':>12}): {fits}{chosen}")
    return "\n".join(lines)

"""Fit the pipeline on the GPU a user owns: diffusers' own offloading and layerwise casting hooks.

Four placements, each diffusers' hook and nothing of ours on the hot path:

* `none`: every component on the device (the fastest; 80 GB for framepack-f1 in bf16).
* `model`: `enable_model_cpu_offload`: one whole component on the device at a time, moved in when its
  `forward` (or the VAE's `encode`/`decode`) is called. The text encoders, SigLIP and the VAE's encode
  run once per video and leave the device as soon as the next component comes in; the transformer then
  stays for every section. The section decode brings the VAE back, and the chain in
  `MemoryPackPipeline.model_cpu_offload_seq` decides what that pushes out: the VAE comes *before* the
  transformer in it, so a decode evicts only SigLIP (already gone) and the next section's first step
  evicts the VAE (~0.5 GB), never the 26 GB transformer (diffusers' F1 order, `transformer->vae`, would
  move the transformer out and in again for every section).
* `group`: `enable_group_offload`: the transformer streamed one block at a time (`block_level`, the next
  block prefetched on a CUDA stream), every other component leaf by leaf (`leaf_level`, which follows
  the VAE's `decoder` and SigLIP however they are called).
* `sequential`: `enable_sequential_cpu_offload`: every leaf module moved in for its own call (least
  memory, slowest).

ψ (SemanticPack) is called between the transformer's forwards, not inside them, so no hook would move
it: it is excluded from every offload and placed on the device the transformer computes on (its ~55 M
parameters at full size are small next to the 13 B backbone).

`weights_dtype="fp8"`: `enable_layerwise_casting` stores the transformer's weights in float8 (e4m3) and
casts each layer up to the compute dtype for its own call: the backbone's weights take half the memory
of bf16. The numbers differ from the plain run by exactly the rounding of the stored weights: a plain
run whose weights were rounded through float8 first gives the same frames (tests/test_offload.py).
Norms and the patch/context embedders stay in the compute dtype (the model's own
`_skip_layerwise_casting_patterns`).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "group", "sequential")
WEIGHTS_DTYPES = ("auto", "fp8")
FP8_STORAGE = torch.float8_e4m3fn  # e4m3: more mantissa than e5m2, the usual choice for weights
GROUP_BLOCKS_PER_GROUP = 1  # `group`: transformer blocks on the device at once (+1 prefetched on CUDA)


def check_memory_settings(offload: str, weights_dtype: str) -> None:
    """One clear line for an unknown mode or storage dtype."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {weights_dtype!r}")


def enable_fp8_weights(pipe, compute_dtype: torch.dtype | None = None) -> None:
    """The transformer's weights stored in float8, each layer cast to `compute_dtype` for its call."""
    transformer = pipe.transformer
    compute_dtype = compute_dtype or transformer.dtype
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=compute_dtype)


def apply_memory_settings(pipe, device: torch.device | str, offload: str = "none", weights_dtype: str = "auto") -> None:
    """Place a pipeline (built on the CPU) for generation on `device` with an offload mode.

    `device` is where the computation runs; with `offload="none"` every component moves there. Any
    other mode keeps the weights on the CPU and lets diffusers' hooks bring them in. `device="cpu"` is
    allowed (diffusers accepts it): the hooks are installed and run, which is how the CPU tests check
    that each mode gives the plain run's frames.
    """
    check_memory_settings(offload, weights_dtype)
    device = torch.device(device)
    if weights_dtype == "fp8":  # before any offload hook: casting wraps the layers the offload then moves
        enable_fp8_weights(pipe)
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        _enable_group_offload(pipe, device)
    if pipe.semantic_pack is not None:  # ψ is called outside the transformer's forward: no hook moves it
        pipe.semantic_pack.to(device)
    log.info("placement: offload=%s, weights=%s, compute on %s", offload, weights_dtype, device)


def _enable_group_offload(pipe, device: torch.device) -> None:
    """Transformer block by block (prefetching the next block on a CUDA stream), the rest leaf by leaf.

    Component by component, not `pipe.enable_group_offload(exclude_modules=...)`: that moves what it
    excludes to the device, 26 GB of transformer on a 24 GB GPU."""
    from diffusers.hooks import apply_group_offloading

    stream, cpu = device.type == "cuda", torch.device("cpu")
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module) or name == "semantic_pack":
            continue
        if name == "transformer":
            apply_group_offloading(
                component,
                onload_device=device,
                offload_device=cpu,
                offload_type="block_level",
                num_blocks_per_group=GROUP_BLOCKS_PER_GROUP,
                use_stream=stream,
            )
        else:
            apply_group_offloading(
                component, onload_device=device, offload_device=cpu, offload_type="leaf_level", use_stream=stream
            )

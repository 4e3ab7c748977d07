"""ZeRO-3 at full size: build partitioned, load pretrained weights into the partitions, export by module.

At 12.9 B parameters a full copy of the model is 26 GB in bf16 (52 GB in fp32). Building it whole on
every rank before DeepSpeed shards it, or gathering it whole on every rank to export it, multiplies
that by the ranks of a node and runs the host or the GPUs out of memory. So:

* **build**: the model is constructed inside `deepspeed.zero.Init`, in the training dtype: each
  module's parameters are partitioned as soon as the module exists, so a rank never holds more than
  one module in full (plus its 1/N share of the rest);
* **load**: pretrained weights go into the partitions module by module — every rank gathers one
  module's parameters, rank 0 fills them from the safetensors files (read tensor by tensor, memory
  mapped), and DeepSpeed re-partitions them on the way out;
* **export**: the same walk in reverse — gather one module, rank 0 copies it to host memory and
  writes safetensors shards of bounded size (diffusers' sharded layout with its index file), release.

All ranks must walk the modules in the same order: every gather is a collective.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' names, so `from_pretrained` reads them
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SHARD_BYTES = 2 * 10**9  # rank 0 holds at most one shard (+ one module) of the export in host memory


def training_dtype(ds_config: dict | None) -> torch.dtype:
    """The dtype DeepSpeed trains in: bf16 / fp16 when the config enables them, else fp32."""
    ds_config = ds_config or {}
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def is_zero3(ds_config: dict | None) -> bool:
    return bool(ds_config) and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3


def partitioned_construction(ds_config: dict | None):
    """`deepspeed.zero.Init` for a ZeRO-3 config (parameters are partitioned as modules are built), a
    no-op otherwise. torch.distributed must be initialised (Ray Train has done it in its workers)."""
    if not is_zero3(ds_config):
        return nullcontext()
    import deepspeed

    # no dtype argument: Init then takes bf16/fp16/fp32 from the config, as the engine does (given a dtype
    # explicitly, DeepSpeed 0.19's Init falls back to bf16 on CPU accelerators whatever was asked)
    return deepspeed.zero.Init(config_dict_or_path=ds_config)


def register_directly_used_parameters(model: nn.Module) -> int:
    """Tell ZeRO-3 about parameters a module reads without calling their owner's forward.

    ZeRO-3 gathers a module's parameters in a hook before that module's forward. `nn.MultiheadAttention`
    (SemanticPack's Memorize pooling and Squeeze) passes `out_proj.weight`/`bias` straight to
    `F.multi_head_attention_forward`, never calling `out_proj`, so once those are partitioned (above
    DeepSpeed's persistence threshold: every real-size SemanticPack) the forward sees empty tensors.
    Registering them as external parameters of the attention module makes its hook gather them too.
    """
    import deepspeed

    count = 0
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            for p in module.out_proj.parameters():
                deepspeed.zero.register_external_parameter(module, p)
                count += 1
    return count


@contextmanager
def _gathered(params: list[nn.Parameter], modifier_rank: int | None):
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def _is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


class SafetensorsFolder:
    """The tensors of a diffusers weights folder (one file or shards + index), opened lazily."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: folder / f for name, f in weight_map.items()}
        else:
            single = folder / WEIGHTS_NAME
            if not single.is_file():
                raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {folder}")
            with safe_open(single, "pt") as f:
                files = {name: single for name in f.keys()}
        self.files = files
        self._open: dict[Path, object] = {}
        self._safe_open = safe_open

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        path = self.files[name]
        if path not in self._open:
            self._open[path] = self._safe_open(path, "pt")
        return self._open[path].get_tensor(name)


def load_into_partitions(model: nn.Module, sources: dict[str, Path], rank: int) -> int:
    """Fill `model`'s (possibly partitioned) parameters and buffers from safetensors folders.

    `sources` maps a submodule prefix ("backbone.", "semantic_pack.") to the folder holding that part's
    weights, keyed without the prefix. Parts without a source keep their initialisation. Returns the
    number of tensors loaded. Missing or misshapen tensors are an error on every rank.
    """
    folders = {prefix: SafetensorsFolder(Path(folder)) for prefix, folder in sources.items()}
    loaded = 0
    for module_name, module in model.named_modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        own = list(module.named_parameters(recurse=False)) + [
            (n, b) for n, b in module.named_buffers(recurse=False) if n not in skip
        ]
        if not own:
            continue
        full = f"{module_name}." if module_name else ""
        prefix = next((p for p in folders if full.startswith(p)), None)
        if prefix is None:
            continue
        folder = folders[prefix]
        keys = {name: full[len(prefix) :] + name for name, _ in own}
        missing = [k for k in keys.values() if k not in folder]
        if missing:
            raise KeyError(f"pretrained weights lack {missing[:3]} (part {prefix.rstrip('.')})")
        params = [t for _, t in own if isinstance(t, nn.Parameter)]
        partitioned = [p for p in params if _is_partitioned(p)]
        with _gathered(partitioned, modifier_rank=0) if partitioned else nullcontext():
            for name, tensor in own:
                # partitioned parameters: rank 0 writes, DeepSpeed broadcasts on release; everything
                # else (ZeRO-1/2, buffers) is filled on every rank
                if _is_partitioned(tensor) and rank != 0:
                    continue
                value = folder.get(keys[name])
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"{keys[name]}: pretrained shape {tuple(value.shape)} != model {tuple(tensor.shape)}"
                    )
                with torch.no_grad():
                    tensor.data.copy_(value.to(tensor.dtype))
                loaded += 1
    return loaded


class _ShardWriter:
    """Rank 0's side of the export: tensors in, safetensors shards of at most SHARD_BYTES out."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor] | list[str]] = []
        self.total = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.detach().to("cpu", copy=True).contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.folder / f"part-{len(self.shards):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append(sorted(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        """Name the shards as diffusers does (one file unsharded, else -0000i-of-0000n + index)."""
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        names = (
            [WEIGHTS_NAME]
            if n == 1
            else [WEIGHTS_NAME.replace(".safetensors", f"-{i + 1:05d}-of-{n:05d}.safetensors") for i in range(n)]
        )
        weight_map = {}
        for i, (keys, name) in enumerate(zip(self.shards, names, strict=True)):
            (self.folder / f"part-{i:05d}.tmp").rename(self.folder / name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            (self.folder / INDEX_NAME).write_text(
                json.dumps(
                    {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2
                )
            )


def export_by_module(parts: dict[str, nn.Module], folder: Path, rank: int, max_shard_bytes: int | None = None) -> None:
    """Write each part (`{"transformer": backbone, "semantic_pack": sp}`) as diffusers weights + config
    under `folder/<part>`, gathering one module at a time. Every rank calls this; rank 0 writes."""
    for part, module in parts.items():
        writer = _ShardWriter(folder / part, max_shard_bytes or SHARD_BYTES) if rank == 0 else None
        for module_name, sub in module.named_modules():
            own = list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False))
            if not own:
                continue
            partitioned = [t for _, t in own if isinstance(t, nn.Parameter) and _is_partitioned(t)]
            with _gathered(partitioned, modifier_rank=None) if partitioned else nullcontext():
                if writer is not None:
                    for name, tensor in own:
                        if name in getattr(sub, "_non_persistent_buffers_set", set()):
                            continue
                        writer.add(f"{module_name}.{name}" if module_name else name, tensor)
        if writer is not None:
            writer.close()
            module.save_config(folder / part)

"""One GPU check of the real road: F1-width training under ZeRO-3, the real VAE's start latent, a 480x832 section.

Written before there was a GPU to run it on, and run on CPU at a tiny size by tests/test_gpu_check.py so that
it cannot rot. On one GPU it takes a few minutes:

1. **stage-1 step under ZeRO-3** (one rank, bf16; fp32 on CPU, as training runs there): a few blocks of the
   real `framepack-f1` config (random weights) built by the training loop's own `build_model` and engine,
   one teacher-forced step at 480x832 through `video_clip_steps`, with and without gradient checkpointing.
   Peak memory (allocated tensors, above what was allocated before the build) beside the planner's figure
   (`mempack.train.plan`), seconds per step (one warm-up step first) and MFU (FLOPs counted by torch on the
   plain step, the model's own, never the recomputation; the peak is the GPU's dense bf16 figure,
   `--peak-tflops` to override).
2. **start latent** with the real VAE config (`--vae DIR` for real weights; else random weights of
   diffusers' default `AutoencoderKLHunyuanVideo`, which is HunyuanVideo's config): frame 0 encoded alone
   (what inference and, since schema version 3, prep store) against latent 0 of the video's one causal
   stream (what prep stored before), next to the latent's std.
3. **one section of generation** at 480x832 with the whole `framepack-f1` model (random bf16 weights, ψ on):
   seconds per generated frame (36 frames per section) at `--steps` sampling steps, after a one-step warm-up.

`--tiny` (automatic without CUDA) runs the same code on the `tiny` presets at a small size.

    python bench/gpu_check.py                 # on one GPU: prints a table, writes bench/results/gpu_check.json
    python bench/gpu_check.py --tiny          # the CPU smoke run the test makes
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
REAL_SIZE = (480, 832)
TINY_SIZE = (32, 32)
# dense bf16 peak FLOP/s by GPU name (NVIDIA's datasheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H20": 148e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


@dataclass
class Options:
    """The check's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    tiny: bool = False  # tiny presets at a small size (automatic without CUDA)
    double_layers: int = 2  # dual-stream blocks of the ZeRO-3 model (F1: 20)
    single_layers: int = 2  # single-stream blocks of the ZeRO-3 model (F1: 40)
    steps: int = 25  # sampling steps of the generated section (F1's default)
    vae: str | None = None  # a folder with real HunyuanVideo VAE weights (diffusers layout)
    peak_tflops: float | None = None  # the GPU's dense bf16 TFLOP/s for MFU (default: by name)
    json: str = str(RESULTS / "gpu_check.json")

    def __post_init__(self) -> None:
        if min(self.double_layers, self.single_layers) < 1 or self.steps < 1:
            raise ValueError("--double-layers, --single-layers and --steps must be >= 1")


def parse_args(argv=None):
    from mempack.config import parse_config

    return parse_config(Options, argv, __doc__.splitlines()[0])


# ----- environment ---------------------------------------------------------------------------------
def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _init_one_rank(cuda: bool) -> None:
    """A one-rank process group, as Ray Train gives each worker (NCCL on a GPU, gloo on CPU)."""
    import deepspeed
    import torch

    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if cuda:
        torch.cuda.set_device(0)
    else:  # the shared-memory allreduce op costs a C++ build and only speeds up CPU collectives
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed("nccl" if cuda else "gloo", auto_mpi_discovery=False)


class Memory:
    """Peak memory of a phase above what was allocated before it: CUDA's allocator, or the RSS on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            from mempack.train import rss

            rss.reset_peak()
            self.base = rss.current_bytes()

    def peak(self) -> int:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        from mempack.train import rss

        return rss.peak_bytes() - self.base


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_flops(device, override_tflops: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 FLOP/s (None where unknown: MFU is then not reported) and its name."""
    import torch

    if device.type != "cuda":
        return (override_tflops * 1e12 if override_tflops else None), "cpu"
    name = torch.cuda.get_device_name(0)
    if override_tflops:
        return override_tflops * 1e12, name
    known = [flops for key, flops in PEAK_BF16.items() if key in name]
    return (max(known) if known else None), name


# ----- inputs ------------------------------------------------------------------------------------
def random_inputs(preset, latent_hw: tuple[int, int], device, dtype, image_tokens: int, seed: int = 0):
    """Conditioning (a prompt filling the token budget, as the planner assumes) and two sections of clips."""
    import torch

    from mempack.model import Conditioning

    g = torch.Generator().manual_seed(seed)
    h, w = latent_hw

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    cond = Conditioning(
        rand(1, preset.max_prompt_tokens, preset.text_embed_dim),
        torch.ones(1, preset.max_prompt_tokens, dtype=torch.int64, device=device),
        rand(1, preset.pooled_dim),
        rand(1, image_tokens, preset.image_embed_dim),
        rand(1, preset.latent_channels, 1, h, w),
    )
    clips = rand(2, preset.latent_channels, 9, h, w)
    return cond, clips


def _image_tokens(preset) -> int:
    from mempack.train.plan import SIGLIP_IMAGE_TOKENS

    return SIGLIP_IMAGE_TOKENS if preset.image_embed_dim == 1152 else 4


def scaled_f1(double_layers: int, single_layers: int, tiny: bool):
    """`framepack-f1` (or `tiny`) with fewer blocks, registered so the planner can look it up by name."""
    from mempack.presets import PRESETS, get_preset

    base = get_preset("tiny" if tiny else "framepack-f1")
    transformer = {**base.transformer, "num_layers": double_layers, "num_single_layers": single_layers}
    preset = dataclasses.replace(base, name=f"{base.name}-{double_layers}x{single_layers}", transformer=transformer)
    PRESETS.setdefault(preset.name, preset)
    return preset


# ----- 1. one stage-1 step under ZeRO-3 ------------------------------------------------------------
def zero3_step(
    preset, pixel_size: tuple[int, int], checkpointing: bool, device, peak: float | None, flops: float | None = None
) -> dict:
    """Build, engine and two teacher-forced steps (warm-up, then timed) of `preset` under ZeRO-3, bf16."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mempack.train import loop
    from mempack.train.config import DistributedConfig, TrainConfig
    from mempack.train.deepspeed_config import resolve
    from mempack.train.forcing import ForcingConfig, video_clip_steps
    from mempack.train.plan import latent_size, plan_run

    cuda = device.type == "cuda"
    _init_one_rank(cuda)
    config = TrainConfig(
        stage=1,
        preset=preset.name,
        distributed=DistributedConfig(zero_stage=3, num_workers=1, use_gpu=cuda, gradient_checkpointing=checkpointing),
    )
    ds = resolve(config.distributed, config.optim)
    # on a GPU the run's bf16 (resolve's GPU default); on CPU resolve's fp32 (CPU kernels lack bf16 avg_pool3d)
    dtype = torch.bfloat16 if cuda else torch.float32
    plan = plan_run(config, ds, pixel_size, image_tokens=_image_tokens(preset))
    memory = Memory(device)
    memory.start()
    model = loop.build_model(config, ds, 0)
    engine = loop._init_engine(model, ds, cuda, config.optim.memory_lr)
    module = engine.module
    if checkpointing:
        module.backbone.enable_gradient_checkpointing()
    cond, clips = random_inputs(preset, latent_size(preset, pixel_size), device, dtype, _image_tokens(preset))
    g = torch.Generator().manual_seed(1)  # the loop draws noise and times on the CPU

    def step() -> float:
        for s in video_clip_steps(module, clips, cond, ForcingConfig(), generator=g, only_clip=1):
            engine.backward(s.loss)
            engine.step()
            return float(s.loss.detach())
        raise RuntimeError("video_clip_steps yielded no step")

    counter = FlopCounterMode(display=False)
    with counter:  # the warm-up step, counted (kernels chosen, buffers allocated)
        loss = step()
    counted = counter.get_total_flops()
    _sync(device)
    began = time.perf_counter()
    loss = step()
    _sync(device)
    seconds = time.perf_counter() - began
    measured = memory.peak()
    model_flops = flops if flops is not None else counted  # the checkpointed step's count holds the recompute
    out = {
        "gradient_checkpointing": checkpointing,
        "parameters": plan.counts.total,
        "loss": loss,
        "dtype": plan.dtype,
        "peak_bytes": measured,
        "plan_bytes": plan.total(checkpointing),
        "plan_states_bytes": plan.states.total,
        "plan_activation_bytes": plan.total(checkpointing) - plan.states.total,
        "seconds_per_step": seconds,
        "counted_flops": counted,
        "model_flops": model_flops,
        "mfu": model_flops / seconds / peak if peak else None,
        "sequence_tokens": plan.activations.sequence_tokens,
    }
    engine = module = model = None  # free the engine before the next part (step() above holds them by name)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


# ----- 2. the start latent ---------------------------------------------------------------------------
def synthetic_video(frames: int, height: int, width: int):
    """uint8 [T, H, W, 3]: a smooth background and a disk crossing it, so later frames differ from frame 0."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        cx, cy = width * (0.2 + 0.6 * t / max(frames - 1, 1)), height * 0.5
        disk = ((x - cx) ** 2 + (y - cy) ** 2 < (0.15 * min(height, width)) ** 2).astype(np.float32)
        video[t, ..., 0] = np.clip(255 * x / width * (1 - disk) + 230 * disk, 0, 255)
        video[t, ..., 1] = np.clip(255 * y / height * (1 - disk) + 40 * disk, 0, 255)
        video[t, ..., 2] = np.clip(128 + 60 * np.sin(x / 17 + t / 5) * (1 - disk), 0, 255)
    return video


def start_latent_check(pixel_size: tuple[int, int], device, tiny: bool, vae_dir: str | None) -> dict:
    """Frame 0 encoded alone (training's and inference's start latent) against the stream's latent 0."""
    import torch

    from mempack.encoders import VideoEncoders
    from mempack.presets import get_preset

    if tiny:
        encoders = VideoEncoders.build("tiny", device=device)
        source = "tiny preset's random VAE"
    else:
        from diffusers import AutoencoderKLHunyuanVideo

        if vae_dir:
            vae, source = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir, torch_dtype=torch.float32), vae_dir
        else:
            torch.manual_seed(0)
            vae, source = AutoencoderKLHunyuanVideo(), "HunyuanVideo VAE config, random weights"
        encoders = VideoEncoders(get_preset("framepack-f1"), {"vae": vae}, device, torch.float32)
    video = synthetic_video(1 + 36, *pixel_size)  # one section's stream: 37 frames
    memory = Memory(device)
    memory.start()
    began = time.perf_counter()
    stream = encoders.encode_video(video)[0]
    _sync(device)
    stream_seconds = time.perf_counter() - began
    alone = encoders.encode_image_latent(video[:1])[0]
    gap = (stream[:, :1] - alone).abs()
    out = {
        "vae": source,
        "frames": len(video),
        "max_abs_gap": gap.max().item(),
        "mean_abs_gap": gap.mean().item(),
        "latent_std": stream.std().item(),
        "stream_encode_seconds": stream_seconds,
        "peak_bytes": memory.peak(),
    }
    del encoders
    gc.collect()
    return out


# ----- 3. one section of generation -------------------------------------------------------------------
def generation_section(pixel_size: tuple[int, int], steps: int, device, tiny: bool) -> dict:
    """The whole model (random weights, ψ on) generating one section: seconds per generated frame."""
    import torch

    from mempack.model import MemoryPackTransformer
    from mempack.presets import get_preset
    from mempack.sampling import GenerationConfig, generate
    from mempack.train.plan import latent_size

    preset = get_preset("tiny" if tiny else "framepack-f1")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    memory = Memory(device)
    memory.start()
    began = time.perf_counter()
    model = MemoryPackTransformer.from_preset(preset, device=device, dtype=dtype, seed=0).eval()
    build_seconds = time.perf_counter() - began
    cond, _ = random_inputs(preset, latent_size(preset, pixel_size), device, dtype, _image_tokens(preset))
    frames = model.config.window * preset.vae_temporal
    with torch.no_grad():
        generate(model, cond, GenerationConfig(sections=1, steps=1), progress=False)  # warm-up
        _sync(device)
        result = generate(model, cond, GenerationConfig(sections=1, steps=steps), progress=False)
    seconds = result.section_seconds[0]
    out = {
        "preset": preset.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "frames": frames,
        "section_seconds": seconds,
        "seconds_per_frame": seconds / frames,
        "build_seconds": build_seconds,
        "peak_bytes": memory.peak(),
        "dtype": str(dtype).replace("torch.", ""),
    }
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ----- report --------------------------------------------------------------------------------------
def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:7.2f} GiB"


def print_table(result: dict) -> None:
    print(
        f"gpu_check on {result['device']} ({'tiny' if result['tiny'] else 'real'} sizes, "
        f"{result['pixel_size'][0]}x{result['pixel_size'][1]} px), {result['seconds']:.0f} s"
    )
    steps = result["zero3_steps"]
    print(
        f"stage-1 step, ZeRO-3 one rank, {steps[0]['dtype']}, {steps[0]['parameters']:,} parameters "
        f"({result['blocks']}), {steps[0]['sequence_tokens']:,} attention tokens"
    )
    header = ("checkpointing", "peak", "planner", "meas/plan", "s/step", "TFLOP/step", "MFU")
    print(
        "  "
        + "".join(
            f"{h:<14}" if i == 0 else f"{h:>{w}}"
            for i, (h, w) in enumerate(zip(header, (14, 12, 12, 10, 9, 12, 7), strict=True))
        )
    )
    for s in steps:
        ratio = s["peak_bytes"] / s["plan_bytes"] if s["plan_bytes"] else float("nan")
        mfu = "-" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
        print(
            f"  {'on' if s['gradient_checkpointing'] else 'off':<14}{_gib(s['peak_bytes']):>12}"
            f"{_gib(s['plan_bytes']):>12}{ratio:>10.2f}{s['seconds_per_step']:>9.2f}"
            f"{s['model_flops'] / 1e12:>12.3f}{mfu:>7}"
        )
    v = result["start_latent"]
    print(
        f"start latent ({v['vae']}): one-frame encode vs stream latent 0: max |gap| {v['max_abs_gap']:.4f}, "
        f"mean {v['mean_abs_gap']:.4f}, latent std {v['latent_std']:.4f}; "
        f"{v['frames']}-frame stream encode {v['stream_encode_seconds']:.2f} s"
    )
    gen = result["generation"]
    print(
        f"generation ({gen['preset']}, {gen['parameters']:,} parameters, {gen['dtype']}): one section of "
        f"{gen['frames']} frames at {gen['steps']} steps in {gen['section_seconds']:.2f} s = "
        f"{gen['seconds_per_frame']:.3f} s/frame; peak {_gib(gen['peak_bytes'])}"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    device = _device()
    tiny = args.tiny or device.type != "cuda"
    pixel_size = TINY_SIZE if tiny else REAL_SIZE
    peak, name = peak_flops(device, args.peak_tflops)
    began = time.perf_counter()
    preset = scaled_f1(args.double_layers, args.single_layers, tiny)
    plain = zero3_step(preset, pixel_size, False, device, peak)
    checkpointed = zero3_step(preset, pixel_size, True, device, peak, flops=plain["counted_flops"])
    result = {
        "device": name,
        "tiny": tiny,
        "pixel_size": list(pixel_size),
        "torch": torch.__version__,
        "peak_flops": peak,
        "blocks": f"{args.double_layers} dual + {args.single_layers} single-stream",
        "zero3_steps": [plain, checkpointed],
        "start_latent": start_latent_check(pixel_size, device, tiny, args.vae),
        "generation": generation_section(pixel_size, 2 if tiny else args.steps, device, tiny),
    }
    result["seconds"] = time.perf_counter() - began
    print_table(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    main()

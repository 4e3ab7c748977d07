"""Memory of a validation video under ZeRO-3: the old sampler (encoders kept on the training device, every
parameter gathered on every rank) against the new one (mempack/train/validation.py: encoders run once on
the CPU and are dropped, the transformer runs module by module under ZeRO-3's own gathering).

Two ranks (gloo, one process each) build the `f1-scaled` model (F1's blocks, tiny's encoder widths, so
the tiny random encoders fit it) as the training loop does (`build_model`, `_init_engine`, ZeRO-3 fp32)
and then, each phase measured from a reset high-water mark (mempack/train/rss.py):

* `sampler` — what building the sampler leaves resident (rank 0 holds it; rank 1 only the embeddings);
* `render` — one validation video (2 sections, 2 steps), peak above the RSS before it.

The old path is reproduced from mempack/train/loop.py and validation.py before this change, with one
difference: as written it hung with two or more ranks (only rank 0 sampled, and the first ZeRO-3 forward
hook is a collective), so here every rank runs its forwards inside the full gather.
Prints a table and writes bench/results/validation_memory.json.

    python bench/validation_memory.py [--double-layers 2 --single-layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ENCODER_PRESET = "tiny"  # f1-scaled has tiny's encoder widths: its random encoders need no weights


def rank_main(rank: int, world: int, port: int, spec: str, out_json: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import ctypes
    import importlib

    import deepspeed
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zero3_memory import scaled_preset

    from mempack.train import loop, rss
    from mempack.train.config import DistributedConfig, TrainConfig
    from mempack.train.deepspeed_config import resolve
    from mempack.train.validation import SampleSettings, ValidationSampler

    name, double_layers, single_layers, sections, steps = json.loads(spec)
    preset = scaled_preset(name, double_layers, single_layers)
    torch.set_num_threads(1)
    libc = ctypes.CDLL("libc.so.6")
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    config = TrainConfig(stage=1, preset=preset, distributed=DistributedConfig(zero_stage=3, num_workers=world))
    ds_config = resolve(config.distributed, config.optim)
    ds_config["zero_optimization"].update(stage3_param_persistence_threshold=0)
    torch.manual_seed(0)
    model = loop.build_model(config, ds_config, rank)
    engine = loop._init_engine(model, ds_config, False, None)
    module = engine.module
    settings = SampleSettings(None, "", sections=sections, steps=steps, seed=0)
    result: dict = {"rank": rank, "phases": {}}

    def phase(label, fn):
        torch.distributed.barrier()
        libc.malloc_trim(0)
        before = rss.current_bytes()
        rss.reset_peak()
        started = time.perf_counter()
        value = fn()
        torch.distributed.barrier()
        libc.malloc_trim(0)
        result["phases"][label] = {
            "rise_bytes": rss.peak_bytes() - before,
            "kept_bytes": rss.current_bytes() - before,
            "seconds": time.perf_counter() - started,
        }
        return value

    with tempfile.TemporaryDirectory() as tmp:
        # --- before: VideoEncoders on the training device for the whole run, every parameter gathered everywhere
        def old_sampler():
            from mempack.encoders import VideoEncoders

            return VideoEncoders.build(ENCODER_PRESET, None, device="cpu", dtype=torch.float32) if rank == 0 else None

        def old_render(encoders):
            from mempack.sampling import GenerationConfig, generate

            # as written, only rank 0 sampled inside the gather, and ZeRO-3's start-of-forward hook (a
            # collective) then waited for the other ranks forever; here every rank runs the same forwards
            # so the phase completes and measures what the full gather costs each rank
            cond = conditioning_shared(encoders)
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                module.eval()
                config = GenerationConfig(sections=sections, steps=steps, seed=0)
                latents = generate(module, cond, config, progress=False).latents
                if encoders is not None:
                    encoders.decode_latents(latents)
                module.train()

        def conditioning_shared(encoders):
            from mempack.pipeline import conditioning
            from mempack.sample import SAMPLE_PROMPT, sample_image

            objects = [
                conditioning(encoders, sample_image(*preset.default_bucket), SAMPLE_PROMPT)
                if encoders is not None
                else None
            ]
            torch.distributed.broadcast_object_list(objects, src=0)
            return objects[0]

        encoders = phase("old_sampler", old_sampler)
        phase("old_render", lambda encoders=encoders: old_render(encoders))
        del encoders
        # --- after: embeddings once (CPU), the VAE alone on rank 0's CPU, ZeRO-3 gathering module by module
        sampler = phase(
            "new_sampler", lambda: ValidationSampler(tmp, ENCODER_PRESET, settings, rank=rank, share=world > 1)
        )
        phase("new_render", lambda: sampler.render(module, Path(tmp) / "samples" / "step.mp4"))
        result["video_written"] = rank != 0 or (Path(tmp) / "samples" / "step.mp4").is_file()
    result["parameters"] = sum(p.ds_numel for p in module.parameters())
    Path(out_json).write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="f1-scaled")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--double-layers", type=int, default=2)
    parser.add_argument("--single-layers", type=int, default=4)
    parser.add_argument("--sections", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "validation_memory.json"))
    args = parser.parse_args(argv)

    spec = json.dumps([args.preset, args.double_layers, args.single_layers, args.sections, args.steps])
    port = _free_port()
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import validation_memory as b; "
        "b.rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])"
    )
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"rank{r}.json" for r in range(args.workers)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(r), str(args.workers), str(port), spec, str(outs[r])], env=env
            )
            for r in range(args.workers)
        ]
        codes = [proc.wait() for proc in procs]
        if any(codes):
            raise SystemExit(f"error: a rank failed (exit codes {codes})")
        ranks = [json.loads(o.read_text()) for o in outs]
    params = ranks[0]["parameters"]
    mib = 2**20
    run = {
        "preset": f"{args.preset}-{args.double_layers}x{args.single_layers}",
        "parameters": params,
        "workers": args.workers,
        "dtype": "float32",
        "sections": args.sections,
        "steps": args.steps,
        "ranks": ranks,
        "rise_mib": {ph: [round(r["phases"][ph]["rise_bytes"] / mib, 1) for r in ranks] for ph in ranks[0]["phases"]},
        "kept_mib": {ph: [round(r["phases"][ph]["kept_bytes"] / mib, 1) for r in ranks] for ph in ranks[0]["phases"]},
        "fp32_model_mib": round(4 * params / mib, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(run, indent=2))
    print(
        f"validation video under ZeRO-3, {run['preset']} ({params / 1e6:.0f} M parameters, "
        f"{run['fp32_model_mib']:.0f} MiB in fp32), {args.workers} ranks on CPU — MiB per rank"
    )
    print("(rise: the phase's peak above its starting RSS; kept: what stays resident after it)")
    print(f"{'phase':<14}" + "".join(f"{'rise r' + str(r['rank']):>11}{'kept r' + str(r['rank']):>11}" for r in ranks))
    for ph in run["rise_mib"]:
        print(
            f"{ph:<14}"
            + "".join(f"{a:>11.1f}{b:>11.1f}" for a, b in zip(run["rise_mib"][ph], run["kept_mib"][ph], strict=True))
        )
    print(f"wrote {out}")
    return run


if __name__ == "__main__":
    main()

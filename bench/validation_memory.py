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

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ENCODER_PRESET = "tiny"  # f1-scaled has tiny's encoder widths: its random encoders need no weights


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    preset: str = "f1-scaled"
    workers: int = 2
    double_layers: int = 2
    single_layers: int = 4
    sections: int = 2
    steps: int = 2
    out: str = str(RESULTS / "validation_memory.json")


def rank_main(rank: int, world: int, port: int, spec: str, out_json: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import importlib

    import deepspeed
    import torch

    from bench.rss import PhaseProbe
    from bench.zero3_memory import scaled_preset
    from mempack.train import loop
    from mempack.train.config import DistributedConfig, TrainConfig
    from mempack.train.deepspeed_config import resolve
    from mempack.train.validation import SampleSettings, ValidationSampler

    name, double_layers, single_layers, sections, steps = json.loads(spec)
    preset = scaled_preset(name, double_layers, single_layers)
    torch.set_num_threads(1)
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
    phase = PhaseProbe(torch.distributed.barrier)
    result: dict = {"rank": rank, "phases": phase.phases}

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


def _above(rank: dict, phase: str, key: str) -> int:
    """How far a phase's peak (rise) or its end (kept) is above the RSS it started from."""
    return rank["phases"][phase][key] - rank["phases"][phase]["before_bytes"]


def main(argv=None) -> dict:
    from mempack.config import parse_config

    args = parse_config(Options, argv, __doc__.splitlines()[0])

    from bench.rss import run_ranks

    spec = json.dumps([args.preset, args.double_layers, args.single_layers, args.sections, args.steps])
    ranks = run_ranks("bench.validation_memory", args.workers, spec)
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
        "rise_mib": {ph: [round(_above(r, ph, "peak_bytes") / mib, 1) for r in ranks] for ph in ranks[0]["phases"]},
        "kept_mib": {ph: [round(_above(r, ph, "after_bytes") / mib, 1) for r in ranks] for ph in ranks[0]["phases"]},
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

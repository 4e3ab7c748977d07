"""Cost of one section as the history grows: MemoryPack against a naive whole-history baseline.

For each history length (in sections) this measures, in a fresh subprocess each, one section's
context preparation (FramePack history packing + one ψ update for MemoryPack; concatenating every
history frame for the baseline) plus one transformer forward on the tiny preset: wall time (median of
repeats), FLOPs (torch's FlopCounterMode), the attention sequence length, and peak memory — CUDA's
allocator peak on a GPU, otherwise the process's peak RSS above a baseline taken after the model and
inputs are built (so it includes the first step's allocations). Prints a table and writes
bench/results/memory_scaling.json.

    python bench/memory_scaling.py [--sections 1 2 5 10 20 40 80 120] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# fields with flags of their own in parse_args: a list flag keeps its old syntax (`--sections 1 2 5`, where a
# generated flag takes one YAML value, `--sections [1,2,5]`)
HANDWRITTEN = ("sections",)


@dataclass
class Options:
    """The benchmark's flags (mempack.config: also --set KEY=VALUE, --config, --print-config)."""

    sections: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 40, 80, 120])  # history lengths
    repeats: int = 5  # timed runs per configuration (the median is reported)
    device: str = "cpu"  # torch device


def measure(method: str, sections: int, repeats: int, device: str) -> dict:
    """One configuration, in this process (called in a subprocess by `main`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mempack.model import Conditioning, HistoryLayout, MemoryPackTransformer, pack_history
    from mempack.presets import TINY

    torch.manual_seed(0)
    window, c, h, w = 9, 16, 8, 8
    model = MemoryPackTransformer.from_preset("tiny", seed=0, device=device).eval()
    cond = Conditioning(
        torch.randn(1, TINY.max_prompt_tokens, TINY.text_embed_dim),
        torch.ones(1, TINY.max_prompt_tokens, dtype=torch.int64),
        torch.randn(1, TINY.pooled_dim),
        torch.randn(1, 4, TINY.image_embed_dim),
        torch.randn(1, c, 1, h, w),
    ).to(device)
    history = torch.randn(1, c, window * sections, h, w, device=device)
    noisy = torch.randn(1, c, window, h, w, device=device)
    t = torch.tensor([0.5], device=device)
    memory = model.initial_memory(cond) if method == "memorypack" else None
    if method == "memorypack":
        for k in range(min(sections - 1, 1)):  # psi has its steady-state size after one update
            memory = model.update_memory(memory, history[:, :, window * k : window * (k + 1)])
    # the naive baseline keeps every history frame at full resolution in the clean stream
    layout = HistoryLayout() if method == "memorypack" else HistoryLayout(frames_1x=window * sections)

    def step():
        packed = pack_history(cond.start_latent, history, layout)
        mem = model.update_memory(memory, history[:, :, -window:]) if memory is not None else None
        return model(noisy, t, cond, packed, mem)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        step()  # warm-up (counted in the CPU peak: the first step allocates what later ones reuse)
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        if device.startswith("cuda"):
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before, 0) / 1024
    p = model.backbone.config.patch_size
    tokens_per_frame = (h // p) * (w // p)
    clean = 1 + layout.frames_1x
    seq = tokens_per_frame * (window + clean) + (tokens_per_frame // 4 or 1) + 4 * max(tokens_per_frame // 16, 1)
    return dict(
        method=method,
        sections=sections,
        seconds=statistics.median(times),
        gflops=counter.get_total_flops() / 1e9,
        video_tokens=seq,
        peak_mb=peak_mb,
    )


def parse_args(argv=None) -> tuple[argparse.Namespace, Options]:
    """The run's flags (and the internal --worker) and the benchmark's Options."""
    from mempack.config import ArgumentParser, add_config_arguments, add_config_file_arguments, config_from_args

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_config_file_arguments(parser, Options)
    parser.add_argument("--sections", type=int, nargs="+", help="history lengths in sections (default: 1 2 5 ... 120)")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "SECTIONS"), help=argparse.SUPPRESS)
    add_config_arguments(parser, Options, skip=HANDWRITTEN)
    args = parser.parse_args(argv)
    handwritten = {"sections": args.sections}
    options = config_from_args(parser, Options, args, {k: v for k, v in handwritten.items() if v is not None})
    return args, options


def main(argv=None) -> None:
    args, options = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), options.repeats, options.device)))
        return
    rows = []
    for method in ("memorypack", "naive"):
        for n in options.sections:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    method,
                    str(n),
                    "--repeats",
                    str(options.repeats),
                    "--device",
                    options.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{method:>10} {n:>4} sections  {r['seconds'] * 1e3:8.2f} ms  {r['gflops']:8.3f} GFLOP  "
                f"{r['video_tokens']:>6} tokens  {r['peak_mb']:8.1f} MB",
                flush=True,
            )
    summary = {}
    for method in ("memorypack", "naive"):
        mine = [r for r in rows if r["method"] == method]
        first, last = mine[0], mine[-1]
        summary[method] = {k: last[k] / first[k] if first[k] else None for k in ("seconds", "gflops", "video_tokens")}
    print(f"\nlast/first ({options.sections[0]} -> {options.sections[-1]} sections)")
    print(f"{'method':>10} {'time':>8} {'flops':>8} {'tokens':>8}")
    for method, ratio in summary.items():
        print(f"{method:>10} {ratio['seconds']:8.2f} {ratio['gflops']:8.2f} {ratio['video_tokens']:8.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "memory_scaling.json"
    out.write_text(json.dumps({"device": options.device, "rows": rows, "last_over_first": summary}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

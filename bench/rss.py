"""What the per-rank memory benchmarks share (zero3_memory.py, validation_memory.py): one process per rank,
launched so that freed tensors leave the resident set, and each phase's RSS read from the kernel.

A phase's numbers come from mempack/train/rss.py (the kernel's high-water mark, reset before the phase);
glibc's free lists are trimmed around it and every rank waits for the others at both ends, so a phase
measures itself, not what a slower rank or the allocator kept from the one before.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# glibc serves blocks over 64 KiB with mmap, so freed tensors go back to the kernel and RSS follows them
MEASURED_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}


class PhaseProbe:
    """`probe(name, fn)` runs `fn` as one measured phase and records, in `probe.phases[name]`, the RSS
    before it, its peak, the RSS after it and its seconds (bytes; the caller derives rise and kept)."""

    def __init__(self, barrier: Callable[[], None]):
        self.barrier = barrier
        self.phases: dict[str, dict[str, float]] = {}
        self._libc = ctypes.CDLL("libc.so.6")

    def __call__(self, name: str, fn: Callable):
        from mempack.train import rss

        self.barrier()
        self._libc.malloc_trim(0)
        before = rss.current_bytes()
        rss.reset_peak()
        started = time.perf_counter()
        value = fn()
        self.barrier()
        self._libc.malloc_trim(0)
        self.phases[name] = {
            "before_bytes": before,
            "peak_bytes": rss.peak_bytes(),
            "after_bytes": rss.current_bytes(),
            "seconds": time.perf_counter() - started,
        }
        return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(module: str, workers: int, *args: str) -> list[dict]:
    """Run `module.rank_main(rank, world, port, *args, out_json)` in one process per rank (a module under
    bench/, e.g. "bench.zero3_memory"); returns what each rank wrote to its out_json, by rank."""
    env = {**os.environ, **MEASURED_ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = f"import sys; from {module} import rank_main; rank_main(*map(int, sys.argv[1:4]), *sys.argv[4:])"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"rank{r}.json" for r in range(workers)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(r), str(workers), str(port), *args, str(outs[r])], env=env
            )
            for r in range(workers)
        ]
        codes = [proc.wait() for proc in procs]
        if any(codes):
            raise SystemExit(f"error: a rank failed (exit codes {codes})")
        return [json.loads(o.read_text()) for o in outs]

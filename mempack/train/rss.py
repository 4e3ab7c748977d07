"""Resident memory of this process, and its peak since a reset (Linux /proc), for memory benchmarks.

`ru_maxrss` only ever grows, so it cannot say which phase of a run (build, step, checkpoint, export)
set the peak. Writing "5" to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the
current RSS, so each phase's own peak can be read. Large tensors must really go back to the kernel
when freed for RSS to follow them: set MALLOC_MMAP_THRESHOLD_ (e.g. 65536) in the environment of the
measured process, so glibc serves them with mmap instead of keeping freed pages in its heap.
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def current_bytes() -> int:
    """Resident set size now."""
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """Highest resident set size since the process started or since `reset_peak`."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Start a new peak measurement from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")

"""Memory of prep's one-stream VAE encode: peak RSS against the stream's length, and a minute of 480p projected.

Prep encodes each training video (up to a minute: 1 + 36·50 = 1801 frames at 30 fps) as ONE causal VAE
stream. `VideoEncoders.encode_video` replays diffusers' temporal tiles (17 frames every 12) from the uint8
frames, so what grows with the length is only the uint8 input and the latents; the float working set is
one tile's. This measures, each in a fresh process with the tiny VAE on the CPU:
  (a) peak RSS of encoding N frames at --size for several N, beside the uint8 frames' bytes and what a
      float32 copy of the whole video (what `vae.encode(whole)` takes as input) would add;
  (b) the peak of one 17-frame tile at 480x832 (FramePack's 16:9 bucket), the working set that a minute
      of 480p adds to its frames; then projects a minute of 480p: frames + latents + that tile.
The tiny VAE's working set is smaller than HunyuanVideo's (8 channels per block, not 128-512): (b) is a
floor for the real VAE's per-tile memory; the point measured here is that it does not grow with N.

    python bench/stream_encode.py [--size 96x160] [--frames 37,145,361] [--no-tile]
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024

_CHILD = """
import json, resource, sys, time
import numpy as np, torch
from mempack.encoders import VideoEncoders
enc = VideoEncoders.build("tiny", seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
frames = np.random.default_rng(0).integers(0, 256, ({n}, {h}, {w}, 3), dtype=np.uint8)
started = time.perf_counter()
latents = enc.encode_video(frames)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"base": base, "peak": peak, "seconds": seconds, "latent_bytes": latents.numel() * 4}}))
"""


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    size: str = "96x160"  # HxW of the length sweep
    frames: str = "37,145,361"  # stream lengths (1 + 36·n)
    no_tile: bool = False  # skip (b), the 480x832 tile (about a minute on 2 cores)
    out: str = str(RESULTS / "stream_encode.json")


def measure(frames: int, height: int, width: int) -> dict:
    """Peak RSS (bytes) above the process's RSS after building the encoders, for one encode."""
    code = _CHILD.format(root=str(ROOT), n=frames, h=height, w=width)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    pixels = frames * height * width * 3
    return {
        "frames": frames,
        "height": height,
        "width": width,
        "seconds": round(row["seconds"], 2),
        "uint8_frames_mib": pixels / MIB,
        "whole_float32_copy_mib": pixels * 4 / MIB,
        "latents_mib": row["latent_bytes"] / MIB,
        "peak_above_base_mib": (row["peak"] - row["base"]) / MIB,
    }


def main() -> None:
    from mempack.config import parse_config

    args = parse_config(Options, None, __doc__.splitlines()[0])
    height, width = (int(v) for v in args.size.lower().split("x"))
    sweep = [measure(int(n), height, width) for n in args.frames.split(",")]
    print(f"one-stream VAE encode, tiny VAE, CPU, {height}x{width}")
    print(
        f"{'frames':>7} {'uint8 MiB':>10} {'f32 copy MiB':>13} {'peak-base MiB':>14} {'peak-base-uint8':>16} {'s':>7}"
    )
    for r in sweep:
        print(
            f"{r['frames']:>7} {r['uint8_frames_mib']:>10.1f} {r['whole_float32_copy_mib']:>13.1f} "
            f"{r['peak_above_base_mib']:>14.1f} {r['peak_above_base_mib'] - r['uint8_frames_mib']:>16.1f} "
            f"{r['seconds']:>7.1f}"
        )
    result = {"sweep": sweep}
    if not args.no_tile:
        tile = measure(17, 480, 832)
        minute = 1 + 36 * 50
        frames_mib = minute * 480 * 832 * 3 / MIB
        latents_mib = 16 * ((minute - 1) // 4 + 1) * 60 * 104 * 4 / MIB
        working = tile["peak_above_base_mib"] - tile["uint8_frames_mib"]
        result["tile_480x832"] = tile
        result["minute_480x832_projection_mib"] = {
            "uint8_frames": frames_mib,
            "latents_f32": latents_mib,
            "one_tile_working_set_tiny_vae": working,
            "total": frames_mib + latents_mib + working,
            "whole_float32_copy_instead": minute * 480 * 832 * 3 * 4 / MIB,
        }
        proj = result["minute_480x832_projection_mib"]
        print(f"\none 17-frame tile at 480x832: peak-base-uint8 = {working:.0f} MiB ({tile['seconds']:.0f} s)")
        print(
            f"a minute of 480x832 (1801 frames): frames {frames_mib:.0f} + latents {latents_mib:.0f} + tile "
            f"{working:.0f} = {proj['total']:.0f} MiB (a float32 copy of the whole video alone: "
            f"{proj['whole_float32_copy_instead']:.0f} MiB)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

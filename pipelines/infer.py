"""Generate a long video from an image and a prompt, section by section, to an mp4.

A thin command line over `mempack.MemoryPackPipeline` (each section is decoded and encoded into the
mp4 as soon as it is sampled, so memory does not grow with the video's length).

    python pipelines/infer.py                                   # newest export under outputs/train
    python pipelines/infer.py --checkpoint outputs/train/stage2 --sections 40 --out outputs/infer/long.mp4
    python pipelines/infer.py --mlflow-model runs:/<run_id>/model --mlflow-uri sqlite:///outputs/mlflow.db
    python pipelines/infer.py --pretrained /weights/framepack-f1-mempack --encoders /weights/encoders \\
        --image first_frame.png --prompt "a kite over the sea" --seconds 60 --device cuda
    python pipelines/infer.py --prompt "0s: a kite rises | 12s: it dives" --seconds 20   # a prompt timeline
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import tempfile
from pathlib import Path

from mempack.config import ArgumentParser


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="training run folder or export (default: newest under outputs/train)")
    source.add_argument("--mlflow-model", help="MLflow artifact URI of a trained model, e.g. runs:/<id>/model")
    source.add_argument("--pretrained", help="FramePack-F1 weights in diffusers layout (+ our semantic_pack/)")
    p.add_argument("--encoders", help="folder with real VAE/text/image encoder weights (default: as trained)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "framepack-f1"], help="size when no weights are given")
    p.add_argument("--image", help="first frame (default: the built-in sample image)")
    p.add_argument("--video", help="continue this video: its frames become the history and feed the memory ψ")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt",
        help="text prompt (default: the built-in sample prompt), or a timeline: "
        '"0s: a kite rises | 12s: it dives" (switches snap to 1.2 s sections)',
    )
    prompts.add_argument("--timeline", help="YAML or JSON file of seconds: prompt (a prompt per section)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help="video length in seconds (default 5)")
    length.add_argument("--sections", type=int, help="number of sections instead of --seconds")
    p.add_argument("--fps", type=float, help="frames per second (default: the presets' clock, 30)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps per section (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=10.0, help="distilled guidance scale (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument(
        "--crf",
        type=int,
        default=18,
        help="x264 quality, 0-51 (default: %(default)s; 0 = lossless, frame-exact across runs)",
    )
    p.add_argument("--out", help="output mp4 (default: outputs/infer/<name>.mp4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--vae-dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="VAE precision (default auto: fp32 on a CPU, fp16 on a GPU; bf16 bands)",
    )
    p.add_argument("--no-memory", action="store_true", help="switch SemanticPack off (the FramePack-only ablation)")
    p.add_argument("--mlflow-uri", help="log the settings and the mp4 to this MLflow tracking URI")
    p.add_argument("--experiment", default="mempack-infer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    # the length flags exist only here: refused at once (exit 2); sampling settings are the pipeline's to check
    for name in ("seconds", "fps"):  # float() takes "nan" and "inf"
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value <= 0):
            p.error(f"--{name} must be > 0 and finite, got {value}")
    if args.sections is not None and args.sections < 1:
        p.error(f"--sections must be >= 1, got {args.sections}")
    if not 0 <= args.crf <= 51:
        p.error(f"--crf must be in 0..51, got {args.crf}")
    return args


def default_name(args: argparse.Namespace) -> str:
    stem = Path(args.image).stem if args.image else "sample"
    length = f"{args.sections}sec" if args.sections else f"{args.seconds or 5:g}s"
    return f"{stem}_{length}_seed{args.seed}{'_nomem' if args.no_memory else ''}"


def log_to_mlflow(client, run_id: str, uri: str, args: argparse.Namespace, result: dict) -> str:
    """Settings, timings, the mp4 and the model's lineage into the inference run opened by `main`."""
    from mempack.tracking import tag_model_used

    for key, value in vars(args).items():
        if value is not None and key not in ("mlflow_uri",):
            client.log_param(run_id, key, str(value)[:500])
    for key in ("frames", "fps", "sections", "total_seconds"):
        client.log_metric(run_id, key, float(result[key]))
    for n, seconds in enumerate(result["section_seconds"], start=1):
        client.log_metric(run_id, "section_seconds", seconds, step=n)
    client.log_artifact(run_id, result["path"], "video")
    client.log_dict(run_id, result, "inference.json")
    tag_model_used(client, run_id, args.mlflow_model or result.get("model"), uri)  # the model's training run
    return run_id


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # torch/diffusers load only after the arguments are checked: a typo is answered at once
    from mempack.export import CheckpointError, download_mlflow_model
    from mempack.inference import InferenceError, InferenceRequest, run_inference
    from mempack.layout import infer_dir, newest_export

    out = args.out or str(infer_dir() / f"{default_name(args)}.mp4")
    tracking = contextlib.nullcontext()
    client = run_id = None
    if args.mlflow_uri:  # the run exists from the start, so a failed inference ends FAILED, never RUNNING
        from mempack.tracking import create_run, run_status

        client, run_id = create_run(args.mlflow_uri, args.experiment, run_name=Path(out).stem, entry_point="infer")
        tracking = run_status(client, run_id)
    with tracking, tempfile.TemporaryDirectory(prefix="mempack-infer-") as tmp:
        try:
            if args.mlflow_model:
                model_dir = str(download_mlflow_model(args.mlflow_model, args.mlflow_uri, Path(tmp)))
            else:
                model_dir = args.checkpoint or args.pretrained
                if model_dir is None:
                    newest = newest_export()
                    model_dir = str(newest) if newest else None
            request = InferenceRequest(
                model_dir=model_dir,
                preset=args.preset,
                encoders=args.encoders,
                image=args.image,
                video=args.video,
                prompt=args.prompt,
                timeline=args.timeline,
                seconds=args.seconds,
                sections=args.sections,
                fps=args.fps,
                height=args.height,
                width=args.width,
                steps=args.steps,
                guidance=args.guidance,
                seed=args.seed,
                use_memory=not args.no_memory,
                device=args.device,
                vae_dtype=args.vae_dtype,
                crf=args.crf,
                out=out,
                progress=not args.quiet,
            )
            result = run_inference(request).as_dict()
        except (CheckpointError, InferenceError) as err:
            raise SystemExit(f"error: {err}") from None
        if run_id is not None:
            result["mlflow_run_id"] = log_to_mlflow(client, run_id, args.mlflow_uri, args, result)
    per_section = sum(result["section_seconds"]) / len(result["section_seconds"])
    print(json.dumps({k: v for k, v in result.items() if k != "section_seconds"}, indent=2))
    print(
        f"video: {result['path']}  ({result['frames']} frames, {result['width']}x{result['height']} "
        f"at {result['fps']:g} fps, {result['sections']} sections, {per_section:.2f} s/section)"
    )


if __name__ == "__main__":
    main()

"""Generate a long video from an image and a prompt, section by section, to an mp4.

A thin command line over `mempack.MemoryPackPipeline` (each section is decoded and encoded into the
mp4 as soon as it is sampled, so memory does not grow with the video's length). One flag per
`InferenceRequest` field is generated from the dataclass (mempack.config), as prep and train do.

    python pipelines/infer.py                                   # newest export under outputs/train
    python pipelines/infer.py --checkpoint outputs/train/stage2 --sections 40 --out outputs/infer/long.mp4
    python pipelines/infer.py --mlflow-model runs:/<run_id>/model --mlflow-uri sqlite:///outputs/mlflow.db
    python pipelines/infer.py --pretrained /weights/framepack-f1-mempack --encoders /weights/encoders \\
        --image first_frame.png --prompt "a kite over the sea" --seconds 60 --device cuda --gpu-gb 24
    python pipelines/infer.py --prompt "0s: a kite rises | 12s: it dives" --seconds 20   # a prompt timeline
    python pipelines/infer.py --plan --preset framepack-f1 --gpu-gb 24   # memory per offload mode, no weights
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from mempack.config import ArgumentParser, add_config_arguments, add_config_file_arguments, config_from_args
from mempack.inference import InferenceRequest
from mempack.offload import OFFLOAD_MODES, WEIGHTS_DTYPES
from mempack.presets import PRESETS

# fields with flags of their own below: exclusive pairs (argparse groups), a model source, and two
# switches older than the generated style (`--no-memory`, `--quiet`)
HANDWRITTEN = ("model_dir", "prompt", "timeline", "seconds", "sections", "use_memory", "progress")


def build_parser() -> ArgumentParser:
    """Run flags here; one flag per InferenceRequest field is generated from the dataclass."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_config_file_arguments(p, InferenceRequest)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="training run folder or export (default: newest under outputs/train)")
    source.add_argument("--mlflow-model", help="MLflow artifact URI of a trained model, e.g. runs:/<id>/model")
    source.add_argument("--pretrained", help="FramePack-F1 weights in diffusers layout (+ our semantic_pack/)")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt",
        help="text prompt (default: the built-in sample prompt), or a timeline: "
        '"0s: a kite rises | 12s: it dives" (switches snap to 1.2 s sections)',
    )
    prompts.add_argument("--timeline", help="YAML or JSON file of seconds: prompt (a prompt per section)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", help="video length in seconds (default 5)")
    length.add_argument("--sections", help="number of 1.2-s sections instead of --seconds")
    p.add_argument("--no-memory", action="store_true", help="switch SemanticPack off (the FramePack-only ablation)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the request's GPU memory per component, stage and offload mode (for --preset, at "
        "--height/--width or its bucket; with --gpu-gb: which setting fits), and exit; reads no weights",
    )
    p.add_argument("--mlflow-uri", help="log the settings and the mp4 to this MLflow tracking URI")
    p.add_argument("--experiment", default="mempack-infer", help="MLflow experiment (default: %(default)s)")
    add_config_arguments(
        p,
        InferenceRequest,
        skip=HANDWRITTEN,
        choices={
            "preset": tuple(PRESETS),
            "vae_dtype": ("auto", "fp32", "fp16", "bf16"),
            "offload": OFFLOAD_MODES,
            "weights_dtype": WEIGHTS_DTYPES,
        },
        title="generation settings (InferenceRequest; also settable with --set KEY=VALUE or a --config file)",
    )
    return p


def parse_args(argv=None) -> tuple[argparse.Namespace, InferenceRequest]:
    """The run flags and the request; a bad value is one `error:` line (InferenceRequest checks it)."""
    p = build_parser()
    args = p.parse_args(argv)
    handwritten = {
        "model_dir": args.checkpoint or args.pretrained,
        "prompt": args.prompt,
        "timeline": args.timeline,
        "seconds": args.seconds,
        "sections": args.sections,
        "use_memory": False if args.no_memory else None,
        "progress": False if args.quiet else None,
    }
    request = config_from_args(p, InferenceRequest, args, {k: v for k, v in handwritten.items() if v is not None})
    return args, request


def log_to_mlflow(client, run_id: str, uri: str, args: argparse.Namespace, request, result: dict) -> str:
    """Settings, timings, the mp4 and the model's lineage into the inference run opened by `main`."""
    from mempack.tracking import tag_model_used

    settings = {**dataclasses.asdict(request), "mlflow_model": args.mlflow_model, "experiment": args.experiment}
    for key, value in settings.items():
        if value is not None:
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
    args, request = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mempack.export import CheckpointError, download_mlflow_model
    from mempack.inference import InferenceError, plan_request, run_inference
    from mempack.layout import newest_export

    if args.plan:
        try:
            print(plan_request(request))
        except InferenceError as err:
            raise SystemExit(f"error: {err}") from None
        return
    tracking = contextlib.nullcontext()
    client = run_id = None
    if args.mlflow_uri:  # the run exists from the start, so a failed inference ends FAILED, never RUNNING
        from mempack.tracking import create_run, run_status

        client, run_id = create_run(
            args.mlflow_uri, args.experiment, run_name=Path(request.out).stem, entry_point="infer"
        )
        tracking = run_status(client, run_id)
    with tracking, tempfile.TemporaryDirectory(prefix="mempack-infer-") as tmp:
        try:
            if args.mlflow_model:
                request.model_dir = str(download_mlflow_model(args.mlflow_model, args.mlflow_uri, Path(tmp)))
            elif request.model_dir is None:
                newest = newest_export()
                request.model_dir = str(newest) if newest else None
            result = run_inference(request).as_dict()
        except (CheckpointError, InferenceError) as err:
            raise SystemExit(f"error: {err}") from None
        if run_id is not None:
            result["mlflow_run_id"] = log_to_mlflow(client, run_id, args.mlflow_uri, args, request, result)
    per_section = sum(result["section_seconds"]) / len(result["section_seconds"])
    print(json.dumps({k: v for k, v in result.items() if k != "section_seconds"}, indent=2))
    print(
        f"video: {result['path']}  ({result['frames']} frames, {result['width']}x{result['height']} "
        f"at {result['fps']:g} fps, {result['sections']} sections, {per_section:.2f} s/section, "
        f"offload {result['offload']})"
    )


if __name__ == "__main__":
    main()

"""Prep raw videos into curriculum-grouped Parquet latents on Ray Data.

    python pipelines/prep.py                                   # the built-in sample → ./outputs/prep
    python pipelines/prep.py --input VIDEOS_OR_CSV --video-root DIR --output DIR [--config prep.yaml]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python pipelines/prep.py ...

The input is a folder of videos (captions from a sidecar .txt/.json), a MiraData meta CSV or a Sekai
annotation CSV. A second run into the same --output replaces prep's previous output there, and only
once it has succeeded: a failed run leaves it as it was. An --output that contains or lies inside
the input or the video root is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from data_prep.job import AccountingError, PrepConfig, check_config, check_output, run_prep
from data_prep.sources import load_inputs
from mempack import layout
from mempack.config import ArgumentParser, add_config_arguments, add_config_file_arguments, config_from_args, to_dict
from mempack.sample import make_sample


def build_parser() -> ArgumentParser:
    """Run flags here; one flag per PrepConfig key is generated from the dataclass (add_config_arguments)."""
    from mempack.presets import PRESETS

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", help="folder of videos, MiraData CSV or Sekai CSV (default: the built-in sample)")
    p.add_argument("--video-root", help="folder the CSV's file names are relative to (default: the CSV's folder)")
    add_config_file_arguments(p, PrepConfig)
    p.add_argument("--limit", type=int, help="only the first N inputs")
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: the job's cluster or a local one)"
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    p.add_argument("--mlflow-uri", help="also log the run to this MLflow tracking URI")
    p.add_argument("--experiment", default="mempack-prep", help="MLflow experiment (default: %(default)s)")
    add_config_arguments(
        p, PrepConfig, choices={"preset": tuple(PRESETS), "vae_dtype": ("auto", "fp32", "fp16", "bf16")}
    )
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PrepConfig]:
    p = build_parser()
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.input and not Path(args.input).exists():
        p.error(f"--input not found: {args.input}")
    config = config_from_args(p, PrepConfig, args)
    if config.encoders and not Path(config.encoders).is_dir():
        p.error(f"--encoders is not a folder: {config.encoders}")
    return args, config


def run_tracked(
    inputs: list, config: PrepConfig, uri: str, experiment: str, protected: list[str] | tuple[str, ...] = ()
) -> dict:
    """run_prep inside an MLflow run that ends FAILED if prep fails; its id lands beside the output
    (mlflow_run.json) so the training run that reads this output links back to it."""
    from mempack import tracking

    client, run_id = tracking.create_run(uri, experiment, run_name="prep", entry_point="pipelines/prep.py")
    with tracking.run_status(client, run_id):
        from mlflow.entities import Metric, Param

        params = {
            "output": str(Path(config.output).resolve()),
            "preset": config.preset,
            "encoders": config.encoders or "tiny",
            "inputs": str(len(inputs)),
            **{f"clip.{k}": v for k, v in to_dict(config.clip).items()},
        }
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        summary = run_prep(inputs, config, protected)
        out = Path(config.output).resolve()
        flat = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in flat.items()])
        client.log_artifact(run_id, str(out / layout.SUMMARY_FILE))
        tracking.write_run_file(out, run_id, uri)
    summary["mlflow_run_id"] = run_id
    return summary


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_config(config)  # the VAE's size rules etc.: one line now, not a failed job later
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    source = args.input
    if source is None:
        source = str(Path(config.output).parent / "sample")
        make_sample(source)
        print(f"built-in sample written to {source}")
    protected = [p for p in (source, args.video_root) if p]
    if source.lower().endswith(".csv") and not args.video_root:
        protected.append(str(Path(source).parent))  # the manifest's videos are relative to its folder
    try:
        inputs = load_inputs(source, args.video_root, args.limit)
        check_output(config.output, inputs, protected)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None

    import ray

    if args.ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.ray_address, log_to_driver=False)
    else:
        # "local": always a fresh Ray of our own, never a stale or foreign cluster recorded in /tmp/ray
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        if args.mlflow_uri:
            summary = run_tracked(inputs, config, args.mlflow_uri, args.experiment, protected)
        else:
            summary = run_prep(inputs, config, protected)
            (Path(config.output) / layout.RUN_FILE).unlink(missing_ok=True)  # an earlier run's link no longer holds
    except (ValueError, AccountingError) as err:
        raise SystemExit(f"error: {err}") from None
    out = Path(config.output).resolve()
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"prep output: {out} (clips/, videos/, rejects/, warnings/, summary.json)")


if __name__ == "__main__":
    main()

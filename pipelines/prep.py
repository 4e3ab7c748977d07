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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mempack.cli import ArgumentParser  # noqa: E402
from data_prep.pipeline import AccountingError, PrepConfig, check_config, check_output, run_prep  # noqa: E402
from data_prep.sample import make_sample  # noqa: E402
from data_prep.sources import load_inputs  # noqa: E402
from mempack.config import load_config, to_dict  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0], epilog="Config keys can be overridden with "
                                "--set key=value (e.g. --set clip.target_fps=12).")
    p.add_argument("--input", help="folder of videos, MiraData CSV or Sekai CSV (default: the built-in sample)")
    p.add_argument("--video-root", help="folder the CSV's file names are relative to (default: the CSV's folder)")
    p.add_argument("--output", default="outputs/prep", help="output root (default: %(default)s)")
    p.add_argument("--config", help="YAML/TOML file with PrepConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    p.add_argument("--encoders", help="folder with real VAE/text/image weights (default: tiny random encoders)")
    p.add_argument("--preset", default=None, choices=["tiny", "framepack-f1"], help="encoder widths")
    p.add_argument("--limit", type=int, help="only the first N inputs")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: the job's cluster or a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    p.add_argument("--mlflow-uri", help="also log the run to this MLflow tracking URI")
    p.add_argument("--experiment", default="mempack-prep", help="MLflow experiment (default: %(default)s)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.input and not Path(args.input).exists():
        p.error(f"--input not found: {args.input}")
    if args.encoders and not Path(args.encoders).is_dir():
        p.error(f"--encoders is not a folder: {args.encoders}")
    return args


def log_to_mlflow(uri: str, experiment: str, config: PrepConfig, summary: dict, out: Path) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="prep") as run:
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        mlflow.log_params({"output": str(out), "preset": config.preset, "encoders": config.encoders or "tiny",
                           **{f"clip.{k}": v for k, v in to_dict(config.clip).items()}})
        mlflow.log_metrics(flat)
        mlflow.log_artifact(str(out / "summary.json"))
        return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(PrepConfig(output=args.output), args.config, args.set)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}")
    if args.encoders:
        config.encoders = args.encoders
    if args.preset:
        config.preset = args.preset
    try:
        check_config(config)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
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
        raise SystemExit(f"error: {err}")

    import ray

    if args.ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.ray_address, log_to_driver=False)
    else:
        # "local": always a fresh Ray of our own, never a stale or foreign cluster recorded in /tmp/ray
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_prep(inputs, config, protected)
    except (ValueError, AccountingError) as err:
        raise SystemExit(f"error: {err}")
    out = Path(config.output).resolve()
    if args.mlflow_uri:
        run_id = log_to_mlflow(args.mlflow_uri, args.experiment, config, summary, out)
        summary["mlflow_run_id"] = run_id
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"prep output: {out} (clips/, videos/, rejects/, summary.json)")


if __name__ == "__main__":
    main()

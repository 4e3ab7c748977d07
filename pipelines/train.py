"""Train MemoryPack on Ray Train + DeepSpeed: stage 1 (teacher forcing) or stage 2 (Direct Forcing).

    python pipelines/train.py --stage 1                 # tiny preset on ./outputs/prep, 2 CPU workers
    python pipelines/train.py --stage 2                 # from the newest stage-1 export
    python pipelines/train.py --stage 1 --use-gpu --num-workers 8 --preset framepack-f1 \\
        --pretrained /weights/framepack-f1 --deepspeed cluster/deepspeed/zero3_bf16.json

Every run is tracked in MLflow (default: sqlite:///./outputs/mlflow.db).
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
from mempack.config import load_config  # noqa: E402
from mempack.forcing import FORCING_MODES  # noqa: E402
from mempack.train.config import TrainConfig  # noqa: E402


def parse_args(argv=None) -> tuple[argparse.Namespace, TrainConfig]:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--data", help="prep output root (default: outputs/prep)")
    p.add_argument("--output", help="run folder (default: outputs/train/stage{N})")
    p.add_argument("--config", help="YAML/TOML file with TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--preset", choices=["tiny", "framepack-f1"])
    p.add_argument("--pretrained", help="stage 1: FramePack-F1 transformer folder (diffusers layout) or an export")
    p.add_argument("--init", help="stage 2: stage-1 run folder or export (default: newest stage-1 export)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--use-gpu", action="store_true", default=None)
    p.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per training worker (default 0.5)")
    p.add_argument("--max-failures", type=int, help="worker-group restarts from the last checkpoint (default 2)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward (the 12.9 B full fine-tune needs it)")
    p.add_argument("--placement-strategy", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   help="how Ray places the workers on nodes (default PACK)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (stage 2: one per video)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--conditioning", choices=FORCING_MODES, help="how the history is made: stage 1 default teacher, stage 2 default direct; "
                   "stage 2 + teacher is the head-only control, student the k-step ablation")
    p.add_argument("--student-steps", type=int, help="sampling steps of student forcing (default 5)")
    p.add_argument("--deepspeed", help="DeepSpeed JSON config (default: built in; see cluster/deepspeed/)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run with this --run-name from its last checkpoint")
    p.add_argument("--mlflow-uri")
    p.add_argument("--experiment")
    p.add_argument("--run-name")
    p.add_argument("--seed", type=int)
    p.add_argument("--ray-address", help="Ray cluster address (default: the job's cluster or a local one)")
    args = p.parse_args(argv)
    try:
        config = load_config(TrainConfig(stage=args.stage), args.config, args.set)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    direct = {"data": args.data, "output": args.output, "preset": args.preset, "pretrained": args.pretrained,
              "init": args.init, "num_workers": args.num_workers, "use_gpu": args.use_gpu,
              "placement_strategy": args.placement_strategy, "cpus_per_worker": args.cpus_per_worker,
              "max_failures": args.max_failures, "gradient_checkpointing": args.gradient_checkpointing,
              "max_steps": args.max_steps, "epochs": args.epochs, "lr": args.lr, "deepspeed": args.deepspeed,
              "checkpoint_every": args.checkpoint_every, "mlflow_uri": args.mlflow_uri,
              "experiment": args.experiment, "run_name": args.run_name, "seed": args.seed}
    for key, value in direct.items():
        if value is not None:
            setattr(config, key, value)
    config.stage = args.stage
    if args.output is None and not any(s.startswith("output=") for s in args.set):
        config.output = f"outputs/train/stage{args.stage}"
    if args.conditioning:
        config.forcing.mode = args.conditioning
    if args.student_steps is not None:
        if (config.forcing.mode or "") != "student":
            p.error("--student-steps needs --conditioning student")
        config.forcing.student_steps = args.student_steps
    for name in ("num_workers", "max_steps", "epochs", "checkpoint_every"):
        if getattr(config, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if config.lr <= 0:
        p.error("--lr must be > 0")
    return args, config


def main(argv=None) -> None:
    args, config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mempack.train.trainer import TrainSetupError, run_training, validate

    try:
        validate(config)
    except TrainSetupError as err:
        raise SystemExit(f"error: {err}")
    import ray

    if args.ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.ray_address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False)  # never a stale cluster from /tmp/ray
    try:
        result = run_training(config, resume=args.resume)
    except TrainSetupError as err:
        raise SystemExit(f"error: {err}")
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))
    print(f"stage {config.stage} export: {result['export']}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {result['tracking_uri']} --host 127.0.0.1")


if __name__ == "__main__":
    main()

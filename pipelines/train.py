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

from mempack.config import ArgumentParser, add_config_arguments, add_config_file_arguments, config_from_args
from mempack.train.config import MLFLOW_WEIGHTS, TrainConfig
from mempack.train.forcing import FORCING_MODES
from mempack.train.optim import TRAINABLE_SCOPES

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def build_parser() -> ArgumentParser:
    """Run flags here; one flag per TrainConfig key is generated from the dataclass (add_config_arguments)."""
    from mempack.presets import PRESETS

    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_config_file_arguments(p, TrainConfig)
    p.add_argument(
        "--conditioning",
        choices=FORCING_MODES,
        help="how the history is made (= --forcing.mode): "
        "stage 1 default teacher, stage 2 default direct; stage 2 + teacher is the head-only control, "
        "student the k-step ablation",
    )
    p.add_argument("--student-steps", help="sampling steps of student forcing (= --forcing.student-steps)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run with this --run-name from its last checkpoint"
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print this run's per-GPU memory (weights, grads, optimizer, EMA, activations, "
        "validation), its checkpoint size and the storage it needs, and exit",
    )
    p.add_argument(
        "--plan-size",
        metavar="HxW",
        help="pixel size to plan for (default: the data's, else the preset's bucket nearest 480x832)",
    )
    p.add_argument("--ray-address", help="Ray cluster address (default: the job's cluster or a local one)")
    add_config_arguments(
        p,
        TrainConfig,
        required=("stage",),
        choices={
            "stage": (1, 2),
            "preset": tuple(PRESETS),
            "placement.strategy": PLACEMENT_STRATEGIES,
            "forcing.mode": FORCING_MODES,
            "optim.trainable": TRAINABLE_SCOPES,
            "tracking.mlflow_weights": MLFLOW_WEIGHTS,
        },
    )
    return p


def parse_args(argv=None) -> tuple[argparse.Namespace, TrainConfig]:
    p = build_parser()
    args = p.parse_args(argv)
    aliases = {"forcing.mode": args.conditioning, "forcing.student_steps": args.student_steps}
    config = config_from_args(p, TrainConfig, args, {k: v for k, v in aliases.items() if v is not None})
    if args.student_steps is not None and (config.forcing.mode or "") != "student":
        p.error("--student-steps needs --conditioning student")
    for flag, value in (
        ("--num-workers", config.distributed.num_workers),
        ("--max-steps", config.schedule.max_steps),
        ("--epochs", config.schedule.epochs),
    ):
        if value < 1:
            p.error(f"{flag} must be >= 1")
    if config.optim.lr <= 0:
        p.error("--lr must be > 0")
    if args.plan_size is not None:
        try:
            args.plan_size = tuple(int(v) for v in args.plan_size.lower().split("x"))
            assert len(args.plan_size) == 2 and min(args.plan_size) > 0
        except (ValueError, AssertionError):
            p.error(f"--plan-size must be HxW in pixels, e.g. 480x832 (got {args.plan_size!r})")
    return args, config


def plan(config: TrainConfig, plan_size: tuple[int, int] | None):
    """The run's `MemoryPlan` from its flags, without Ray or weights (what `--plan` prints; the shipped
    commands are checked with it in tests/test_shipped_commands.py). Bad input: SystemExit("error: ...")."""
    from mempack.presets import get_preset
    from mempack.train import deepspeed_config
    from mempack.train.plan import data_shapes, latent_size, plan_run

    latent, clips = data_shapes(config.data.path)
    if plan_size is None and latent is not None:
        spatial = get_preset(config.preset).vae_spatial
        plan_size = (latent[0] * spatial, latent[1] * spatial)
    try:
        if plan_size is not None:
            latent_size(get_preset(config.preset), plan_size)
        ds_config = deepspeed_config.resolve(config.distributed, config.optim)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    return plan_run(config, ds_config, plan_size, clips_per_video=clips)


def print_plan(config: TrainConfig, plan_size: tuple[int, int] | None) -> None:
    """`--plan`: the run's memory per GPU, its checkpoint size and the storage it needs, from its flags."""
    from mempack.train.checkpoint import format_checkpoint_size, plan_checkpoint_size
    from mempack.train.plan import format_plan

    memory = plan(config, plan_size)
    print(format_plan(memory))
    print(format_checkpoint_size(plan_checkpoint_size(memory, config.optim.ema_decay > 0)))


def main(argv=None) -> None:
    args, config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.plan:
        print_plan(config, args.plan_size)
        return
    from mempack.train.trainer import TrainSetupError, run_training, validate

    try:
        validate(config)
    except TrainSetupError as err:
        raise SystemExit(f"error: {err}") from None
    import ray

    if args.ray_address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.ray_address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False)  # never a stale cluster from /tmp/ray
    try:
        result = run_training(config, resume=args.resume)
    except TrainSetupError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))
    print(f"stage {config.stage} export: {result['export']}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {result['tracking_uri']} --host 127.0.0.1")


if __name__ == "__main__":
    main()

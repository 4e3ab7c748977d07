"""What prep tells Ray about its stages (no cluster): memory hints sized from the config, and the args
that keep the prep tasks spreading over nodes (data_prep.job.stage_remote_args)."""

from __future__ import annotations

from ray.data import DataContext
from ray.data._internal.logical.rules.operator_fusion import are_remote_args_compatible

from data_prep.job import PrepConfig, stage_remote_args
from data_prep.process import ClipSpec


def test_prep_tasks_get_memory_hints_from_the_config_by_default():
    config = PrepConfig()
    args = stage_remote_args(config, cluster_cpus=4, use_gpu=False)
    assert config.memory_hints
    assert args["process"]["memory"] == config.clip.worker_memory_bytes() == 2 * (512 << 20) + (512 << 20)
    assert args["encode"]["memory"] == int(0.75 * (1 << 30))  # the tiny encoder
    bigger = PrepConfig(clip=ClipSpec(max_shot_bytes=2 << 30), encoder_memory_gb=8)
    args = stage_remote_args(bigger, cluster_cpus=4, use_gpu=True)
    assert args["process"]["memory"] == 2 * (2 << 30) + (512 << 20)  # the shot buffer cap, in bytes
    assert args["encode"] == {"num_gpus": 1, "num_cpus": 0, "memory": 8 << 30}
    assert "memory" not in stage_remote_args(PrepConfig(memory_hints=False), 4, False)["process"]


def test_a_hint_larger_than_every_node_is_lowered_to_the_largest():
    args = stage_remote_args(PrepConfig(), cluster_cpus=2, use_gpu=False, node_memory=1 << 30)
    assert args["process"]["memory"] == 1 << 30 and args["encode"]["memory"] == int(0.75 * (1 << 30))


def test_the_args_keep_prep_tasks_spreading_over_nodes():
    """to_table carries exactly the encoder's args, so Ray Data fuses it into the encoder actors (a separate
    to_table operator kept every prep task on one node of the 2-node test cluster); the prep tasks take
    one small row each, which Ray Data schedules SPREAD by default."""
    for gpu in (False, True):
        args = stage_remote_args(PrepConfig(), cluster_cpus=4, use_gpu=gpu)
        assert args["to_table"] == args["encode"] and args["to_table"] is not args["encode"]
        assert are_remote_args_compatible(args["to_table"], args["encode"])
        assert "scheduling_strategy" not in args["process"]  # Ray Data's own choice for small inputs:
    context = DataContext.get_current()
    assert context.scheduling_strategy == "SPREAD" and context.large_args_threshold >= 1 << 20
    assert stage_remote_args(PrepConfig(), cluster_cpus=1, use_gpu=False)["process"]["num_cpus"] == 0.5

"""Typed configs: every key of every dataclass config is parsed to its declared type from YAML, TOML,
`--set` and generated flags; a wrong type or key is one error line; every key is a flag and printable."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from data_prep.job import PrepConfig
from data_prep.process import ClipSpec
from mempack.config import ConfigError, config_keys, dump_config, flag_name, load_config
from mempack.eval.config import EvalConfig
from mempack.sampling import GenerationConfig
from mempack.train.config import TrainConfig
from mempack.train.forcing import ForcingConfig
from tests.entry_points import run_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [TrainConfig, PrepConfig, ClipSpec, ForcingConfig, GenerationConfig, EvalConfig]


def _text_for(tp, default):
    """A value of the declared type, written as the text a user types (different from the default)."""
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return ("false" if default else "true"), (not default)
    if tp is int:
        return str((default or 0) + 1), (default or 0) + 1
    if tp is float:
        value = (default or 0.0) * 2 + 1e-5
        return f"{value:e}", value  # "1.000000e-05": YAML 1.1 reads this as a string
    return None  # str-like keys have validated value sets (mode, rope...): covered below


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_and_bool_key_is_parsed_to_its_type_from_set_yaml_toml(cls, tmp_path):
    sets, expected = [], {}
    for key in config_keys(cls):
        pair = _text_for(key.type, key.default)
        if pair is None or key.name in ("stage",) or key.name.startswith("model.frames"):
            continue  # validated ranges: covered by their own configs' tests
        sets.append(f"{key.name}={pair[0]}")
        expected[key.name] = pair[1]
    assert expected, cls
    from_set = load_config(cls, None, sets)
    nested: dict = {}
    for item in sets:
        key, _, raw = item.partition("=")
        *parents, leaf = key.split(".")
        cursor = nested
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = raw  # written as text: the file parser sees strings like "1.000000e-05"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("\n".join(_yaml_lines(nested)))
    from_yaml = load_config(cls, yaml_file)
    toml_file = tmp_path / "c.toml"
    toml_file.write_text(_toml(nested))
    from_toml = load_config(cls, toml_file)
    for config in (from_set, from_yaml, from_toml):
        flat = _flat(dataclasses.asdict(config))
        for key, value in expected.items():
            assert type(flat[key]) is type(value), (key, flat[key])
            assert flat[key] == pytest.approx(value), (key, flat[key], value)


def _yaml_lines(nested: dict, indent: str = "") -> list[str]:
    lines = []
    for key, value in nested.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key}:", *_yaml_lines(value, indent + "  ")]
        else:
            lines.append(f"{indent}{key}: {value}")  # unquoted: YAML's own typing of "1e-05" etc.
    return lines


def _toml(nested: dict) -> str:
    top = [f'{k} = "{v}"' for k, v in nested.items() if not isinstance(v, dict)]
    tables = [
        f"[{k}]\n" + "\n".join(f'{kk} = "{vv}"' for kk, vv in v.items())
        for k, v in nested.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top + tables) + "\n"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_paper_learning_rate_from_yaml_which_reads_it_as_a_string(tmp_path):
    assert isinstance(yaml.safe_load("lr: 1e-5")["lr"], str)  # the bug this module exists for
    path = tmp_path / "train.yaml"
    path.write_text("lr: 1e-5\nforcing:\n  mode: direct\nrun_name: 2024\n")
    config = load_config(TrainConfig, path, ["stage=2"])
    assert config.optim.lr == 1e-5 and config.forcing.mode == "direct"
    assert config.tracking.run_name == "2024"  # a str key keeps YAML's number as its text
    assert config.output == "outputs/train/stage2"  # the stage-derived default follows the override


@pytest.mark.parametrize(
    "override, needle",
    [
        ("lr=fast", "config key 'optim.lr'"),
        ("max_steps=1.5", "config key 'schedule.max_steps'"),
        ("use_gpu=maybe", "config key 'distributed.use_gpu'"),
        ("forcing.student_steps=x", "config key 'forcing.student_steps'"),
        ("forcing.mode=sideways", "forcing mode must be one of"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("forcing.nonsense=1", "unknown config key 'forcing.nonsense'"),
        ("lr", "is not key=value"),
    ],
)
def test_wrong_type_or_key_is_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [override])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_round_trip_through_print_config(cls, tmp_path):
    path = tmp_path / "printed.yaml"
    path.write_text(dump_config(load_config(cls)))
    assert load_config(cls, path) == load_config(cls)


@pytest.mark.parametrize(
    "script, cls, required",
    [("pipelines/train.py", TrainConfig, ["--stage", "1"]), ("pipelines/prep.py", PrepConfig, [])],
)
def test_every_key_is_a_flag_and_print_config_shows_the_resolved_values(script, cls, required):
    """The script's main in this process (tests/entry_points.py)."""
    help_text = _printed([script, "--help"])
    for key in config_keys(cls):
        assert flag_name(key.name) in help_text, key.name
    first_float = next(k for k in config_keys(cls) if k.type is float)
    out = _printed([script, *required, flag_name(first_float.name), "2.5e-3", "--print-config"])
    printed = _flat(yaml.safe_load(out))
    assert printed[first_float.name] == 2.5e-3
    assert set(printed) == {k.name for k in config_keys(cls)}


def _printed(argv: list[str]) -> str:
    status, out, err = run_main(argv)
    assert status == 0, err
    return out


def test_train_flags_set_and_aliases_resolve_in_order():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_train_cli_for_config_test", ROOT / "pipelines" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, config = module.parse_args(
        [
            "--stage",
            "2",
            "--set",
            "lr=1e-4",
            "--lr",
            "3e-5",
            "--conditioning",
            "student",
            "--student-steps",
            "3",
            "--no-use-gpu",
            "--forcing.guidance",
            "2",
        ]
    )
    assert (config.optim.lr, config.forcing.mode, config.forcing.student_steps) == (3e-5, "student", 3)
    assert config.distributed.use_gpu is False
    assert config.forcing.guidance == 2.0 and config.output == "outputs/train/stage2"


# what a config file written before TrainConfig had parts looks like (`--print-config` of then): flat keys
FLAT_YAML = """\
stage: 1
data: /data/prep
lr: 1e-5
memory_lr: 2.0e-6
batch_size: 2
max_steps: 400
curriculum: cycle
forcing:
  mode: teacher
stage1_clips: late
num_workers: 8
use_gpu: true
placement_strategy: SPREAD
zero_stage: 3
gradient_checkpointing: true
checkpoint_every: 0
checkpoint_minutes: 20
checkpoint_scratch: /scratch
mlflow_uri: null
sample_every: 50
sample_prompt: a kite
sample_steps: 4
mlflow_weights: reference
"""


def test_a_config_file_with_the_flat_keys_of_before_the_parts_loads_into_the_parts(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(FLAT_YAML)
    config = load_config(TrainConfig, path)
    assert config.data == type(config.data)(path="/data/prep", curriculum="cycle", batch_size=2, stage1_clips="late")
    assert (config.optim.lr, config.optim.memory_lr, config.schedule.max_steps) == (1e-5, 2e-6, 400)
    d, p, c = config.distributed, config.placement, config.checkpoint
    assert (d.num_workers, d.use_gpu, d.zero_stage, d.gradient_checkpointing) == (8, True, 3, True)
    assert p.strategy == "SPREAD" and (c.every_steps, c.every_minutes, c.scratch) == (0, 20.0, "/scratch")
    v = config.validation
    assert (v.every, v.prompt, v.steps, config.tracking.mlflow_weights) == (50, "a kite", 4, "reference")
    assert config.forcing.mode == "teacher"
    # the same file in the new layout (what --print-config writes now) is the same config
    printed = tmp_path / "new.yaml"
    printed.write_text(dump_config(config))
    assert "optim" in yaml.safe_load(printed.read_text()) and load_config(TrainConfig, printed) == config
    # old keys in --set and as overrides of a file
    again = load_config(TrainConfig, path, ["lr=3e-5", "data=/other", "sample_every=0"])
    assert (again.optim.lr, again.data.path, again.validation.every, again.data.batch_size) == (3e-5, "/other", 0, 2)


def test_the_flat_flags_users_type_set_the_parts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_train_cli_flat_flags", ROOT / "pipelines" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flat = "--stage 1 --lr 2e-4 --max-steps 9 --num-workers 4 --checkpoint-minutes 15 --sample-every 3"
    flat += " --mlflow-uri sqlite:///x.db --zero-stage 3 --gradient-checkpointing --stage1-clips all --curriculum cycle"
    _, config = module.parse_args([*flat.split(), "--data", "/d", "--placement-strategy", "SPREAD"])
    _, dotted = module.parse_args(
        "--stage 1 --optim.lr 2e-4 --schedule.max-steps 9 --distributed.num-workers 4 --checkpoint.every-minutes 15 "
        "--validation.every 3 --tracking.mlflow-uri sqlite:///x.db --distributed.zero-stage 3 "
        "--distributed.gradient-checkpointing --data.stage1-clips all --data.curriculum cycle --data.path /d "
        "--placement.strategy SPREAD".split()
    )
    assert config == dotted
    assert (config.optim.lr, config.schedule.max_steps, config.distributed.num_workers) == (2e-4, 9, 4)
    assert (config.checkpoint.every_minutes, config.validation.every, config.tracking.mlflow_uri) == (
        15.0,
        3,
        "sqlite:///x.db",
    )
    assert (config.distributed.zero_stage, config.distributed.gradient_checkpointing) == (3, True)
    assert (config.data.stage1_clips, config.data.curriculum, config.data.path) == ("all", "cycle", "/d")
    assert config.placement.strategy == "SPREAD"
    assert config.lr == 2e-4  # read-only flat attribute for code written against the flat config
    with pytest.raises(AttributeError, match="optim.lr"):
        config.lr = 1.0


def test_evaluate_flags_are_eval_config_keys():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_eval_cli_for_config_test", ROOT / "pipelines" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inputs, config = module.parse_args(
        ["a.mp4", "b", "--dino", "/d", "--quiet", "--set", "experiment=e", "--json", "j"]
    )
    assert inputs == ["a.mp4", "b"]
    assert config == EvalConfig(json="j", dino="/d", experiment="e", quiet=True)

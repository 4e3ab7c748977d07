"""The resume rule is by part of TrainConfig: changing any setting of a part that says how long or how a run
is watched resumes, changing any setting of a part that defines what is trained is refused with one line
naming it, and every part is in exactly one of the two sets. Digests written before the config had parts
still resume by the same rule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing

import pytest
import torch

from mempack.config import config_keys, load_config
from mempack.layout import DIGEST_FILE
from mempack.train.checkpoint import (
    MAY_CHANGE_ON_RESUME,
    MUST_MATCH_ON_RESUME,
    ResumeMismatchError,
    check_or_write,
    config_digest,
    data_digest,
)
from mempack.train.config import TrainConfig

# a valid other value for each key whose values are a closed set (the rest: number + 1, not bool, other text)
OTHER = {
    "stage": 2,
    "preset": "framepack-f1",
    "model.rope": "relative",
    "model.structure": "B",
    "model.memory_init": "zero",
    "model.memorize_input": "segment",
    "model.pooling": "learned",
    "forcing.mode": "direct",
    "data.curriculum": "cycle",
    "data.stage1_clips": "late",
    "optim.trainable": "head",
    "placement.strategy": "SPREAD",
    "tracking.mlflow_weights": "reference",
}


def _other(key) -> object:
    if key.name in OTHER:
        return OTHER[key.name]
    tp = key.type
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return not key.default
    if tp is int:
        return (key.default or 0) + 1
    if tp is float:
        return (key.default or 0.0) * 2 + 0.5  # stays in [0, 1) for ema_decay 0.0
    return f"{key.default or ''}other"


def _changed(config: TrainConfig, key) -> TrainConfig:
    try:
        return load_config(config, values={key.name: _other(key)})
    except ValueError as err:  # a new key with a closed set of values
        pytest.fail(f"add a valid other value for {key.name} to OTHER ({err})")


@pytest.fixture
def started(tmp_path):
    """A run that has started: its digest written (no Parquet files: the data digest is of an empty index)."""
    config = load_config(TrainConfig, values={"data": str(tmp_path / "data"), "output": str(tmp_path / "run")})
    check_or_write(config, {}, tmp_path / "run", resume=False)
    return config, tmp_path / "run"


def test_every_part_is_either_allowed_or_refused():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert MAY_CHANGE_ON_RESUME | MUST_MATCH_ON_RESUME == names
    assert not MAY_CHANGE_ON_RESUME & MUST_MATCH_ON_RESUME


@pytest.mark.parametrize("key", list(config_keys(TrainConfig)), ids=lambda key: key.name)
def test_any_setting_of_a_may_change_part_resumes_of_a_must_match_part_is_refused(started, key):
    config, out = started
    changed = _changed(config, key)
    assert changed != config
    if key.name.split(".")[0] in MAY_CHANGE_ON_RESUME:
        check_or_write(changed, {}, out, resume=True)  # no error: the same run, watched differently or longer
    else:
        with pytest.raises(ResumeMismatchError, match=rf"^--resume: {key.name} \(--[\w.-]+\) differs from") as err:
            check_or_write(changed, {}, out, resume=True)
        assert "\n" not in str(err.value)


def test_the_flag_users_type_is_named(started):
    config, out = started
    lr = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=3e-5, memory_lr=1e-6))
    with pytest.raises(ResumeMismatchError, match=r"optim.lr \(--lr\), optim.memory_lr \(--memory-lr\) differ from"):
        check_or_write(lr, {}, out, resume=True)


# the version-1 digest (flat settings, before the config had parts), as mempack wrote it
V1_MUST_MATCH = (
    "stage data preset pretrained model init seed forcing curriculum stage1_clips lr memory_lr trainable "
    "weight_decay grad_clip warmup_steps ema_decay batch_size num_workers use_gpu deepspeed zero_stage "
    "gradient_checkpointing"
).split()


def _v1_digest(config: TrainConfig) -> dict:
    def sha(value):
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def flat(name):
        value = getattr(config, name) if name != "data" else config.data.path
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    return {"data": data_digest(config.data.path, {}), "config": {k: sha(flat(k)) for k in V1_MUST_MATCH}}


def test_a_digest_from_before_the_parts_resumes_by_the_same_rule(tmp_path):
    config = load_config(TrainConfig, values={"data": str(tmp_path / "data"), "output": str(tmp_path / "run")})
    out = tmp_path / "run"
    out.mkdir()
    (out / DIGEST_FILE).write_text(json.dumps(_v1_digest(config)))
    check_or_write(config, {}, out, resume=True)
    check_or_write(load_config(config, values={"max_steps": 400, "sample_every": 5}), {}, out, resume=True)
    for flat, dotted in (("lr", "optim.lr"), ("zero_stage", "distributed.zero_stage"), ("seed", "seed")):
        key = next(k for k in config_keys(TrainConfig) if k.name == dotted)
        with pytest.raises(ResumeMismatchError, match=rf"^--resume: {dotted} \(--{flat.replace('_', '-')}\) differs"):
            check_or_write(load_config(config, values={flat: _other(key)}), {}, out, resume=True)


def test_a_part_in_neither_set_cannot_start_a_run():
    @dataclasses.dataclass
    class WithANewPart(TrainConfig):
        new_knob: int = 0

    with pytest.raises(RuntimeError, match="new_knob"):
        config_digest(WithANewPart())


def test_a_checkpoint_without_frozen_weights_loads_and_anything_else_missing_is_refused():
    """Checkpoints leave frozen weights out (stage 2's backbone): the module load accepts exactly that."""
    from mempack.model import MemoryPackTransformer
    from mempack.train.loop import load_trained_part

    model = MemoryPackTransformer.from_preset("tiny", seed=0)
    model.set_trainable("head")
    source = MemoryPackTransformer.from_preset("tiny", seed=1)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    trained = {k: v for k, v in source.state_dict().items() if k not in frozen}  # what DeepSpeed writes
    assert frozen and len(trained) < len(source.state_dict())
    load_trained_part(trained, model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    head = next(name for name, p in model.named_parameters() if p.requires_grad)
    dropped = {k: v for k, v in trained.items() if k != head}
    with pytest.raises(RuntimeError, match="missing"):
        load_trained_part(dropped, model)
    with pytest.raises(RuntimeError, match="unexpected"):
        load_trained_part({**trained, "not.a.weight": torch.zeros(1)}, model)

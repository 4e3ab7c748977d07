"""Typed dataclass configs: defaults in code, a YAML/TOML file on top, `--set key=value`, then CLI flags.

The dataclasses stay plain `dataclasses` (library code builds them directly); this module turns
untyped input into them. Every layer is merged into one nested dict and validated once by pydantic's
`TypeAdapter` against the dataclass's declared field types, so `lr: 1e-5` (which YAML 1.1 reads as a
*string*), `--set lr=1e-5` and `--lr 1e-5` all arrive as the float 1e-5, and `--max-steps 1.5` is
one error naming the key. Why pydantic: it is already installed with Ray and MLflow (no new
dependency), it is actively maintained, it validates stdlib dataclasses as they are (running their
`__post_init__` checks) and understands every annotation they use (`X | None`, `Literal`, tuples,
nested dataclasses); OmegaConf would add a package (and its pinned ANTLR runtime) and supports neither
`Literal` nor unions other than Optional in structured configs.

Nested dataclasses are addressed with dots (`clip.max_shot_seconds=30`). `add_config_arguments` generates
one CLI flag per key from the dataclass itself (`--lr`, `--clip.max-shot-seconds`), with the field's
trailing source comment as its help, so a field added to a config is a flag without touching the CLI.

A config that was split into parts keeps its old flat keys: a class attribute `ALIASES` ({old key: dotted
key}, e.g. TrainConfig's {"lr": "optim.lr"}) makes `--lr`, `--set lr=...` and `lr:` in a config file
mean `optim.lr`, so the flags users type and the files they wrote keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import re
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

T = TypeVar("T")
FLAG_PREFIX = "config:"  # argparse dest of a generated flag: "config:" + dotted key


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message is one line that names the key."""


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One leaf key of a (nested) dataclass config."""

    name: str  # dotted: "clip.max_shot_seconds"
    type: Any
    default: Any
    help: str


# ---------------------------------------------------------------------------------------------- types


# Every command-line entry point shares this parser: argparse answers a bad argument with its whole usage
# block and then the error; on a cluster log or in CI the line that matters drowns. Here a bad argument
# prints exactly one `error: ...` line that names `--help`, and exits with argparse's status 2.
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: <what> (see <prog> --help)`)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (also through `X | None`), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for arg in _union_args(tp) or ():
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    if typing.get_origin(tp) is typing.Literal:
        return any(isinstance(a, str) for a in typing.get_args(tp))
    return any(_accepts_str(a) for a in (_union_args(tp) or ()))


def _accepts_none(tp: Any) -> bool:
    return tp is type(None) or type(None) in (_union_args(tp) or ())


def _is_bool(tp: Any) -> bool:
    return tp is bool or (
        _union_args(tp) is not None
        and bool in _union_args(tp)
        and all(a in (bool, type(None)) for a in _union_args(tp))
    )


def type_name(tp: Any) -> str:
    """`float`, `str | None`, `Literal['a', 'b']`: how --help and errors show a field's type."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


@cache
def _adapter(cls: type):
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


@cache
def _comments(cls: type) -> dict[str, str]:
    """Trailing `# comment` of each field line in the class source: the field's documentation."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*?#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_keys(cls: type, prefix: str = "") -> Iterator[ConfigKey]:
    """Every leaf key of the dataclass `cls`, nested dataclasses flattened with dots, in field order."""
    hints, comments = _hints(cls), _comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        nested = _dataclass_of(tp)
        if nested is not None and _union_args(tp) is None:
            yield from config_keys(nested, f"{prefix}{f.name}.")
        else:
            yield ConfigKey(f"{prefix}{f.name}", tp, _field_default(f), comments.get(f.name, ""))


def aliases(cls: type) -> dict[str, str]:
    """{old flat key: dotted key} of a config split into parts (its `ALIASES` class attribute), else {}."""
    return dict(getattr(cls, "ALIASES", {}))


def canonical_key(cls: type, key: str) -> str:
    """The dotted key an old flat key now is (`lr` → `optim.lr`); other keys as given.

    An alias that is also the name of a part (`data`, now the part with `data.path`) means the old leaf
    whenever it is given a value rather than a mapping, i.e. always on the command line.
    """
    target = aliases(cls).get(key)
    if target is None:
        return key
    fields = {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls) if f.init}
    return target if key not in fields or _dataclass_of(fields[key]) is not None else key


def key_type(cls: type, dotted: str) -> Any:
    """The declared type of a dotted key; ConfigError for an unknown one."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls) if f.init}
        if part not in hints:
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"unknown config key {where!r}; known: {', '.join(sorted(hints))}")
        tp = hints[part]
        if i == len(parts) - 1:
            return tp
        nested = _dataclass_of(tp)
        if nested is None:
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a {type_name(tp)}, it has no sub-keys")
        cls = nested
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- merge
def _normalise(cls: type, data: dict, where: str = "") -> dict:
    """Check keys against `cls` and undo YAML's guesses where the field is a string.

    YAML reads `run_name: 2024` as an int and pydantic (rightly) refuses an int for a `str`; the
    user meant the text, so numbers become their text for str-typed fields. Unknown keys are errors
    (pydantic would silently drop them).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where.rstrip('.') or '(top level)'!r} needs a mapping, got {data!r}")
    hints = {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls) if f.init}
    old = aliases(cls)
    if old:  # a file written with the flat keys of before the split: each key to its part
        moved: dict = {}
        for key, value in data.items():
            target = canonical_key(cls, key) if key in old and not isinstance(value, dict) else key
            moved = _deep_update(moved, _nest(target, value))
        data = moved
    out = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"unknown config key {where + str(key)!r}; known: {', '.join(sorted(hints))}")
        tp = hints[key]
        nested = _dataclass_of(tp)
        if nested is not None and isinstance(value, dict):
            out[key] = _normalise(nested, value, f"{where}{key}.")
        elif (
            _accepts_str(tp)
            and not isinstance(value, (str, bool, dict, list))
            and value is not None
            and isinstance(value, (int, float, datetime.date))
        ):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def _deep_update(base: dict, new: dict) -> dict:
    merged = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nest(dotted: str, value: Any) -> dict:
    parts = dotted.split(".")
    nested: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def parse_value(cls: type, dotted: str, raw: str) -> Any:
    """A command-line string as the value for `dotted`: text stays text for str fields, else YAML.

    `null`/`none`/`~` mean None where the field allows None; lists and mappings are YAML
    (`--set dims=[1,2]`); everything else is converted by the validator against the declared type,
    so `1e-5` becomes a float for a float field and stays the text "1e-5" for a str field.
    """
    tp = key_type(cls, dotted)
    text = raw.strip()
    if _accepts_none(tp) and text.lower() in ("null", "none", "~", ""):
        return None
    if _accepts_str(tp):
        return raw
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (list, dict)) or value is None else raw


def read_config_file(path: str | Path) -> dict:
    """A YAML or TOML file (by suffix) as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {' '.join(str(err).split())}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _format_error(err: Exception) -> str:
    """The first problem of a pydantic ValidationError as one line: `key: what (got value)`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    got = "" if isinstance(shown, dict) else f" (got {shown!r})"
    more = len(err.errors()) - 1
    where = f"config key {key!r}: " if key else ""  # a whole config's own check names its keys itself
    return f"{where}{message}{got}" + (f" [and {more} more]" if more else "")


def build_config(cls: type[T], values: dict) -> T:
    """Validate a nested dict against the dataclass `cls` (types converted, `__post_init__` run)."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_python(_normalise(cls, values))
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    except (TypeError, ValueError) as err:  # raised by a __post_init__ outside pydantic's wrapping
        raise ConfigError(" ".join(str(err).split())) from None


def load_config(
    default: T | type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """`default` (a dataclass, or an instance whose values are the base) updated by the file at `path`
    (YAML or TOML), then by `key=value` overrides, then by `values` ({dotted key: value}, e.g. flags).

    Raises ConfigError (a ValueError) with one line for an unknown key or a value of the wrong type,
    FileNotFoundError for a missing file.
    """
    cls = default if isinstance(default, type) else type(default)
    merged: dict = {} if isinstance(default, type) else dataclasses.asdict(default)
    if path:
        merged = _deep_update(merged, _normalise(cls, read_config_file(path)))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        key = canonical_key(cls, key.strip())
        merged = _deep_update(merged, _nest(key, parse_value(cls, key, raw)))
    for key, value in (values or {}).items():
        key = canonical_key(cls, key)
        key_type(cls, key)
        merged = _deep_update(merged, _nest(key, parse_value(cls, key, value) if isinstance(value, str) else value))
    return build_config(cls, merged)


def flatten(values: dict, prefix: str = "") -> dict:
    """A nested mapping (a config's `to_dict`) as {dotted key: leaf value}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_dict(config: Any) -> dict:
    """A config as plain data (for logging to MLflow and summary files)."""
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    """The resolved config as YAML (what `--print-config` shows; loadable again with `--config`)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------- CLI
def flag_name(dotted: str) -> str:
    """`clip.target_fps` → `--clip.max-shot-seconds`."""
    return "--" + dotted.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    choices: dict[str, Any] | None = None,
    required: tuple[str, ...] = (),
    title: str | None = None,
) -> None:
    """One flag per key of `cls`: `--KEY VALUE` (booleans: `--KEY/--no-KEY`), default None = not given.
    A key with an old flat name (`cls.ALIASES`) has that flag first (`--lr`, then `--optim.lr`).

    Values stay strings here and are typed by `load_config`, so a flag and `--set` convert and
    fail the same way. `skip`: keys the CLI handles itself; `choices`: allowed values shown in --help
    and checked by argparse; `required`: keys that must be given on the command line.
    """
    choices = choices or {}
    group = parser.add_argument_group(
        title
        or f"{cls.__name__} keys (also settable with --set KEY=VALUE "
        "or a --config file; --print-config shows the resolved values)"
    )
    old_names = {dotted: flat for flat, dotted in aliases(cls).items()}
    for key in config_keys(cls):
        if key.name in skip:
            continue
        flags = [flag_name(old_names[key.name])] if key.name in old_names else []
        flags.append(flag_name(key.name))
        default = "" if key.default is dataclasses.MISSING else f", default: {key.default!r}"
        help_text = f"{key.help + ' ' if key.help else ''}({type_name(key.type)}{default})".replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=FLAG_PREFIX + key.name, default=None, help=help_text)
        if _is_bool(key.type):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = key.name.rsplit(".", 1)[-1].upper()
            if key.name in choices:
                kwargs["choices"] = list(choices[key.name])
                kwargs["type"] = type(kwargs["choices"][0])
                kwargs.pop("metavar")
            elif typing.get_origin(key.type) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(key.type))
                kwargs.pop("metavar")
        if key.name in required:
            kwargs["required"] = True
        group.add_argument(*flags, **kwargs)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """{dotted key: value} of the generated flags that were given."""
    return {
        dest[len(FLAG_PREFIX) :]: value
        for dest, value in vars(args).items()
        if dest.startswith(FLAG_PREFIX) and value is not None
    }


def add_config_file_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """`--config FILE`, `--set KEY=VALUE` (repeatable) and `--print-config`."""
    parser.add_argument("--config", help=f"YAML/TOML file with {cls.__name__} keys")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, dotted for nested ones (e.g. --set lr=1e-5)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (every key, after --config/--set/flags) and exit",
    )


def config_from_args(
    parser: argparse.ArgumentParser, cls: type[T], args: argparse.Namespace, values: dict[str, Any] | None = None
) -> T:
    """The config of a command line (file, --set, flags, then `values`); a bad one is parser.error's one line.

    With --print-config it prints the resolved config and exits 0.
    """
    try:
        config = load_config(cls, args.config, args.set, {**flag_values(args), **(values or {})})
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    if getattr(args, "print_config", False):
        sys.stdout.write(dump_config(config))
        sys.exit(0)
    return config


def parse_config(cls: type[T], argv: list[str] | None = None, description: str | None = None, **flags: Any) -> T:
    """A whole command line made from one dataclass: its keys as flags (`flags`: add_config_arguments'
    skip/choices/required), `--config`, `--set` and `--print-config`; what the bench/ scripts parse with."""
    parser = ArgumentParser(description=description)
    add_config_file_arguments(parser, cls)
    add_config_arguments(parser, cls, **flags)
    return config_from_args(parser, cls, parser.parse_args(argv))

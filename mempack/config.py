"""Dataclass configs: defaults in code, a YAML/TOML file on top, CLI `key=value` overrides last.

Nested dataclasses are addressed with dots (`clip.target_fps=12`). Values from the CLI are parsed
as YAML scalars, so numbers, booleans and `null` arrive typed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _merge(obj: Any, values: dict, where: str = "") -> Any:
    if not dataclasses.is_dataclass(obj):
        return values
    known = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown config key {where + key!r}; known: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        changes[key] = _merge(current, value, f"{where}{key}.") if dataclasses.is_dataclass(current) else value
    return dataclasses.replace(obj, **changes)


def load_config(default: T, path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """`default` updated by the file at `path` (YAML or TOML), then by `key=value` overrides."""
    config = default
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        config = _merge(config, data)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        nested: dict = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = yaml.safe_load(raw)
        config = _merge(config, nested)
    return config


def to_dict(config: Any) -> dict:
    """A config as plain data (for logging to MLflow and summary files)."""
    return dataclasses.asdict(config)

"""Console scripts (`mempack-prep`, `mempack-train`, `mempack-infer`, `mempack-eval`, `mempack-demo`).

Each is the `main` of the matching `pipelines/*.py`, imported when the command runs, so
`python pipelines/prep.py ...` and `mempack-prep ...` are one program with one argument parser.
The `pipelines` folder is installed as a package beside `mempack` for this (pyproject.toml).
"""

from __future__ import annotations

import importlib
import sys


def _run(module: str) -> None:
    sys.exit(importlib.import_module(f"pipelines.{module}").main())


def prep() -> None:
    """`mempack-prep`: pipelines/prep.py."""
    _run("prep")


def train() -> None:
    """`mempack-train`: pipelines/train.py."""
    _run("train")


def infer() -> None:
    """`mempack-infer`: pipelines/infer.py."""
    _run("infer")


def evaluate() -> None:
    """`mempack-eval`: pipelines/evaluate.py."""
    _run("evaluate")


def demo() -> None:
    """`mempack-demo`: pipelines/demo.py."""
    _run("demo")

"""Packaging: the version is written once, and the build reads that one."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import mempack

ROOT = Path(__file__).resolve().parents[1]


def test_the_build_reads_the_version_from_mempack():
    from setuptools.config.pyprojecttoml import read_configuration

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    # what `pip install` / `python -m build` put in the wheel's metadata
    assert read_configuration(ROOT / "pyproject.toml", expand=True)["project"]["version"] == mempack.__version__


def test_installed_metadata_agrees_with_the_package():
    """MLflow runs are tagged with the installed distribution's version; it must be the code's."""
    assert importlib.metadata.version("mempack") == mempack.__version__

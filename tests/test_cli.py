"""Every entry point answers a bad argument with exactly one `error:` line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    (["pipelines/prep.py", "--limit", "0"], "--limit must be >= 1"),
    (["pipelines/train.py", "--stage", "3"], "invalid choice: 3"),
    (["pipelines/train.py", "--stage", "1", "--set", "nonsense=1"], "unknown config key 'nonsense'"),
    (["pipelines/infer.py", "--seconds", "0"], "--seconds must be > 0"),
    (["pipelines/infer.py", "--seconds", "5", "--sections", "2"], "not allowed with argument"),
    (["pipelines/evaluate.py"], "the following arguments are required: VIDEO_OR_DIR"),
    (["pipelines/demo.py", "--sections", "0"], "--sections must be >= 1"),
]


@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(a[0:1] + a[1:2]) + f"-{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_argument_is_exactly_one_error_line(argv, needle):
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0] and "--help" in lines[0], lines[0]

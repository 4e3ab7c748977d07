"""Every entry point answers a bad argument with exactly one `error:` line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.entry_points import run_main

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    (["pipelines/prep.py", "--limit", "0"], "--limit must be >= 1"),
    (["pipelines/train.py", "--stage", "3"], "invalid choice: 3"),
    (["pipelines/train.py", "--stage", "1", "--set", "nonsense=1"], "unknown config key 'nonsense'"),
    (["pipelines/train.py", "--stage", "1", "--lr", "fast"], "config key 'optim.lr': Input should be a valid number"),
    (["pipelines/train.py", "--stage", "1", "--set", "max_steps=1.5"], "config key 'schedule.max_steps'"),
    (["pipelines/train.py", "--stage", "2", "--set", "trainable=backbone"], "trainable must be one of"),
    (["pipelines/prep.py", "--clip.max-shot-seconds", "long"], "config key 'clip.max_shot_seconds'"),
    (["pipelines/infer.py", "--seconds", "0"], "--seconds must be > 0"),
    (["pipelines/infer.py", "--seconds", "5", "--sections", "2"], "not allowed with argument"),
    (
        ["pipelines/infer.py", "--positions", "sideways", "--sections", "1", "--steps", "1"],
        "Input should be 'absolute'",
    ),
    (["pipelines/evaluate.py"], "the following arguments are required: VIDEO_OR_DIR"),
    (["pipelines/demo.py", "--sections", "0"], "--sections must be >= 1"),
]


def assert_one_error_line(status: int, stderr: str, needle: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and needle in lines[0] and "--help" in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, needle", CASES, ids=[" ".join(a[0:1] + a[1:2]) + f"-{i}" for i, (a, _) in enumerate(CASES)]
)
def test_bad_argument_is_exactly_one_error_line(argv, needle):
    status, _, stderr = run_main(argv)
    assert_one_error_line(status, stderr, needle)


@pytest.mark.parametrize("case", [0, 1, 7], ids=["prep", "train", "infer"])
def test_a_real_process_answers_with_the_same_line(case):
    """The cases above run each script's main in this process (a process each cost ~11 s of imports); one per
    kind of check through a real interpreter shows the shell gets that same line and status."""
    argv, needle = CASES[case]
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_error_line(result.returncode, result.stderr, needle)
    status, _, stderr = run_main(argv)
    assert (result.returncode, result.stderr.strip()) == (status, stderr.strip())


def test_console_scripts_are_the_pipelines_entry_points():
    """pyproject's [project.scripts] targets import from the package and run: `--help` of each is the script's own."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"mempack-prep", "mempack-train", "mempack-infer", "mempack-eval"} <= set(scripts)
    probe = (
        "import contextlib, importlib, io, sys\n"
        f"scripts = {scripts!r}\n"
        "for name, target in scripts.items():\n"
        "    module, func = target.split(':')\n"
        "    sys.argv = [name, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            getattr(importlib.import_module(module), func)()\n"
        "        except SystemExit as err:\n"
        "            assert err.code in (0, None), (name, err.code)\n"
        "    print(name, out.getvalue().splitlines()[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd="/",
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    usage = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(usage) == set(scripts)
    assert all(line.startswith(f"usage: {name} ") for name, line in usage.items()), usage

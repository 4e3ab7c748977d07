"""Run a `pipelines/` script's `main` in the test's own process, as `python pipelines/X.py ARGS` would.

A process per call costs ~11 s of imports (torch, diffusers, ray) on 2 cores; the suite checks the one-line
errors and printed configs of the entry points in-process, and tests/test_cli.py checks, one case per kind,
that a real interpreter gives the shell the same line and status.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from unittest import mock


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `python argv[0] argv[1:]`: the script's main with sys.argv set (argparse
    names the program after it), and what the interpreter does at SystemExit: a message goes to stderr with
    status 1, a number is the status. Any other exception propagates, and fails the test as a traceback would."""
    module = importlib.import_module(argv[0].removesuffix(".py").replace("/", "."))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.object(sys, "argv", list(argv)):
        try:
            module.main()
        except SystemExit as exit_:
            code = exit_.code
    if isinstance(code, str):
        return 1, out.getvalue(), err.getvalue() + code + "\n"
    return code or 0, out.getvalue(), err.getvalue()


def error_line(argv: list[str]) -> str:
    """The last stderr line of a run that must fail with `error:` (argparse's `X.py: error:` too), no traceback."""
    status, _, stderr = run_main(argv)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert status != 0 and lines and lines[-1].startswith(("error:", f"{argv[0].split('/')[-1]}: error:")), stderr
    assert "Traceback" not in stderr
    return lines[-1]

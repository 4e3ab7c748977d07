"""What every command-line entry point shares: an argument parser whose errors are one line.

argparse answers a bad argument with its whole usage block and then the error; on a cluster log or
in CI the line that matters drowns. Here a bad argument prints exactly one `error: ...` line that
names `--help`, and exits with argparse's status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: <what> (see <prog> --help)`)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)

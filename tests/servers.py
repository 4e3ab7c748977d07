"""Servers the tests start as subprocesses on 127.0.0.1: waiting for them, and an MLflow tracking server.

A server that dies at start-up (its port taken between `free_port` and its own bind: the Ray runs in the
other xdist worker open ports all the time) is seen at once, with its log in the error, instead of after
the whole wait; a fresh port is tried when the port was the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port

MLFLOW = Path(sys.executable).parent / "mlflow"
PORT_TAKEN = ("address already in use", "errno 98")


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    """`predicate()`'s first truthy value, polled every `every` s; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def url_up(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group a test started, SIGKILL after `grace` s (a `ray start --block` node has
    taken the whole minute the old grace gave it); a group already gone is fine. The group is the test's
    own (`start_new_session`), so the SIGKILL leaves nothing of it behind."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass


def start_mlflow_server(
    backend: str,
    artifacts: Path,
    log: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> tuple[subprocess.Popen, str]:
    """(process, URL) of an `mlflow server` that answers /health, its output appended to `log`.

    `port` None: a free one, and up to two more if the first was taken before the server bound it. A
    given port (a server coming back where its clients expect it) is tried once."""
    for _attempt in range(3 if port is None else 1):
        chosen = port or free_port()
        process = _spawn(backend, artifacts, log, chosen, env)
        url = f"http://127.0.0.1:{chosen}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if url_up(f"{url}/health"):
                return process, url
            time.sleep(0.5)
        exited = process.poll()
        stop_group(process)
        text = log.read_text(errors="replace") if log.is_file() else ""
        if exited is None or port is not None or not any(s in text.lower() for s in PORT_TAKEN):
            state = f"not up after {timeout:.0f} s" if exited is None else f"exited {exited}"
            raise RuntimeError(f"MLflow server on port {chosen} {state}; its log ends:\n{text[-2000:]}")
    raise RuntimeError(f"MLflow server: three ports were taken before it could bind; its log ends:\n{text[-2000:]}")


def _spawn(backend: str, artifacts: Path, log: Path, port: int, env: dict[str, str] | None) -> subprocess.Popen:
    args = ["server", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(MLFLOW), *args], env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )

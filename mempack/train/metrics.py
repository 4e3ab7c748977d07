"""A rank-0 MLflow logger that writes into one run, across restarts, and survives an MLflow outage.

Ray Train V2 rejects `MLflowLoggerCallback`, and `setup_mlflow` opens a new run on every restart.
Here the driver creates (or, on --resume, reuses) the run and hands its id to the workers; rank 0
logs through `MlflowClient` with explicit steps, so a restarted worker continues the same curves.

A tracking server that goes away must not stop a multi-day training run: `log` only appends to a
bounded in-memory buffer and returns; a background thread sends the buffer in batches, and when the
server does not answer it warns once, keeps the metrics and retries with a growing pause until the
server is back (then it says so and sends what it kept). `close` waits a bounded time for the last
metrics; what still could not be sent is written to `spill_path` (JSON lines) with a warning, never
dropped silently. The interface stays two methods, `log(metrics, step)` and `close()`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
BATCH = 1000  # MLflow's log_batch limit on metrics per request
# what the workers' MLflow client is told (trainer's runtime env): fail fast, this logger retries
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class MlflowRunLogger:
    """Metrics of one existing run; `enabled=False` on ranks other than 0 makes it a no-op.

    `system_metrics_node`: a node name starts MLflow's system-metrics monitor (CPU, memory, GPU) for
    this process's node into the same run (opt-in: `--system-metrics`).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        enabled: bool = True,
        *,
        max_buffered: int = 200_000,
        retry_seconds: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0),
        flush_timeout_s: float = 60.0,
        spill_path: str | Path | None = None,
        system_metrics_node: str | None = None,
    ):
        self.enabled = enabled
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.retry_seconds = retry_seconds
        self.flush_timeout_s = flush_timeout_s
        self.spill_path = Path(spill_path) if spill_path else None
        self.dropped = 0  # metrics pushed out of a full buffer (counted and reported, never silent)
        self.sent = 0
        self.outages = 0
        self._pending: deque[Metric] = deque()
        self._artifacts: deque[tuple[str, str | None]] = deque()  # (local file, folder in the run)
        self._max_buffered = max_buffered
        self._lock = threading.Condition()
        self._closing = False
        self._failing_since: float | None = None
        self.client = MlflowClient(tracking_uri) if enabled else None
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
            self._thread.start()
        self._monitor = self._start_system_metrics(system_metrics_node) if system_metrics_node else None

    # -------------------------------------------------------------------------------- public
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue one step's metrics; returns at once whatever the server's state."""
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        with self._lock:
            for metric in batch:
                if len(self._pending) >= self._max_buffered:
                    self._pending.popleft()
                    self.dropped += 1
                self._pending.append(metric)
            self._lock.notify()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue a file (a validation video) for upload into the run; it is sent like the metrics."""
        if not self.enabled:
            return
        with self._lock:
            self._artifacts.append((str(path), artifact_path))
            self._lock.notify()

    @property
    def buffered(self) -> int:
        """Metrics not yet accepted by the server."""
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Send what is left (at most `flush_timeout_s`), then spill the rest to `spill_path` and warn."""
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as err:  # noqa: BLE001 - monitoring must not fail the run
                log.warning("MLflow system metrics monitor did not stop cleanly: %s", err)
            self._monitor = None
        if self._thread is None:
            return
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(self.flush_timeout_s)
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
            files = [path for path, _ in self._artifacts]
            self._artifacts.clear()
        if files:
            log.warning(
                "MLflow: %d files were not uploaded to run %s (they stay on disk): %s",
                len(files),
                self.run_id,
                ", ".join(files),
            )
        if left:
            where = self._spill(left)
            log.warning(
                "MLflow: %d metrics of run %s could not be sent%s",
                len(left),
                self.run_id,
                f"; written to {where}" if where else "",
            )
        if self.dropped:
            log.warning("MLflow: the outage outlasted the buffer, %d oldest metrics were dropped", self.dropped)
        self._thread = None
        self.client = None

    # -------------------------------------------------------------------------------- sending
    def _send_loop(self) -> None:
        attempt = 0
        while True:
            with self._lock:
                while not self._pending and not self._artifacts and not self._closing:
                    self._lock.wait()
                if not self._pending and not self._artifacts:
                    return  # closing, nothing left
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
                artifact = None if batch else self._artifacts[0]
            try:
                if batch:
                    self.client.log_batch(self.run_id, metrics=batch)
                else:
                    self.client.log_artifact(self.run_id, artifact[0], artifact[1])
            except Exception as err:  # noqa: BLE001 - any failure of the server or network: keep and retry
                attempt += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    self.outages += 1
                    log.warning(
                        "MLflow unreachable (%s); training goes on, metrics are kept and retried",
                        " ".join(str(err).split())[:300],
                    )
                pause = self.retry_seconds[min(attempt - 1, len(self.retry_seconds) - 1)]
                with self._lock:
                    if self._closing:
                        pause = min(pause, 1.0)  # closing: keep trying until close()'s deadline
                    self._lock.wait(pause)
                continue
            with self._lock:
                for metric in batch:  # the front may have been pushed out meanwhile by a full buffer
                    if self._pending and self._pending[0] is metric:
                        self._pending.popleft()
                if artifact is not None and self._artifacts and self._artifacts[0] is artifact:
                    self._artifacts.popleft()
                self.sent += len(batch)
            if self._failing_since is not None:
                log.warning(
                    "MLflow reachable again after %.0f s; sending the kept metrics",
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
            attempt = 0

    def _spill(self, metrics: list[Metric]) -> Path | None:
        if self.spill_path is None:
            return None
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spill_path.open("a") as f:
                for m in metrics:
                    f.write(
                        json.dumps(
                            {
                                "run_id": self.run_id,
                                "key": m.key,
                                "value": m.value,
                                "timestamp": m.timestamp,
                                "step": m.step,
                            }
                        )
                        + "\n"
                    )
        except OSError as err:
            log.warning("MLflow: could not write unsent metrics to %s: %s", self.spill_path, err)
            return None
        return self.spill_path

    def _start_system_metrics(self, node: str):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, tracking_uri=self.tracking_uri, node_id=node, resume_logging=True
            )
            monitor.start()
            return monitor
        except Exception as err:  # noqa: BLE001 - opt-in extra: warn, never fail training
            log.warning("MLflow system metrics not started: %s", err)
            return None


def replay_spilled(tracking_uri: str, spill_path: str | Path) -> int:
    """Send metrics that a logger spilled during an outage (after the server is back); returns how many."""
    client = MlflowClient(tracking_uri)
    rows = [json.loads(line) for line in Path(spill_path).read_text().splitlines() if line.strip()]
    by_run: dict[str, list[Metric]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(Metric(r["key"], r["value"], r["timestamp"], r["step"]))
    for run_id, metrics in by_run.items():
        for start in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    return len(rows)


UNSENT_METRICS = "mlflow_unsent_metrics.jsonl"  # in the run folder: what an outage kept from the server


def worker_logger(
    tracking_uri: str, run_id: str, output: str | Path, rank: int, system_metrics: bool
) -> MlflowRunLogger:
    """The logger of one Ray Train worker: metrics from rank 0; with `system_metrics`, one monitor per node
    (its local rank 0), named `node<N>` in the run's system metrics."""
    node = None
    if system_metrics:
        import ray.train

        context = ray.train.get_context()
        if context.get_local_rank() == 0:
            node = f"node{context.get_node_rank()}"
    return MlflowRunLogger(
        tracking_uri, run_id, enabled=rank == 0, spill_path=Path(output) / UNSENT_METRICS, system_metrics_node=node
    )


# The console side of a run's metrics: a rank-0 line every N steps.
# A multi-day run that prints nothing is indistinguishable from a hung one. `ProgressLine` turns the
# step counter into one line every `every` steps: step, loss, seconds per step (averaged since the
# previous line, so a checkpoint or a sample shows up in it) and the ETA to `max_steps`.


def console_logger() -> logging.Logger:
    """This module's logger with a stdout handler: Ray Train workers have no logging set up, and their
    stdout is what reaches the driver's console and the job logs."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ProgressLine:
    """One console line every `every` steps: `step 20/40 | loss 0.1234 | 1.52 s/step | ETA 0:00:30`."""

    def __init__(self, max_steps: int, every: int, start_step: int = 0, clock=time.perf_counter):
        self.max_steps, self.every, self.clock = max_steps, every, clock
        self._since_step, self._since = start_step, clock()
        self._losses: list[float] = []

    def update(self, step: int, loss: float) -> str | None:
        """Record a finished step; returns (and logs) the line when one is due."""
        self._losses.append(loss)
        if self.every <= 0 or (step % self.every and step < self.max_steps):
            return None
        now = self.clock()
        per_step = (now - self._since) / max(1, step - self._since_step)
        mean_loss = sum(self._losses) / len(self._losses)
        line = (
            f"step {step}/{self.max_steps} | loss {mean_loss:.4f} | {per_step:.2f} s/step | "
            f"ETA {format_duration(per_step * max(0, self.max_steps - step))}"
        )
        self._since_step, self._since, self._losses = step, now, []
        console_logger().info(line)
        return line

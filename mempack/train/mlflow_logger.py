"""A rank-0 MLflow logger that writes into one run, across restarts.

Ray Train V2 rejects `MLflowLoggerCallback`, and `setup_mlflow` opens a new run on every restart.
Here the driver creates (or, on --resume, reuses) the run and hands its id to the workers; rank 0
logs through `MlflowClient` with explicit steps, so a restarted worker continues the same curves.
The interface is two methods, `log(metrics, step)` and `close()`.
"""

from __future__ import annotations

import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


class MlflowRunLogger:
    """Metrics of one existing run; `enabled=False` on ranks other than 0 makes it a no-op."""

    def __init__(self, tracking_uri: str, run_id: str, enabled: bool = True):
        self.enabled = enabled
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri) if enabled else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client = None

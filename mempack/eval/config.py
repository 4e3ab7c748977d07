"""What `pipelines/evaluate.py` reads its features with and where it reports: its flags, made from this
dataclass (mempack.config) as prep's and train's are, so the three CLIs take `--config`, `--set` and
`--print-config` alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """One evaluation of generated videos (the videos themselves are the command's positional arguments)."""

    json: str | None = None  # write {'videos': {path: metrics}, 'mean': metrics} here
    dino: str | None = None  # local folder of a DINO model (subject consistency); default: pixel features
    clip: str | None = None  # local folder of a CLIP vision model (background consistency); default: pixels
    mlflow_uri: str | None = None  # log metrics, params and the JSON to this MLflow tracking URI
    experiment: str = "mempack-eval"  # MLflow experiment
    run_name: str | None = None  # MLflow run name (default: eval-STEM, or eval-N-videos)
    model: str | None = None  # the videos' model (export folder, runs:/ID/model, models:/NAME@ALIAS): tags the run
    quiet: bool = False  # no progress bar (shown on a terminal by default)

"""The whole job on the built-in sample: prep → stage 1 → stage 2 → infer → evaluate.

Each step is the real entry point run as its own process (exactly what a user would type), all
tracked in one local MLflow store. `make demo` runs this after setting up `.venv`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mempack import layout
from mempack.config import ArgumentParser

ROOT = Path(__file__).resolve().parents[1]


# The paper's lr (1e-5) fine-tunes real FramePack-F1 weights; the tiny preset starts from random
# weights, and only larger steps show its loss falling within a demo's 40 steps.
DEMO_LR = {1: "3e-3", 2: "1e-3"}


def steps(out: Path, mlflow_uri: str, sections: int) -> list[tuple[str, list[str]]]:
    """The commands of the demo, in order."""
    video = layout.infer_dir(out) / "demo.mp4"
    prep, stage1, stage2 = (str(p) for p in (layout.prep_dir(out), layout.stage_dir(1, out), layout.stage_dir(2, out)))
    common = ["--mlflow-uri", mlflow_uri]
    return [
        ("prep", ["pipelines/prep.py", "--output", prep, *common]),
        (
            "train stage 1",
            ["pipelines/train.py", "--stage", "1", "--data", prep, "--output", stage1, "--lr", DEMO_LR[1], *common],
        ),
        (
            "train stage 2",
            [
                "pipelines/train.py",
                "--stage",
                "2",
                "--data",
                prep,
                "--init",
                stage1,
                "--output",
                stage2,
                "--lr",
                DEMO_LR[2],
                *common,
            ],
        ),
        (
            "infer",
            ["pipelines/infer.py", "--checkpoint", stage2, "--sections", str(sections), "--out", str(video), *common],
        ),
        ("evaluate", ["pipelines/evaluate.py", str(video), "--json", str(layout.eval_dir(out) / "demo.json"), *common]),
    ]


def loss_summary(run_folder: Path, mlflow_uri: str, n: int = 10) -> str:
    """Mean loss of the first and last `n` steps of a training run, read back from its MLflow run."""
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_folder / layout.RUN_FILE).read_text())["run_id"]
    history = sorted(MlflowClient(mlflow_uri).get_metric_history(run_id, "loss"), key=lambda m: m.step)
    losses = [m.value for m in history]
    first, last = sum(losses[:n]) / len(losses[:n]), sum(losses[-n:]) / len(losses[-n:])
    return f"first {n} steps {first:.3f} -> last {n} steps {last:.3f} ({last / first:.2f}x; MLflow run {run_id})"


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(layout.ROOT), help="root of every output (default: %(default)s)")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI (default: sqlite store under --output)")
    parser.add_argument("--sections", type=int, default=10, help="sections of the generated video")
    args = parser.parse_args()
    if args.sections < 1:
        parser.error(f"--sections must be >= 1, got {args.sections}")
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mlflow_uri = args.mlflow_uri or f"sqlite:///{layout.mlflow_db(out)}"
    timings = []
    for name, cmd in steps(out, mlflow_uri, args.sections):
        print(f"\n=== {name}: python {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, *cmd], cwd=ROOT)
        timings.append((name, time.perf_counter() - start))
        if result.returncode != 0:
            raise SystemExit(f"error: demo step '{name}' failed with exit code {result.returncode}")
    print("\n=== demo finished")
    for name, seconds in timings:
        print(f"  {name:<14} {seconds:7.1f} s")
    for stage in layout.STAGES:
        print(f"  stage {stage} loss:  {loss_summary(layout.stage_dir(stage, out), mlflow_uri)}")
    print(f"  outputs:   {out}  (prep/, train/stage1, train/stage2, infer/demo.mp4, eval/demo.json)")
    print(f"  MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {mlflow_uri} --host 127.0.0.1")


if __name__ == "__main__":
    main()

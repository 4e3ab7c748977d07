"""MLflow bookkeeping shared by prep, training, inference and evaluation.

One place decides what every run records, so the runs of a project can be followed from one to the
next: prep output → the training run that read it (`log_prep_input`: an MLflow dataset input with the
prep summary's digest, and a tag naming the prep run) → the inference and evaluation runs that used
its model (`tag_model_used`). Every run carries its source (`source_tags`: git commit, entry point,
mempack version); artifacts of local stores land beside the store (`artifact_location`), never in
`./mlruns` of whatever folder the command ran in; and `run_status` ends a run FAILED (KILLED on
Ctrl-C) when its stage raises, so no run is left RUNNING.

Only the MLflow client API is used (no fluent active-run state), so the functions are safe in Ray
drivers and workers alike.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from mempack import layout
from mempack.layout import RUN_FILE

log = logging.getLogger(__name__)

COMMIT_ENV = "MEMPACK_GIT_COMMIT"  # the commit when the code runs without its .git (a Ray job's working_dir)
MODEL_RUN_TAG = "mempack.model_run_id"
MODEL_URI_TAG = "mempack.model"
PREP_RUN_TAG = "mempack.prep_run_id"
DATA_DIGEST_TAG = "mempack.data_digest"
VOLATILE_SUMMARY_KEYS = ("wall_seconds", "mlflow_run_id")  # differ between reruns of the same data


# ------------------------------------------------------------------------------------------- stores
def default_tracking_uri(base: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI (a team server, set on a cluster), else a sqlite store under ./outputs."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = (base or Path.cwd()) / layout.mlflow_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db.resolve()}"


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a local store; None lets a server decide.

    MLflow's default for a database store is `./mlruns` relative to the *current* folder, so runs
    started from two folders scatter their artifacts; `sqlite:///x/mlflow.db` keeps them in
    `x/mlartifacts/`, a file store in its own folder.
    """
    if urlparse(tracking_uri).scheme != "sqlite" or ":///" not in tracking_uri:
        return None  # a server chooses; a file store keeps artifacts inside itself already
    path = tracking_uri.split(":///", 1)[1]  # "/abs/x.db" (sqlite:////abs/x.db) or "rel/x.db"
    if path in ("", ":memory:"):
        return None
    return (Path(path).resolve().parent / "mlartifacts").as_uri()


def get_or_create_experiment(client, name: str) -> str:
    """The experiment's id; a new one gets `artifact_location(client's store)`."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri))


# ------------------------------------------------------------------------------------------- source
def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mempack")
    except PackageNotFoundError:
        return "unknown"


def source_tags(entry_point: str | None = None) -> dict[str, str]:
    """MLflow's source tags (commit, branch, repo URL, entry point, type, user) plus mempack's version.

    The commit comes from the checkout the code runs from, else from $MEMPACK_GIT_COMMIT (a Ray job
    uploads the repo without .git: set it in the job's env_vars); a checkout with uncommitted changes
    is tagged `mempack.git.dirty=true`, since its commit alone does not reproduce the run.
    """
    from mlflow.utils import mlflow_tags as t

    root = Path(__file__).resolve().parents[1]
    tags = {
        t.MLFLOW_SOURCE_NAME: entry_point or Path(sys.argv[0]).name or "python",
        t.MLFLOW_SOURCE_TYPE: "JOB"
        if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
        else "LOCAL",
        "mempack.version": _version(),
    }
    with contextlib.suppress(Exception):
        tags[t.MLFLOW_USER] = getpass.getuser()
    commit = (
        _git("rev-parse", "HEAD", cwd=root) if _git("rev-parse", "--show-toplevel", cwd=root) == str(root) else None
    )
    if commit:
        tags[t.MLFLOW_GIT_COMMIT] = commit
        branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=root)
        if branch and branch != "HEAD":
            tags[t.MLFLOW_GIT_BRANCH] = branch
        remote = _git("config", "--get", "remote.origin.url", cwd=root)
        if remote:
            tags[t.MLFLOW_GIT_REPO_URL] = remote
        tags["mempack.git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no", cwd=root))).lower()
    elif os.environ.get(COMMIT_ENV):
        tags[t.MLFLOW_GIT_COMMIT] = os.environ[COMMIT_ENV]
    return tags


# ------------------------------------------------------------------------------------------- runs
def create_run(
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    tags: dict | None = None,
    entry_point: str | None = None,
) -> tuple[object, str]:
    """(client, run_id) of a new RUNNING run with the source tags, in an experiment made if needed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags={**source_tags(entry_point), **(tags or {})})
    return client, run.info.run_id


@contextlib.contextmanager
def run_status(client, run_id: str, finish: bool = True) -> Iterator[None]:
    """End the run FINISHED when the block succeeds (unless `finish=False`: it goes on after the block),
    FAILED when it raises (KILLED on Ctrl-C), then re-raise.

    A failure to reach the tracking store while marking the end is logged, never raised over the
    stage's own error.
    """
    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            client.set_tag(run_id, "mempack.error", f"{type(err).__name__}: {' '.join(str(err).split())}"[:5000])
            client.set_terminated(run_id, status=status)
        except Exception as mark_err:  # noqa: BLE001 - keep the stage's own error
            log.warning("could not mark MLflow run %s %s: %s", run_id, status, mark_err)
        raise
    if finish:
        client.set_terminated(run_id, status="FINISHED")


@contextlib.contextmanager
def tracked_run(
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    tags: dict | None = None,
    entry_point: str | None = None,
) -> Iterator[tuple[object, str]]:
    """`create_run` + `run_status`: `with tracked_run(uri, "mempack-eval") as (client, run_id): ...`."""
    client, run_id = create_run(tracking_uri, experiment, run_name, tags, entry_point)
    with run_status(client, run_id):
        yield client, run_id


def write_run_file(folder: str | Path, run_id: str, tracking_uri: str) -> Path:
    """Record a stage's run beside its output, so the next stage can link to it."""
    path = Path(folder) / RUN_FILE
    path.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
    return path


def read_run_file(folder: str | Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------- lineage
def prep_digest(summary: dict) -> str:
    """A digest of a prep output: its summary's own `digest` if prep wrote one, else a hash of the
    summary without the keys that differ between reruns of the same data (32 hex characters)."""
    if summary.get("digest"):
        return str(summary["digest"])[:36]
    stable = {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:32]


def log_prep_input(client, run_id: str, data_dir: str | Path, context: str = "training") -> str | None:
    """Record the prep output a run read: an MLflow dataset input (name, source path, digest) and tags
    with the digest and the prep run's id. Returns the digest (None when the folder has no summary)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from mempack.schema import read_summary, summary_path

    data_dir = Path(data_dir)
    summary = read_summary(data_dir)
    if summary is None:
        log.warning("no %s: the run's data input is not recorded", summary_path(data_dir))
        return None
    digest = prep_digest(summary)
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two registrations of one local class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(data_dir.resolve()))
    dataset = MetaDataset(source, name=f"prep:{data_dir.name}", digest=digest)
    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    )
    client.set_tag(run_id, DATA_DIGEST_TAG, digest)
    prep_run = read_run_file(data_dir)
    if prep_run:
        client.set_tag(run_id, PREP_RUN_TAG, prep_run["run_id"])
    return digest


def resolve_model_run(reference: str | Path, tracking_uri: str | None = None) -> str | None:
    """The training run that made a model: from `runs:/ID/...`, `models:/NAME/VERSION` or `models:/NAME@ALIAS`
    (through the registry), or an export folder (its run folder's mlflow_run.json). None when unknown."""
    text = str(reference)
    if text.startswith("runs:/"):
        return text[len("runs:/") :].split("/", 1)[0] or None
    if text.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        name_part = text[len("models:/") :].strip("/")
        if "@" in name_part:
            name, alias = name_part.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = name_part.partition("/")
        return client.get_model_version(name, version).run_id if version else None
    folder = Path(text)
    for candidate in (folder, folder.parent):
        run = read_run_file(candidate)
        if run:
            return run["run_id"]
    return None


def tag_model_used(client, run_id: str, reference: str | Path | None, tracking_uri: str | None = None) -> str | None:
    """Tag an inference or evaluation run with the model it used and that model's training run."""
    if reference is None:
        return None
    client.set_tag(run_id, MODEL_URI_TAG, str(reference))
    try:
        model_run = resolve_model_run(reference, tracking_uri or client.tracking_uri)
    except Exception as err:  # noqa: BLE001 - a registry lookup that fails must not fail the stage
        log.warning("could not resolve the training run of %s: %s", reference, err)
        return None
    if model_run:
        client.set_tag(run_id, MODEL_RUN_TAG, model_run)
    return model_run

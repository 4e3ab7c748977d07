"""A real 2-node Ray cluster on 127.0.0.1: `ray job submit` of prep and training, work on both nodes,
a training worker killed mid-run, and a shared MLflow tracking server read back through its REST API.

The head and the second node are separate `ray start` processes with their own resources, as on a
real cluster; the test process never joins the cluster (it talks to the dashboard over HTTP).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import free_port
from servers import start_mlflow_server, stop_group, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXCLUDES = json.dumps({"excludes": [".venv", "outputs", "mlruns", "mlartifacts", ".git", "bench/results"]})
pytestmark = pytest.mark.slow


def cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
        # a throwaway cluster on 127.0.0.1: no token, so head, node and CLI agree whatever ~/.ray holds
        RAY_AUTH_MODE="disabled",
    )
    return env


def ray_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], env=cluster_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def http_json(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(dashboard URL, MLflow URL, work folder): head + second node + MLflow server, all on 127.0.0.1."""
    work = tmp_path_factory.mktemp("cluster")
    gcs, dashboard = free_port(), free_port()
    server, nodes = None, []
    try:
        # `--block` keeps each node in the foreground of its own process group, so teardown stops exactly
        # these two nodes (`ray stop` would also stop any other Ray on this machine)
        nodes.append(
            start_node(
                "--head",
                "--port",
                str(gcs),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard),
                "--include-dashboard",
                "true",
                "--resources",
                json.dumps({"head_node": 1}),
                "--disable-usage-stats",
            )
        )
        dashboard_url = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: alive_nodes(dashboard_url) == 1, 120, "the head node")
        nodes.append(start_node("--address", f"127.0.0.1:{gcs}", "--resources", json.dumps({"second_node": 1})))
        server, mlflow_url = start_mlflow_server(
            f"sqlite:///{work / 'mlflow.db'}", work / "artifacts", work / "mlflow.log", env=cluster_env()
        )
        wait_for(lambda: alive_nodes(dashboard_url) == 2, 120, "two alive nodes")
        yield dashboard_url, mlflow_url, work
    finally:
        for process in ([server] if server else []) + nodes[::-1]:
            stop_group(process)


def start_node(*args: str) -> subprocess.Popen:
    # each node's dashboard agent on a free port: on the default (52365) a second node, or any other Ray on
    # this machine, leaves the agent without HTTP and job submission fails with "No available agent"
    return subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--dashboard-agent-listen-port",
            str(free_port()),
            *args,
        ],
        env=cluster_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def alive_nodes(dashboard: str) -> int:
    try:
        summary = http_json(f"{dashboard}/nodes?view=summary")["data"]["summary"]
    except OSError:
        return 0
    return len([n for n in summary if n["raylet"]["state"] == "ALIVE"])


def submit(dashboard: str, name: str, *command: str) -> str:
    """`ray job submit --no-wait` with the repo as working dir; returns the submission id."""
    job_id = f"{name}-{uuid.uuid4().hex[:8]}"

    def submitted() -> bool:  # the head's job agent starts after the node is alive: poll until it takes the job
        result = ray_cli(
            "job",
            "submit",
            "--address",
            dashboard,
            "--submission-id",
            job_id,
            "--working-dir",
            ".",
            "--runtime-env-json",
            EXCLUDES,
            "--no-wait",
            "--",
            *command,
        )
        if result.returncode != 0 and "No available agent" not in result.stderr:
            raise AssertionError(result.stderr)
        return result.returncode == 0

    wait_for(submitted, 180, f"the job agent to accept {name}", every=5)
    return job_id


def wait_job(dashboard: str, job_id: str, timeout: float = 900) -> str:
    """Poll `ray job status` until the job ends; returns SUCCEEDED, FAILED or STOPPED."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)

    def finished():
        status = client.get_job_status(job_id)
        return str(status.value) if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) else None

    state = wait_for(finished, timeout, f"job {job_id}", every=3)
    cli = (
        ray_cli("job", "status", job_id, "--address", dashboard).stdout
        + ray_cli("job", "status", job_id, "--address", dashboard).stderr
    )
    assert state.lower() in cli.lower()  # the CLI says the same
    return state


def job_nodes(dashboard: str, job_id: str, name_part: str, kind: str = "tasks") -> set[str]:
    """Node ids of the job's tasks (or actors) whose name contains `name_part` (Ray state API over HTTP)."""
    from ray.util.state import list_actors, list_tasks

    hex_id = http_json(f"{dashboard}/api/jobs/{job_id}")["job_id"]
    if kind == "tasks":
        items = list_tasks(
            address=dashboard,
            filters=[("job_id", "=", hex_id)],
            limit=10_000,
            detail=True,
            raise_on_missing_output=False,
        )
        return {t.node_id for t in items if name_part in t.name and t.node_id}
    items = list_actors(
        address=dashboard, filters=[("job_id", "=", hex_id)], limit=10_000, detail=True, raise_on_missing_output=False
    )
    return {a.node_id for a in items if name_part in a.class_name and a.node_id}


def mlflow_runs(mlflow_url: str, experiment: str) -> list[dict]:
    found = http_json(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")
    runs = http_json(
        f"{mlflow_url}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 100},
    )
    return runs.get("runs", [])


def metrics_of(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_a_job_imports_mempack_from_its_uploaded_working_dir(cluster):
    """No script edits sys.path: Ray 2.60 starts a job's entrypoint in the uploaded copy with that copy first
    on PYTHONPATH (ray/_private/runtime_env/working_dir.py, `set_pythonpath_in_context`), ahead of the
    nodes' own PYTHONPATH (this checkout, see `cluster_env`) and of the installed package."""
    dashboard, _, _ = cluster
    job_id = submit(
        dashboard,
        "imports",
        "python",
        "-c",
        "import os, mempack, pipelines.prep; print('IMPORTED', os.getcwd(), mempack.__file__, pipelines.prep.__file__)",
    )
    assert wait_job(dashboard, job_id, timeout=300) == "SUCCEEDED"
    logs = ray_cli("job", "logs", job_id, "--address", dashboard).stdout
    [line] = [line for line in logs.splitlines() if line.startswith("IMPORTED ")]
    cwd, mempack_file, prep_file = (Path(p) for p in line.split()[1:])
    assert cwd != ROOT and "working_dir_files" in cwd.parts  # the job runs in Ray's unpacked copy
    assert mempack_file == cwd / "mempack" / "__init__.py"
    assert prep_file == cwd / "pipelines" / "prep.py"


@pytest.fixture(scope="module")
def prep_job(cluster):
    dashboard, mlflow_url, work = cluster
    job_id = submit(
        dashboard, "prep", "python", "pipelines/prep.py", "--output", str(work / "prep"), "--mlflow-uri", mlflow_url
    )
    return job_id, wait_job(dashboard, job_id)


def test_prep_job_succeeds_on_both_nodes_and_logs_to_the_server(cluster, prep_job):
    dashboard, mlflow_url, work = cluster
    job_id, state = prep_job
    logs = ray_cli("job", "logs", job_id, "--address", dashboard).stdout
    assert state == "SUCCEEDED", logs[-3000:]
    summary = json.loads((work / "prep" / "summary.json").read_text())
    assert summary["inputs_accepted"] + summary["inputs_rejected"] == summary["inputs"]
    assert '"clips": ' in logs  # the summary the job printed, read back from the job's logs
    assert len(job_nodes(dashboard, job_id, "FlatMap")) == 2  # Ray Data spread the CPU stages over both nodes
    runs = mlflow_runs(mlflow_url, "mempack-prep")
    assert runs and metrics_of(runs[0])["clips"] == summary["clips"]


def test_train_job_uses_both_nodes_and_restores_after_a_killed_worker(cluster, prep_job):
    dashboard, mlflow_url, work = cluster
    assert prep_job[1] == "SUCCEEDED"
    job_id = submit(
        dashboard,
        "stage1",
        "python",
        "pipelines/train.py",
        "--stage",
        "1",
        "--data",
        str(work / "prep"),
        "--output",
        str(work / "stage1"),
        "--max-steps",
        "40",
        "--checkpoint-every",
        "5",
        "--placement-strategy",
        "SPREAD",
        "--mlflow-uri",
        mlflow_url,
        "--run-name",
        "cluster-stage1",
    )

    def worker_pids() -> list[int] | None:
        from ray.util.state import list_actors

        hex_id = http_json(f"{dashboard}/api/jobs/{job_id}").get("job_id")
        if not hex_id:
            return None
        actors = list_actors(
            address=dashboard, filters=[("job_id", "=", hex_id), ("state", "=", "ALIVE")], raise_on_missing_output=False
        )
        pids = [a.pid for a in actors if a.class_name == "RayTrainWorker" and a.pid]
        return pids if len(pids) == 2 else None

    def checkpointed() -> bool:
        runs = [r for r in mlflow_runs(mlflow_url, "mempack-train") if r["info"].get("run_name") == "cluster-stage1"]
        return bool(runs) and metrics_of(runs[0]).get("optimizer_steps", 0) >= 12

    pids = wait_for(worker_pids, 300, "two training workers")
    wait_for(checkpointed, 300, "a checkpoint after step 10", every=2)
    os.kill(pids[1], signal.SIGKILL)  # a worker dies mid-run: Ray Train restarts the group from the checkpoint
    state = wait_job(dashboard, job_id)
    logs = ray_cli("job", "logs", job_id, "--address", dashboard).stdout
    assert state == "SUCCEEDED", logs[-3000:]
    assert len(job_nodes(dashboard, job_id, "RayTrainWorker", kind="actors")) == 2
    run = [r for r in mlflow_runs(mlflow_url, "mempack-train") if r["info"].get("run_name") == "cluster-stage1"][0]
    metrics = metrics_of(run)
    assert run["info"]["status"] == "FINISHED"
    assert metrics["restarts"] >= 1 and metrics["resumed_from_step"] >= 5  # the restart, visible in MLflow
    assert metrics["optimizer_steps"] == 40  # DeepSpeed's step count came back with the checkpoint
    assert (work / "stage1" / "model" / "mempack.json").is_file()


def _fifo_readers(fifo: Path) -> list[int]:
    """PIDs (other than this one) with `fifo` open, read from /proc."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if int(fd_dir.parent.name) != os.getpid() and any(os.readlink(fd) == str(fifo) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except (OSError, ValueError):  # a process that ended or is not ours to read
            continue
    return pids


def _ray_worker_above(pid: int) -> int | None:
    """The nearest process at or above `pid` whose command line is a Ray worker's ("ray::...")."""
    while pid > 1:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                return pid
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def test_prep_survives_a_killed_worker_with_the_same_rows(cluster, prep_job):
    """Kill the Ray worker process of a running CPU-stage task mid-prep: Ray retries that task (its killed
    attempt FAILED, a later attempt FINISHED: checked in Ray's task table) and the output is unchanged.

    The input is the sample plus a FIFO that this test holds open for writing and never writes to: the
    decoder child that reads it blocks for decode_timeout_s with the FIFO among its open files, so the
    worker to kill is found for certain (the FIFO reader's Ray worker ancestor), never a worker the state
    API still lists as running a task it has already finished."""
    from ray.util.state import list_tasks

    from mempack.schema import read_clips, read_rejects

    dashboard, mlflow_url, work = cluster
    assert prep_job[1] == "SUCCEEDED"
    inputs = work / "kill_input"
    shutil.copytree(work / "sample", inputs)
    fifo = inputs / "stalls.ts"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer that never writes: a reader opens, then blocks reading
    try:
        job_id = submit(
            dashboard,
            "prep-kill",
            "python",
            "pipelines/prep.py",
            "--input",
            str(inputs),
            "--output",
            str(work / "prep_killed"),
            "--set",
            "clip.decode_timeout_s=20",
        )

        def stalled_worker() -> int | None:
            for reader in _fifo_readers(fifo.resolve()):
                worker = _ray_worker_above(reader)
                if worker is not None:
                    return worker
            return None

        worker = wait_for(stalled_worker, 300, "a Ray worker whose decoder reads the FIFO", every=0.2)
        os.kill(worker, signal.SIGKILL)
        assert wait_job(dashboard, job_id) == "SUCCEEDED"
    finally:
        os.close(writer)
    hex_id = http_json(f"{dashboard}/api/jobs/{job_id}")["job_id"]
    tasks = [
        t
        for t in list_tasks(
            address=dashboard,
            filters=[("job_id", "=", hex_id)],
            detail=True,
            limit=10_000,
            raise_on_missing_output=False,
        )
        if "FlatMap" in t.name
    ]
    attempts: dict[str, set] = {}
    for t in tasks:
        attempts.setdefault(t.task_id, set()).add((t.attempt_number, t.state))
    killed = [t for t in tasks if t.worker_pid == worker and t.state == "FAILED"]  # the worker's earlier tasks FINISHED
    assert killed, [(t.task_id, t.attempt_number, t.state) for t in tasks if t.worker_pid == worker]
    for t in killed:  # each attempt the kill ended was retried, and a later attempt finished
        assert any(n > t.attempt_number and s == "FINISHED" for n, s in attempts[t.task_id]), attempts[t.task_id]

    def rows(root: Path) -> list[tuple]:
        clips = read_clips(root).to_pylist()
        return sorted((r["video_id"], r["clip_index"], r["latents"]) for r in clips)

    assert rows(work / "prep_killed") == rows(work / "prep")
    rejects = read_rejects(work / "prep_killed").to_pylist()
    assert len(rejects) == read_rejects(work / "prep").num_rows + 1
    assert [r["reason"] for r in rejects if r["input_id"] == "folder:stalls"] == [
        "timeout: the decoder sent nothing for 20 s and was killed"
    ]

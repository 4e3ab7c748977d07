"""The cluster/ files: every YAML parses and has what its tool needs, every job's command line is one the
pipelines accept, and every DeepSpeed JSON is accepted by DeepSpeed (the CPU one by a real training step)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
DS_FILES = sorted((CLUSTER / "deepspeed").glob("*.json"))
GPU_DS_FILES = [p for p in DS_FILES if p.name != "cpu_fp32.json"]
SCRIPTS = {"pipelines/train.py", "pipelines/prep.py"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES for d in _docs(p)]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _all_docs() if d.get("kind") == kind]


def _launcher_configs() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _all_docs() if "provider" in d and "available_node_types" in d]


def _gpus(resources: dict) -> int:
    return int(str(resources.get("nvidia.com/gpu", 0)))


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(spec.get("rayVersion", ""))), f"{where}: rayVersion"
    head = spec["headGroupSpec"]
    for c in head["template"]["spec"]["containers"]:
        limits = c.get("resources", {}).get("limits", {})
        assert _gpus(limits) == 0, f"{where}: the head must not ask for GPUs"
        if c["image"].startswith("rayproject/ray:"):
            assert c["image"].split(":")[1].startswith(spec["rayVersion"]), f"{where}: image tag != rayVersion"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no worker groups"
    gpu_groups = []
    for g in groups:
        assert g["minReplicas"] <= g["maxReplicas"], f"{where}: {g['groupName']} minReplicas > maxReplicas"
        for c in g["template"]["spec"]["containers"]:
            if _gpus(c.get("resources", {}).get("limits", {})):
                gpu_groups.append(_gpus(c["resources"]["limits"]))
            if c["image"].startswith("rayproject/ray:"):
                assert c["image"].split(":")[1].startswith(spec["rayVersion"]), f"{where}: image tag != rayVersion"
    assert 8 in gpu_groups, f"{where}: no worker group with nvidia.com/gpu: 8"


def _load_cli(name: str):
    spec = importlib.util.spec_from_file_location(f"_mempack_{name}_cli", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_train_parse_args():
    return _load_cli("train").parse_args


def _check_command(argv: list[str], where: str) -> None:
    """argv = ["python", "pipelines/X.py", ...flags]: the script exists and accepts every flag."""
    assert argv[0] == "python" and argv[1] in SCRIPTS, f"{where}: {argv[:2]}"
    assert (ROOT / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
    args = [a for a in argv[2:] if a != "..."]  # "..." in prose examples: "the rest of the flags"
    if argv[1] == "pipelines/train.py":
        try:
            _, config = _load_train_parse_args()(args)
        except SystemExit as err:  # argparse: unknown flag, bad choice, bad --set key
            pytest.fail(f"{where}: pipelines/train.py rejects {shlex.join(args)} ({err})")
        if config.distributed.deepspeed:
            deepspeed = config.distributed.deepspeed
            assert (ROOT / deepspeed).is_file(), f"{where}: {deepspeed} does not exist"
    else:  # the parser and the typed config, without the checks that need the cluster's files
        from data_prep.job import PrepConfig
        from mempack.config import config_from_args

        prep = _load_cli("prep")
        parser = prep.build_parser()
        try:
            config_from_args(parser, PrepConfig, parser.parse_args(args))
        except SystemExit as err:
            pytest.fail(f"{where}: pipelines/prep.py rejects {shlex.join(args)} ({err})")


# ---------------------------------------------------------------- YAML


def test_cluster_files_exist():
    assert len(_launcher_configs()) == 1
    assert len(_of_kind("RayCluster")) == 1
    assert len(_of_kind("RayJob")) == 3
    assert {p.name for p in DS_FILES} >= {
        "zero2_bf16.json",
        "zero3_bf16.json",
        "zero3_bf16_offload.json",
        "cpu_fp32.json",
    }


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_ray_cluster_launcher():
    path, cfg = _launcher_configs()[0]
    assert cfg["cluster_name"]
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert "--num-gpus=0" in " ".join(cfg["head_start_ray_commands"])
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert any(t["resources"].get("GPU") == 8 for t in workers)
    for t in workers:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
    assert cfg["worker_start_ray_commands"]
    assert any("pip install" in c and "-e" in c for c in cfg["setup_commands"])
    assert "FILL IN:" in path.read_text()
    # Ray's own schema and defaults (what `ray up` runs before touching AWS)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_raycluster():
    [(path, doc)] = _of_kind("RayCluster")
    assert doc["apiVersion"] == "ray.io/v1"
    _check_ray_cluster_spec(doc["spec"], path.name)
    assert doc["spec"]["rayVersion"] == "2.60.0"


@pytest.mark.parametrize("path", sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml")), ids=lambda p: p.name)
def test_rayjob(path):
    [doc] = [d for d in _docs(path) if d.get("kind") == "RayJob"]
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("python pipelines/")
    _check_command(shlex.split(spec["entrypoint"]), path.name)
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"]
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own checks: known fields, a remote working_dir that is a .zip, pip's layout
    # the pip list installs the package itself (its dependencies come from pyproject.toml), nothing else
    if "pip" in env:
        pip = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
        assert len(pip) == 1 and re.fullmatch(r"mempack @ \S+\.zip", pip[0]), f"{path.name}: pip {pip}"
    # KubeRay's rules: a TTL needs shutdownAfterJobFinishes; exactly one way to get a cluster
    if spec.get("ttlSecondsAfterFinished", 0) > 0:
        assert spec["shutdownAfterJobFinishes"] is True
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    if "rayClusterSpec" in spec:
        _check_ray_cluster_spec(spec["rayClusterSpec"], path.name)
    else:
        assert spec["clusterSelector"].get("ray.io/cluster")
    assert "FILL IN" in path.read_text()


@pytest.mark.parametrize("readme", [CLUSTER / "README.md", CLUSTER.parent / "README.md"], ids=["cluster", "top"])
def test_readme_commands_are_accepted(readme):
    blocks = readme.read_text().split("```")[1::2]  # the fenced code blocks
    lines = [line.split("#", 1)[0] for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    commands = [line.split(" -- ", 1)[1] for line in lines if "ray job submit" in line and " -- " in line]
    assert len(commands) >= 3
    for cmd in commands:
        _check_command(shlex.split(cmd.replace("$MLFLOW", "http://mlflow:5000")), readme.name)


# ---------------------------------------------------------------- security: token auth, loopback, secrets


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = [(p.name, d["spec"]) for p, d in _of_kind("RayCluster")]
    specs += [(p.name, d["spec"]["rayClusterSpec"]) for p, d in _of_kind("RayJob") if "rayClusterSpec" in d["spec"]]
    return specs


def test_every_kuberay_cluster_requires_a_ray_token():
    specs = _cluster_specs()
    assert len(specs) == 4
    for name, spec in specs:
        assert spec.get("authOptions", {}).get("mode") == "token", (
            f"{name}: Ray dashboard / Jobs API without token auth"
        )


def test_launcher_cluster_runs_every_node_with_token_auth():
    [(path, cfg)] = _launcher_configs()
    assert "--env=RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"  # one token on every node
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    for command in [c for c in starts if "ray start" in c]:
        assert "RAY_AUTH_MODE=token ray start" in command, command


def test_mlflow_compose_binds_loopback_and_reads_every_secret_from_the_environment():
    path = CLUSTER / "mlflow" / "docker-compose.yaml"
    text = path.read_text()
    services = yaml.safe_load(text)["services"]
    published = [port for svc in services.values() for port in svc.get("ports", [])]
    assert published
    for port in published:  # "${X_BIND:-127.0.0.1}:HOST:CONTAINER": loopback unless the user names an address
        assert re.fullmatch(r"\$\{[A-Z_]+:-127\.0\.0\.1\}:\d+:\d+", port), port
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ROOT_USER|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{name}.{key} is not from the environment"
    # each secret has one source: no literal password anywhere, the URI and mc read the container's environment
    for literal in ("minio-secret", "mlflow:mlflow@", "POSTGRES_PASSWORD: mlflow"):
        assert literal not in text
    assert "$$MINIO_ROOT_PASSWORD" in services["create-bucket"]["entrypoint"]
    assert "$$POSTGRES_PASSWORD" in services["mlflow"]["command"]
    example = (CLUSTER / "mlflow" / "env.example").read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert needed == {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert all(f"{var}=" in example for var in needed)
    assert "cluster/mlflow/.env" in (ROOT / ".gitignore").read_text()


# ---------------------------------------------------------------- MLflow


def test_mlflow_start_script():
    script = CLUSTER / "mlflow" / "start_server.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in (
        "--backend-store-uri",
        "--artifacts-destination",
        "--host",
        "--port",
        "MLFLOW_HOST:-127.0.0.1",
        "sqlite:///",
    ):
        assert needle in text


# ---------------------------------------------------------------- DeepSpeed


@pytest.mark.parametrize("path", DS_FILES, ids=lambda p: p.name)
def test_deepspeed_json(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = json.loads(path.read_text())
    assert "auto" not in json.dumps(cfg)
    assert cfg["train_micro_batch_size_per_gpu"] == 1
    assert cfg["gradient_accumulation_steps"] == 1
    assert isinstance(cfg["gradient_clipping"], float) and cfg["gradient_clipping"] == 1.0
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["lr"] == 1e-5
    zero = cfg["zero_optimization"]
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert all(isinstance(zero[k], int) for k in zero if k.startswith("stage3_") and "gather" not in k)
    if "offload" in path.name:
        assert zero["stage"] == 3
        for key in ("offload_optimizer", "offload_param"):
            assert zero[key] == {"device": "cpu", "pin_memory": True}
    if path.name == "cpu_fp32.json":
        assert zero["stage"] == 2 and "bf16" not in cfg and "fp16" not in cfg
        assert cfg["optimizer"]["params"]["torch_adam"] is True
    else:
        assert cfg["bf16"]["enabled"] is True
    parsed = DeepSpeedConfig(cfg)  # pydantic: unknown or mistyped keys raise
    assert parsed.zero_optimization_stage == zero["stage"]
    assert parsed.train_batch_size == 1


@pytest.mark.parametrize("path", GPU_DS_FILES, ids=lambda p: p.name)
def test_deepspeed_json_through_resolve(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    from mempack.train.config import DistributedConfig, OptimConfig
    from mempack.train.deepspeed_config import resolve

    ds = resolve(DistributedConfig(deepspeed=str(path), use_gpu=True), OptimConfig())
    assert ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"] == json.loads(path.read_text())["zero_optimization"]
    DeepSpeedConfig(ds)
    cpu = resolve(DistributedConfig(deepspeed=str(path), use_gpu=False), OptimConfig())  # a CPU run: fp32
    assert cpu["bf16"] == {"enabled": False}


STEP_SCRIPT = r"""
import importlib, json, os, sys
import torch, deepspeed
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # gloo alone; no C++ build
deepspeed.init_distributed(dist_backend="gloo")
cfg = json.load(open(sys.argv[1]))
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
before = [p.detach().clone() for p in model.parameters()]
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
x, y = torch.randn(8, 4), torch.randn(8, 2)
loss = torch.nn.functional.mse_loss(engine(x), y)
engine.backward(loss)
engine.step()
after = [p.detach() for p in engine.module.parameters()]
print("RESULT " + json.dumps({
    "changed": any(not torch.equal(a, b) for a, b in zip(before, after)),
    "finite": bool(torch.isfinite(loss)), "stage": engine.zero_optimization_stage(),
    "optimizer": type(engine.basic_optimizer).__module__ + "." + type(engine.basic_optimizer).__name__,
    "steps": engine.global_steps}))
"""


def test_cpu_fp32_config_trains_one_step(tmp_path):
    """deepspeed.initialize + one step in a fresh process (gloo, world size 1): the weights move."""
    script = tmp_path / "ds_step.py"
    script.write_text(STEP_SCRIPT)
    ext = tmp_path / "torch_extensions"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "TORCH_EXTENSIONS_DIR": str(ext),
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(CLUSTER / "deepspeed" / "cpu_fp32.json")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result == {"changed": True, "finite": True, "stage": 2, "optimizer": "torch.optim.adamw.AdamW", "steps": 1}
    assert not ext.exists() or not any(ext.iterdir()), "a DeepSpeed op was compiled"


# ---------------------------------------------------------------- the README's local head, as written


def _readme_local_block() -> str:
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- local-cluster:")
    return text[marker:].split("```bash\n", 1)[1].split("```", 1)[0]


def _processes_of(temp_dir: str) -> list[int]:
    """PIDs of the Ray processes of one head: every process whose command line names its own temp dir."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found.add(proc.pid)
                found.update(c.pid for c in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(found)


def _stop_pids(pids: list[int]) -> None:
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
            procs[-1].terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    for proc in alive:
        with __import__("contextlib").suppress(psutil.NoSuchProcess):
            proc.kill()


def _stop_head(temp_dir: str, timeout: float = 90) -> list[int]:
    """Stop every process of one head, again and again until none is left (a raylet can start a worker while
    it is being stopped, and that worker outlives it); returns what is still running at the deadline."""
    deadline = time.monotonic() + timeout
    while (pids := _processes_of(temp_dir)) and time.monotonic() < deadline:
        _stop_pids(pids)
        time.sleep(0.5)
    return _processes_of(temp_dir)


@pytest.mark.slow
def test_readme_local_head_sequence_runs_as_written_with_token_auth(tmp_path):
    """A fresh machine (empty HOME), the README's block line by line; only the ports (the agent's included), the
    temp dir and the output folder are this test's own, and the head is stopped by PID instead of `ray stop`."""
    import tempfile
    import urllib.error
    import urllib.request

    from conftest import free_port

    block = _readme_local_block()
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    assert [c.split()[0:2] for c in commands] == [
        ["export", "RAY_AUTH_MODE=token"],
        ["ray", "get-auth-token"],
        ["ray", "start"],
        ["ray", "job"],
        ["ray", "stop"],
    ], commands
    gcs, dashboard, agent = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="mpk", dir="/tmp")  # short: Ray's socket paths have a length limit
    output = tmp_path / "prep-ray"
    script = "\n".join(commands[:-1])  # everything but `ray stop` (it would stop every Ray on this machine)
    # the agent's HTTP port too: its default (52365) is taken while any other Ray runs on this machine, and then
    # the head never gets an agent and `ray job submit` answers "No available agent to submit job"
    script = (
        script.replace("--port=6379", f"--port={gcs} --dashboard-agent-listen-port={agent}")
        .replace("8265", str(dashboard))
        .replace("/tmp/ray-mempack", temp_dir)
        .replace('"$PWD/outputs/prep-ray"', str(output))
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
    )
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert (home / ".ray" / "auth_token").is_file()
        summary = json.loads((output / "summary.json").read_text())
        assert summary["clips"] > 0 and summary["inputs_accepted"] + summary["inputs_rejected"] == summary["inputs"]
        # the Jobs API refuses a caller without the token: 401 over HTTP, "Missing authentication token" from the CLI
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/jobs/", timeout=30)
        assert refused.value.code in (401, 403)
        no_token = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "list", "--address", f"http://127.0.0.1:{dashboard}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**env, "RAY_AUTH_MODE": "disabled"},
            timeout=120,
        )
        assert no_token.returncode != 0 and "authentication" in (no_token.stdout + no_token.stderr).lower()
    finally:
        left = _stop_head(temp_dir)
    assert not left

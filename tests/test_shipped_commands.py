"""Every training command the project ships fits the hardware it names.

Commands are collected wherever they are: the fenced code blocks and inline code of README.md, every
docs/*.md and cluster/**/*.md, the KubeRay jobs' entrypoints, and the demo launcher's steps. Each is
parsed by `pipelines/train.py`'s own parser and planned in process with its `--plan` logic; it must fit:

* a KubeRay job: the GPUs of its own worker groups (replicas × nvidia.com/gpu), of the GPU memory of
  the instance type its nodeSelector names;
* a `ray job submit` in cluster/'s docs: the clusters cluster/ ships (ray-cluster.yaml, raycluster.yaml),
  the smallest GPU memory among them;
* any other `--use-gpu` command: `DEFAULT_GPU_GB` (an 80 GB H100), 8 GPUs per node;
* a command without `--use-gpu`: a CPU run, which must fit `CPU_HOST_GB` of host memory.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import yaml

from mempack.config import flatten

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GPU_GB = 80  # what a command that names no hardware is planned for: an 80 GB H100
CPU_HOST_GB = 16  # a CPU command (the tiny preset's demo runs) must fit a laptop
# GPU memory per GPU of the instance types the manifests may name (AWS)
GPU_GB_BY_INSTANCE = {
    "p4d.24xlarge": 40,
    "p4de.24xlarge": 80,
    "p5.48xlarge": 80,
    "p5e.48xlarge": 141,
    "p5en.48xlarge": 141,
}
# flags that change where a run reads and writes, not what it holds in memory (the plan cache's key)
NOT_MEMORY = (
    "data",
    "output",
    "init",
    "pretrained",
    "mlflow_uri",
    "experiment",
    "run_name",
    "checkpoint_every",
    "max_failures",
    "cpus_per_worker",
    "log_every",
    "progress_every",
    "max_steps",
    "epochs",
    "lr",
)


@dataclass(frozen=True)
class Hardware:
    gpus: int  # 0: a CPU run
    gb_per_gpu: int
    source: str


@dataclass(frozen=True)
class Shipped:
    argv: tuple[str, ...]  # flags after pipelines/train.py
    where: str
    hardware: Hardware


def _train_cli():
    spec = importlib.util.spec_from_file_location("_mempack_train_cli_shipped", ROOT / "pipelines" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _group_hardware(groups: list[dict], where: str) -> Hardware:
    """The GPUs of KubeRay worker groups (at their maximum size) and their smallest GPU memory."""
    gpus, sizes = 0, []
    for g in groups:
        spec = g["template"]["spec"]
        per_pod = max(
            int(str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))) for c in spec["containers"]
        )
        if per_pod:
            instance = spec.get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
            sizes.append(GPU_GB_BY_INSTANCE[instance] if instance else DEFAULT_GPU_GB)
            gpus += per_pod * max(g.get("replicas", 0), g.get("maxReplicas", 0))
    return Hardware(gpus, min(sizes), where)


def _cluster_hardware() -> Hardware:
    """What cluster/'s shipped clusters offer a submitted job: the smaller of their GPUs."""
    launcher = next(d for d in _yaml_docs(ROOT / "cluster" / "ray-cluster.yaml"))
    nodes = [t for name, t in launcher["available_node_types"].items() if t["resources"].get("GPU")]
    launcher_gpus = sum(t["resources"]["GPU"] * t["max_workers"] for t in nodes)
    launcher_gb = min(GPU_GB_BY_INSTANCE[t["node_config"]["InstanceType"]] for t in nodes)
    [kuberay] = [
        d for d in _yaml_docs(ROOT / "cluster" / "kuberay" / "raycluster.yaml") if d.get("kind") == "RayCluster"
    ]
    k = _group_hardware(kuberay["spec"]["workerGroupSpecs"], "raycluster.yaml")
    return Hardware(
        min(launcher_gpus, k.gpus),
        min(launcher_gb, k.gb_per_gpu),
        "cluster/ray-cluster.yaml and cluster/kuberay/raycluster.yaml",
    )


def _markdown_commands(text: str) -> list[str]:
    """Every `pipelines/train.py ...` in fenced blocks and inline code, continuation lines joined."""
    fenced = text.split("```")[1::2]
    prose = "".join(text.split("```")[0::2])
    inline = re.findall(r"`([^`]+)`", prose)
    lines = [ln for block in fenced for ln in block.replace("\\\n", " ").splitlines()]
    lines += [span.replace("\n", " ") for span in inline]
    out = []
    for line in lines:
        line = line.split(" #", 1)[0]
        if "python pipelines/train.py" not in line:  # a command, not a mention of the file
            continue
        cmd = re.split(r"&&|;|\|", line.split("pipelines/train.py", 1)[1])[0]
        if "--stage" not in cmd:  # prose about a flag (`train.py ... --plan`), not a command one can run
            continue
        out.append(cmd)
    return out


def _argv(cmd: str) -> tuple[str, ...]:
    cmd = re.sub(r"\$\{?\w+\}?", "http://mlflow:5000", cmd)
    return tuple(a for a in shlex.split(cmd) if a != "...")


def _gpu_or_cpu(argv: tuple[str, ...], gpu: Hardware) -> Hardware:
    return gpu if "--use-gpu" in argv else Hardware(0, CPU_HOST_GB, "CPU host")


def shipped_commands() -> list[Shipped]:
    found: list[Shipped] = []
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")), *sorted((ROOT / "cluster").glob("**/*.md"))]
    for path in docs:
        where = str(path.relative_to(ROOT))
        default = _cluster_hardware() if where.startswith("cluster/") else Hardware(8, DEFAULT_GPU_GB, "default")
        for cmd in _markdown_commands(path.read_text()):
            argv = _argv(cmd)
            if "--help" in argv or "-h" in argv:
                continue
            hardware = default
            if not where.startswith("cluster/") and "--num-workers" in argv:  # its GPUs: one per worker
                hardware = Hardware(int(argv[argv.index("--num-workers") + 1]), DEFAULT_GPU_GB, "default")
            found.append(Shipped(argv, where, _gpu_or_cpu(argv, hardware)))
    for path in sorted((ROOT / "cluster").glob("**/*.yaml")):
        for doc in _yaml_docs(path):
            entry = doc.get("spec", {}).get("entrypoint", "") if doc.get("kind") == "RayJob" else ""
            if "pipelines/train.py" not in entry:
                continue
            where = str(path.relative_to(ROOT))
            hardware = _group_hardware(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"], where)
            argv = _argv(entry.split("pipelines/train.py", 1)[1])
            found.append(Shipped(argv, where, _gpu_or_cpu(argv, hardware)))
    demo = importlib.util.spec_from_file_location("_mempack_demo_shipped", ROOT / "pipelines" / "demo.py")
    module = importlib.util.module_from_spec(demo)
    demo.loader.exec_module(module)
    for _, argv in module.steps(Path("/tmp/demo"), "sqlite:///demo.db", 2):
        if argv[0] == "pipelines/train.py":
            found.append(Shipped(tuple(argv[1:]), "pipelines/demo.py", Hardware(0, CPU_HOST_GB, "CPU host")))
    return found


SHIPPED = shipped_commands()


_PLANS: dict[str, object] = {}


def plan_of(argv: tuple[str, ...]):
    """The planned memory of a command, by `--plan`'s own logic (cached over flags that do not change
    memory: F1's trace takes seconds)."""
    cli = _train_cli()
    args, config = cli.parse_args(list(argv))
    skip = {type(config).ALIASES.get(k, k) for k in NOT_MEMORY}  # the flag names as dotted keys (data.path)
    key = repr(sorted((k, v) for k, v in flatten(asdict(config)).items() if k not in skip)) + repr(args.plan_size)
    if key not in _PLANS:
        _PLANS[key] = cli.plan(config, args.plan_size)
    return _PLANS[key], config


def test_commands_are_found_everywhere():
    """Zero commands would make every other test here pass vacuously."""
    places = {s.where for s in SHIPPED}
    assert len(SHIPPED) >= 10, SHIPPED
    assert {
        "cluster/README.md",
        "cluster/kuberay/rayjob-train-stage1.yaml",
        "cluster/kuberay/rayjob-train-stage2.yaml",
        "pipelines/demo.py",
    } <= places, places
    assert any("--preset" in s.argv and "framepack-f1" in s.argv and s.hardware.gpus for s in SHIPPED)


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda s: f"{s.where}:{' '.join(s.argv[:6])}")
def test_shipped_command_fits_its_hardware(shipped):
    plan, config = plan_of(shipped.argv)
    hw, distributed = shipped.hardware, config.distributed
    if hw.gpus == 0:
        assert not distributed.use_gpu
        assert plan.total(distributed.gradient_checkpointing) <= hw.gb_per_gpu * 10**9, (shipped, plan.to_dict())
        return
    workers = distributed.num_workers
    assert workers <= hw.gpus, f"{shipped.where}: {workers} workers, {hw.gpus} GPUs ({hw.source})"
    gib = plan.total(distributed.gradient_checkpointing) / 2**30
    assert plan.fits(distributed.gradient_checkpointing, hw.gb_per_gpu), (
        f"{shipped.where}: {' '.join(shipped.argv)} needs {gib:.1f} GiB per GPU, {hw.gb_per_gpu} GB GPUs ({hw.source})"
    )


def test_unfit_command_is_caught():
    """The check can fail: F1's stage 1 without gradient checkpointing does not fit 80 GB."""
    argv = (
        "--stage",
        "1",
        "--use-gpu",
        "--num-workers",
        "8",
        "--preset",
        "framepack-f1",
        "--deepspeed",
        "cluster/deepspeed/zero3_bf16.json",
    )
    plan, config = plan_of(argv)
    assert not plan.fits(False, DEFAULT_GPU_GB)
    assert plan.fits(True, DEFAULT_GPU_GB)

"""The method-fidelity benchmark's plumbing in quick mode (not its science: the benchmark is not a test)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("method_fidelity", ROOT / "bench" / "method_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["method_fidelity"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_mode_trains_evaluates_and_writes_the_promised_json(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "json.json"
    bench.main(
        [
            "--quick",
            "--workers",
            "0",
            "--variants",
            "memorypack,direct,direct_all,oracle_memory",
            "--absence",
            "1,4",
            "--identities",
            "3",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            str(out),
            "--mlflow-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    data = json.loads(out.read_text())
    assert data["chance"] == pytest.approx(1 / 3)
    assert data["world"] == {"seed": 0, "identities": 3, "camera": "static", "role": "development"}
    assert set(data["variants"]) == {"memorypack", "direct", "direct_all", "oracle_memory"}
    for entry in data["variants"].values():
        assert set(entry["recall"]) == {"mean", "std", "per_seed"} and len(entry["recall"]["per_seed"]) == 1
        assert set(entry["recall_by_absence"]) == {"1", "4"}
        assert set(entry["memory_probe_by_absence"]) == {"1", "4"}  # every variant here has a memory
        assert all(0.0 <= v <= 1.0 for v in entry["memory_probe_by_absence"].values())
        assert 0.0 <= entry["returned"] <= 1.0
        assert set(entry["drawn_by_absence"]) == {"1", "4"}
        assert set(entry["drift"]) == {"mean", "std", "per_seed"}
        assert entry["late_error"]["mean"] == pytest.approx(entry["drift_curve"][-1])  # 4 sections: the last one
        curves = entry["exposure_curves"]  # section 0 has no history: own and true history draw it alike
        assert len(curves["own_history"]) == len(curves["true_history"]) > 1
        assert curves["own_history"][0] == pytest.approx(curves["true_history"][0], abs=1e-9)
        assert entry["train_seconds_per_clip"] > 0 and entry["train_flops_per_clip"] > 0
    # stage 2 trains only the head: fewer FLOPs per clip than stage 1's whole-network backward
    flops = {v: e["train_flops_per_clip"] for v, e in data["variants"].items()}
    assert flops["direct"] < flops["memorypack"] and flops["direct"] < flops["direct_all"]
    assert "drift_sampled_at_guidance_10" in data["variants"]["direct"]
    for r in data["runs"]:  # 3 events per L (rounded up to K = 3), balanced; every return drew one identity
        assert data["settings"]["events"] == 3
        for L, drawn in r["drawn_by_absence"].items():
            assert len(drawn) == 3 and sum(drawn) == round(3 * r["returned_by_absence"][L])
    # the same seed's drift difference: direct starts from memorypack's export
    runs = {r["variant"]: r for r in data["runs"]}
    for r in data["runs"]:  # a run's eq. 8 is the mean over its rollouts; a barely trained model's error is not flat
        assert r["drift"] == pytest.approx(np.mean(r["drift_per_rollout"])) and r["drift"] > 0
    paired = data["paired_drift"]["direct - memorypack"]
    assert paired["per_seed"] == [pytest.approx(runs["direct"]["drift"] - runs["memorypack"]["drift"])]
    assert paired["per_rollout"]["n"] == 1 and paired["per_rollout"]["mean"] == pytest.approx(paired["mean"])
    gap = data["paired_exposure_gap"]["direct - memorypack"]
    assert gap["per_seed"] == [pytest.approx(runs["direct"]["exposure_gap"] - runs["memorypack"]["exposure_gap"])]
    assert Path(data["variants"]["direct"]["rollouts"][0]).stat().st_size > 0
    table = capsys.readouterr().out
    assert "memorypack" in table and "chance = 1/K" in table

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mempack-method-fidelity")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.params["variant"] for r in runs} == {"memorypack", "direct", "direct_all", "oracle_memory"}
    artifacts = {a.path for r in runs for a in client.list_artifacts(r.info.run_id, "rollouts")}
    assert any(p.endswith(".mp4") for p in artifacts)

    # bench/exposure_recheck.py re-measures the saved exports on fresh videos, paired video by video
    spec = importlib.util.spec_from_file_location("exposure_recheck", ROOT / "bench" / "exposure_recheck.py")
    recheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recheck)
    again = recheck.main(
        [
            "--run",
            str(out),
            "--videos",
            "2",
            "--pairs",
            "direct:memorypack",
            "--workers",
            "0",
            "--json",
            str(tmp_path / "recheck.json"),
        ]
    )
    pair = again["pairs"]["direct - memorypack"]
    assert pair["gap"]["n"] == 2 and len(pair["gap"]["per_seed"]) == 1
    for entry in again["variants"].values():
        assert entry["gap"] == pytest.approx(entry["own"] - entry["true"])
    assert pair["gap"]["mean"] == pytest.approx(
        again["variants"]["direct"]["gap"] - again["variants"]["memorypack"]["gap"]
    )
    assert json.loads((tmp_path / "recheck.json").read_text())["videos"] == 2


def test_bad_flags_are_one_line(capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--variants", "memorypack,oracle"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "oracle" in err[0]


def test_memory_diagnosis_plumbing(tmp_path):
    """bench/memory_diagnosis.py trains one model with a chosen clip and frozen memory and writes its curve."""
    spec = importlib.util.spec_from_file_location("memory_diagnosis", ROOT / "bench" / "memory_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "diag.json"
    curve = module.main(
        [
            "--clip",
            "return",
            "--freeze-memory",
            "--steps",
            "4",
            "--every",
            "2",
            "--events",
            "1",
            "--probe-videos",
            "8",
            "--eval",
            "1",
            "--width",
            "64",
            "--layers",
            "1",
            "--json",
            str(out),
        ]
    )
    assert [row["step"] for row in curve] == [0, 2, 4]  # the untrained model first
    assert set(curve[-1]["psi_readout"]) == {1} and set(curve[-1]["recall"]) == {1}
    assert set(curve[-1]["psi_energy"][1]) == {"identity", "varying"}
    # frozen memory: only the backbone and ψ's projection get gradients
    assert curve[0]["grad_rms"] is None and set(curve[-1]["grad_rms"]) == {"backbone", "to_context"}
    assert all(v > 0 for v in curve[-1]["grad_rms"].values())
    saved = json.loads(out.read_text())
    assert saved["settings"]["freeze_memory"] is True
    assert saved["world"] == {"seed": 0, "identities": 4, "camera": "static", "role": "development"}


def test_the_benchmarks_say_which_world_is_a_report_world(tmp_path):
    """A moving-camera report world through memory_diagnosis (the library's trainer, a library clip policy)."""
    spec = importlib.util.spec_from_file_location("memory_diagnosis", ROOT / "bench" / "memory_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "diag.json"
    curve = module.main(
        [
            "--clip",
            "late",
            "--world-seed",
            "2",
            "--camera",
            "moving",
            "--identities",
            "3",
            "--steps",
            "2",
            "--every",
            "2",
            "--events",
            "3",
            "--probe-videos",
            "8",
            "--eval",
            "1",
            "--width",
            "64",
            "--layers",
            "1",
            "--memorize-input",
            "segment",
            "--json",
            str(out),
        ]
    )
    assert [row["step"] for row in curve] == [0, 2] and curve[-1]["loss"] > 0
    saved = json.loads(out.read_text())
    assert saved["world"] == {"seed": 2, "identities": 3, "camera": "moving", "role": "report"}
    assert saved["settings"]["memorize_input"] == "segment"
    bench = _bench()
    args = bench.parse_args(["--world-seed", "1", "--camera", "moving", "--stage1-clip", "late"])
    assert (args.world_seed, args.camera, args.stage1_clip) == (1, "moving", "late")


def _recipe_steps():
    spec = importlib.util.spec_from_file_location("recipe_steps", ROOT / "bench" / "recipe_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _curve_row(step: int, recall: float, readout: float | None) -> dict:
    psi = None if readout is None else {"4": readout, "8": readout}
    return {
        "step": step,
        "recall": recall,
        "returned_by_absence": {"4": 1.0, "8": 0.5},
        "psi_readout_by_absence": psi,
        "psi_identity_share_by_absence": None if psi is None else {"4": 0.1, "8": 0.3},
    }


def test_recipe_steps_summary_counts_seeds_and_pairs_arms_within_a_seed():
    """bench/recipe_steps.py's summary: mean ± std over the seeds that reached a checkpoint (a stopped run
    has fewer at its last), the first checkpoint at the target, and arm − literal paired within a seed."""
    module = _recipe_steps()
    records = [
        {
            "camera": "moving",
            "arm": "memorypack",
            "seed": 0,
            "curve": [_curve_row(0, 0.2, 1.0), _curve_row(500, 0.9, 1.0)],
        },
        {"camera": "moving", "arm": "memorypack", "seed": 1, "curve": [_curve_row(0, 0.4, 0.5)]},  # stopped early
        {
            "camera": "moving",
            "arm": "literal",
            "seed": 0,
            "curve": [_curve_row(0, 0.2, 0.25), _curve_row(500, 0.3, 0.5)],
        },
        {"camera": "moving", "arm": "literal", "seed": 1, "curve": [_curve_row(0, 0.2, 0.25)]},
        {"camera": "moving", "arm": "framepack_only", "seed": 0, "curve": [_curve_row(0, 0.2, None)]},
        {"camera": "moving", "arm": "no_carry", "seed": 0, "curve": [{**_curve_row(0, 0.0, 0.5), "recall": None}]},
    ]
    settings = {"identities": 5, "eval": [1, 4, 8], "world_seed": 1}
    summary = module.summarise(records, settings)
    assert summary["recall_absences"] == [4, 8]  # L = 1 is inside FramePack's window
    assert summary["worlds"]["moving"] == {"seed": 1, "identities": 5, "camera": "moving", "role": "report"}
    memorypack = summary["arms"]["moving"]["memorypack"]
    first, last = memorypack["curve"]
    assert first["recall"]["n"] == 2 and first["recall"]["mean"] == pytest.approx(0.3)
    assert first["recall"]["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert last["recall"] == {"mean": 0.9, "std": 0.0, "n": 1, "per_seed": [0.9]}
    assert first["psi_identity_share"]["mean"] == pytest.approx(0.2) and first["returned"] == 0.75
    assert memorypack["steps_to_target"] == 500 and summary["arms"]["moving"]["literal"]["steps_to_target"] is None
    assert "psi_readout" not in summary["arms"]["moving"]["framepack_only"]["curve"][0]
    paired = summary["paired_vs_literal"]["moving"]["memorypack - literal"]
    assert [row["step"] for row in paired] == [0, 500]
    assert paired[0]["recall"]["per_seed"] == pytest.approx([0.0, 0.2])
    assert paired[0]["psi_readout"]["per_seed"] == pytest.approx([0.75, 0.25])
    assert paired[1]["recall"]["per_seed"] == pytest.approx([0.6]) and paired[1]["recall"]["n"] == 1
    # --psi-only: ψ is summarised and paired, recall is absent rather than zero
    psi_only = summary["arms"]["moving"]["no_carry"]
    assert "recall" not in psi_only["curve"][0] and psi_only["curve"][0]["psi_readout"]["mean"] == 0.5
    assert psi_only["steps_to_target"] is None
    (row,) = summary["paired_vs_literal"]["moving"]["no_carry - literal"]
    assert "recall" not in row and row["psi_readout"]["per_seed"] == pytest.approx([0.25])


def test_recipe_steps_bad_flags_are_one_line(capsys):
    module = _recipe_steps()
    for argv, word in ((["--arms", "memorypack,oracle"], "oracle"), (["--cameras", "pan"], "pan")):
        with pytest.raises(SystemExit) as exit_info:
            module.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0]

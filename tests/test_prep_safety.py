"""Prep never loses data: outputs that would hold the raw videos are refused, and a run that fails (a bad
setting, or a crash mid-job) leaves the previous output byte for byte as it was."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from data_prep.job import PrepConfig, run_prep
from data_prep.sources import load_inputs

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) → sha256 of its bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def prep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "pipelines/prep.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def prep_main(*args: str) -> str:
    """pipelines/prep.py's main in this process (no Ray is started: the refusal comes first)."""
    from pipelines import prep

    with pytest.raises(SystemExit) as exit_info:
        prep.main(list(args))
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_an_output_that_holds_or_sits_in_the_input_is_refused(sample_prep, tmp_path):
    folder = sample_prep[3]
    d = tmp_path / "d"
    shutil.copytree(folder, d / "videos")
    before = tree_digest(d)
    assert "contains the input" in prep_main("--input", str(d / "videos"), "--output", str(d))
    assert "lies inside the input" in prep_main("--input", str(d / "videos"), "--output", str(d / "videos" / "prep"))
    manifest = d / "videos" / "m.csv"
    manifest.write_text("videoFile,caption\nlong_single_shot.mp4,a kite\n")
    # the manifest's folder is its video root
    assert "lies inside the input" in prep_main("--input", str(manifest), "--output", str(d / "videos" / "out"))
    manifest.unlink()
    assert tree_digest(d) == before  # the raw videos are all still there, unchanged


def test_a_rerun_with_a_bad_setting_leaves_the_previous_output_intact(sample_prep):
    out, folder = sample_prep[0], sample_prep[3]
    before = tree_digest(out)
    line = one_error_line(prep_cli("--input", str(folder), "--output", str(out), "--set", "clip.max_shot_seconds=-1"))
    assert "clip.max_shot_seconds=-1" in line and "finite positive" in line
    assert tree_digest(out) == before
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_a_run_that_fails_mid_job_leaves_the_previous_output_intact(ray_local, sample_prep, tmp_path):
    """A crash after the job started (encoder weights that do not load, in the Ray actor): the previous
    output and the user's own files in it are untouched, and the staging folder is gone."""
    out = tmp_path / "out"
    shutil.copytree(sample_prep[0], out)
    (out / "my_notes.txt").write_text("mine\n")
    stale = tmp_path / ".out.staging"  # what a killed earlier run leaves behind: prep's own, so removed
    stale.mkdir()
    (stale / ".mempack-prep-staging").write_text("")
    before = tree_digest(out)
    broken = tmp_path / "no_weights"
    broken.mkdir()
    inputs = [i for i in load_inputs(sample_prep[3]) if i.source_id == "long_single_shot"]
    with pytest.raises(ray.exceptions.RayError):  # the encoder actor cannot load weights that are not there
        run_prep(inputs, PrepConfig(output=str(out), encoders=str(broken)))
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_weights", "out"]


def test_a_folder_prep_did_not_write_is_never_removed(sample_prep, tmp_path):
    out = tmp_path / "out"
    foreign = tmp_path / ".out.staging"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("not prep's\n")
    with pytest.raises(ValueError, match="was not written by prep"):
        run_prep([], PrepConfig(output=str(out)))
    assert (foreign / "precious.txt").read_text() == "not prep's\n"

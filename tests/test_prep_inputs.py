"""Prep survives any input: every file written here is real (PyAV/libx264, no mocks), and each bad one
ends as a counted reject row (or a kept video with a warning), never as a failed job."""

from __future__ import annotations

import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.decode import DecodeError, decode_frames, stream_frames
from data_prep.job import PrepConfig, run_prep
from data_prep.process import ClipSpec
from data_prep.sources import load_inputs
from mempack.sample import SampleShot, render_shot
from mempack.schema import read_clips, read_rejects, read_warnings


def moving(frames: int, size=(96, 128), hue: int = 40, seed: int = 0) -> np.ndarray:
    """A textured background with a moving square: passes the dynamism filter."""
    return render_shot(SampleShot(frames, 1.5 * size[1] / 128, hue), size, seed)


def write(
    path: Path,
    frames: np.ndarray,
    rate=30,
    fmt: str | None = None,
    rotation: int | None = None,
    pts: list[int] | None = None,
    options: dict | None = None,
    gop: int | None = None,
) -> Path:
    """h264 in any container; `pts` in milliseconds makes a variable frame rate, `rotation` display metadata."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast", **({"g": str(gop)} if gop else {})}
        if pts is not None:
            stream.codec_context.time_base = tb
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[i], tb
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        for k in range(30):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def numbered(n: int, size=(96, 128)) -> np.ndarray:
    """Frame i has grey level 5*i in its lower half: which source frame a decoded frame is can be read back."""
    frames = np.zeros((n, *size, 3), np.uint8)
    for i in range(n):
        frames[i, size[0] // 2 :] = 5 * i
    return frames


def frame_number(frame: np.ndarray) -> int:
    return int(round(float(frame[frame.shape[0] * 3 // 4 :].mean()) / 5))


# ---------------------------------------------------------------------------------------------------
# the decoder alone (no Ray): positions, rotation, windows, truncation, hangs
# ---------------------------------------------------------------------------------------------------


def test_variable_frame_rate_is_positioned_by_timestamps(tmp_path):
    # 30 frames in the first second, then 10 frames in the next: the average rate is ~20 fps
    times = [round(i * 1000 / 30) for i in range(30)] + [1000 + 100 * i for i in range(10)]
    path = write(tmp_path / "vfr.mp4", numbered(40), rate=20, pts=times)
    info, frames = decode_frames(str(path))
    grid = [k / info.fps for k in range(len(frames))]
    expected = [int(np.argmin([abs(t - g * 1000) for t in times])) for g in grid]  # nearest frame in time
    assert [frame_number(f) for f in frames] == expected
    # by average fps, grid frame k would be source frame k: at 1.0 s that is frame ~20, not frame 30
    k = int(round(1.0 * info.fps))
    assert frame_number(frames[k]) == 30 and k < 25


def test_rotation_metadata_is_applied(tmp_path):
    source = moving(20)
    plain = write(tmp_path / "plain.mp4", source)
    rotated = write(tmp_path / "rotated.mp4", source, rotation=90)
    info, frames = decode_frames(str(rotated))
    _, upright = decode_frames(str(plain))
    assert (info.rotation, info.height, info.width) == (90, 128, 96) and frames.shape == (20, 128, 96, 3)
    # display matrix: rotate 90 degrees counter-clockwise (ffmpeg's convention)
    np.testing.assert_array_equal(frames, np.rot90(upright, k=1, axes=(1, 2)))


def test_decord_decodes_constant_rate_files_and_pyav_the_rest(tmp_path):
    """decord (the user's choice) decodes a file whose frames lie on a constant grid, rotated or not; PyAV
    decodes variable frame rates and the last second decord lists (decord's #373). Where both apply they
    give the same frames: bit for bit at the source size, within a grey level or two when scaled."""
    plain = write(tmp_path / "plain.mp4", numbered(50), rate=10, gop=10)
    info, frames = decode_frames(str(plain))
    reference_info, reference = decode_frames(str(plain), decoder="pyav")
    assert (info.decoder, reference_info.decoder) == ("decord", "pyav")
    np.testing.assert_array_equal(frames, reference)
    assert [frame_number(f) for f in frames] == list(range(50))
    # a window that ends in the last 16 frames: decord seeks to 1 s and reads frames 10-33, PyAV 34-39
    info, frames = decode_frames(str(plain), 1.0, 4.0)
    assert info.decoder == "decord" and [frame_number(f) for f in frames] == list(range(10, 40))
    np.testing.assert_array_equal(frames, decode_frames(str(plain), 1.0, 4.0, decoder="pyav")[1])
    rotated = write(tmp_path / "rotated.mp4", moving(40), rotation=-90)  # decord applies the display matrix
    info, frames = decode_frames(str(rotated))
    assert (info.decoder, info.rotation, info.height, info.width) == ("decord", 270, 128, 96)
    np.testing.assert_array_equal(frames, decode_frames(str(rotated), decoder="pyav")[1])
    big = write(tmp_path / "big.mp4", moving(40, size=(360, 640)))
    info, frames = decode_frames(str(big), max_side=320)
    _, reference = decode_frames(str(big), max_side=320, decoder="pyav")
    assert info.decoder == "decord" and frames.shape == reference.shape == (40, 180, 320, 3)
    assert np.abs(frames.astype(int) - reference).mean() < 2  # decord's scale filter is bicubic, PyAV's area
    times = [round(i * 1000 / 30) for i in range(30)] + [1000 + 100 * i for i in range(20)]
    vfr = write(tmp_path / "vfr.mp4", numbered(50), rate=20, pts=times)
    assert decode_frames(str(vfr))[0].decoder == "pyav"
    with pytest.raises(ValueError, match="decoder='ffmpeg'"):
        stream_frames(str(plain), decoder="ffmpeg")


def test_a_window_seeks_and_decodes_only_its_frames(tmp_path):
    path = write(tmp_path / "long.mp4", numbered(50), rate=10, gop=10)  # keyframe every second
    info, frames = decode_frames(str(path), start_seconds=2.0, end_seconds=3.5)
    assert [frame_number(f) for f in frames] == list(range(20, 35))
    with pytest.raises(DecodeError, match="window_past_end: the window starts at 60 s"):
        stream_frames(str(path), 60.0, 65.0)
    info, windows = stream_frames(str(path), 4.0, 8.0)  # runs past the end: kept, and it says so
    assert len(np.concatenate(list(windows))) == 10
    assert windows.warnings == ["window_past_end: the window ends at 8 s, the video at 5.00 s"]


def test_large_sources_are_decoded_scaled_down(tmp_path):
    path = write(tmp_path / "big.mp4", moving(6, size=(720, 1280)))
    info, frames = decode_frames(str(path), max_side=320)
    assert frames.shape == (6, 180, 320, 3) and (info.height, info.width) == (180, 320)


def test_a_partly_decodable_file_keeps_its_frames_and_says_so(tmp_path):
    whole = write(tmp_path / "whole.mp4", numbered(48), options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    info, windows = stream_frames(str(cut))
    frames = np.concatenate(list(windows))
    assert 0 < len(frames) < 48 and [frame_number(f) for f in frames] == list(range(len(frames)))
    assert len(windows.warnings) == 1 and windows.warnings[0].startswith("truncated:")


def test_a_resolution_change_ends_the_video_there(tmp_path):
    first = write(tmp_path / "a.ts", numbered(20), fmt="mpegts")
    second = write(tmp_path / "b.ts", numbered(10, size=(48, 64)), fmt="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    info, windows = stream_frames(str(joined))
    frames = np.concatenate(list(windows))
    assert frames.shape == (20, 96, 128, 3)
    assert windows.warnings == ["resolution_change: 128x96 -> 64x48 at decoded frame 20; the video ends there"]
    twice = tmp_path / "twice.ts"  # the same stream appended: its timestamps start over
    twice.write_bytes(first.read_bytes() * 2)
    info, windows = stream_frames(str(twice))
    assert len(np.concatenate(list(windows))) == 20
    assert windows.warnings[0].startswith("broken_timestamps:") and "at decoded frame 20" in windows.warnings[0]


def test_header_checks_reject_before_decoding(tmp_path):
    cases = {
        write_audio_only(tmp_path / "audio.mp4"): "no_video_stream: 1 audio and 0 video streams",
        write(tmp_path / "fast.mp4", numbered(10), rate=1000): "bad_frame_rate: 1000",
        write(tmp_path / "wide.mp4", numbered(10, size=(32, 256))): "extreme_aspect_ratio: 256x32",
    }
    for path, reason in cases.items():
        with pytest.raises(DecodeError) as err:
            stream_frames(str(path))
        assert str(err.value).startswith(reason), (path.name, str(err.value))


def test_a_decode_that_hangs_is_killed_and_keeps_what_it_decoded(tmp_path):
    """A FIFO with no writer blocks the decoder's open(); one whose writer stalls blocks it mid-stream.
    Both are stopped by killing the decoder process, and the next file decodes in a fresh one."""
    silent = tmp_path / "silent.ts"
    os.mkfifo(silent)
    started = time.monotonic()
    # 5 s, not less: a loaded 2-core CI machine can take seconds to start the decoder process
    with pytest.raises(DecodeError, match="timeout: the decoder sent nothing for 5 s"):
        stream_frames(str(silent), timeout_s=5)
    assert time.monotonic() - started < 30

    write(tmp_path / "good.ts", moving(60), fmt="mpegts")
    # 10 s of stream, 70% of it written: more than ffmpeg's 5-s probe needs, so the stall lands mid-stream
    data = write(tmp_path / "long.ts", moving(300, size=(48, 64)), fmt="mpegts").read_bytes()
    stalled, release = tmp_path / "stalled.ts", threading.Event()
    os.mkfifo(stalled)

    def writer():
        try:
            with open(stalled, "wb") as fh:
                fh.write(data[: len(data) * 7 // 10])
                fh.flush()
                release.wait(60)
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        info, windows = stream_frames(str(stalled), timeout_s=5)
        frames = list(windows)
    finally:
        release.set()
    assert sum(len(f) for f in frames) > 0
    assert len(windows.warnings) == 1 and windows.warnings[0].startswith("timeout: the decoder sent nothing for 5 s")
    info, frames = decode_frames(str(tmp_path / "good.ts"))
    assert len(frames) == 60


# ---------------------------------------------------------------------------------------------------
# the whole job: every file of a folder is an input, accepted or rejected, and counted once
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def awkward_folder(ray_local, tmp_path_factory):
    """A folder with every awkward file the issue lists; prepped once. Returns (folder, out, summary)."""
    folder = tmp_path_factory.mktemp("awkward")
    long = moving(180, hue=20)
    write(folder / "plain.mp4", long)
    write(folder / "a.mp4", long)
    write(folder / "a.mov", moving(180, hue=150, seed=3))  # same stem, another video: never merged with a.mp4
    (folder / "a.txt").write_text("caption of both a files\n")  # a sidecar: not an input
    write(folder / "rotated.mp4", long, rotation=-90)
    times = [round(i * 1000 / 30) for i in range(90)] + [3000 + round(i * 1000 / 15) for i in range(90)]
    write(folder / "vfr.mp4", long, rate=20, pts=times)
    write(folder / "stream.ts", long, fmt="mpegts")
    write(folder / "stream.unknownext", long, fmt="mp4")  # an extension prep does not know: still tried
    first = write(folder / "part1.tmp", long, fmt="mpegts")
    second = write(folder / "part2.tmp", moving(30, size=(48, 64)), fmt="mpegts")
    (folder / "reschange.ts").write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    whole = write(folder / "whole.tmp", moving(300, hue=90), fmt="mp4", options={"movflags": "faststart"})
    (folder / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    whole.unlink()
    write_audio_only(folder / "audio_only.mp4")
    write(folder / "absurd_fps.mp4", numbered(10), rate=1000)
    write(folder / "panorama.mp4", numbered(10, size=(32, 256)))
    (folder / "notes.md").write_text("not a video\n")
    os.mkfifo(folder / "hangs.ts")  # nobody ever writes: the decoder blocks in open()
    out = tmp_path_factory.mktemp("awkward_out")
    config = PrepConfig(output=str(out), clip=ClipSpec(decode_timeout_s=5.0))
    summary = run_prep(load_inputs(folder), config)
    return folder, out, summary


def test_every_file_of_a_folder_is_accepted_or_rejected_exactly_once(awkward_folder):
    folder, out, summary = awkward_folder
    files = sorted(p.name for p in folder.iterdir() if p.name != "a.txt")
    assert summary["inputs"] == len(files) == 14
    assert summary["inputs_accepted"] + summary["inputs_rejected"] == summary["inputs"]
    accepted = {r["input_id"] for r in read_clips(out, columns=["input_id"]).to_pylist()}
    rejected = {r["input_id"] for r in read_rejects(out).to_pylist()} - accepted
    assert accepted == {
        f"folder:{n}"
        for n in (
            "plain",
            "a.mp4",
            "a.mov",
            "rotated",
            "vfr",
            "stream.ts",
            "stream.unknownext",
            "reschange",
            "truncated",
        )
    }
    assert len(accepted) + len(rejected) == len(files) and not accepted & rejected


def test_bad_files_are_rejected_with_their_reasons(awkward_folder):
    folder, out, summary = awkward_folder
    reasons = {r["input_id"]: r["reason"] for r in read_rejects(out).to_pylist() if r["stage"] == "decode"}
    assert reasons["folder:audio_only"].startswith("no_video_stream")
    assert reasons["folder:absurd_fps"].startswith("bad_frame_rate")
    assert reasons["folder:panorama"].startswith("extreme_aspect_ratio")
    assert reasons["folder:notes"] == "not_a_video: text file"
    assert reasons["folder:hangs"].startswith("timeout: the decoder sent nothing for 5 s")
    assert set(read_rejects(out).column_names) == {"input_id", "source_path", "stage", "reason", "score"}


def test_partly_decoded_files_are_kept_with_a_warning(awkward_folder):
    folder, out, summary = awkward_folder
    warnings = {r["input_id"]: r["reason"] for r in read_warnings(out).to_pylist()}
    assert set(warnings) == {"folder:truncated", "folder:reschange"}
    assert warnings["folder:truncated"].startswith("truncated:")
    assert warnings["folder:reschange"].startswith("resolution_change: 128x96 -> 64x48")
    assert summary["inputs_truncated"] == 2


def test_same_named_files_stay_two_videos(awkward_folder):
    folder, out, summary = awkward_folder
    clips = read_clips(out, columns=["input_id", "video_id", "source_path", "caption"]).to_pylist()
    by_input = {}
    for r in clips:
        by_input.setdefault(r["input_id"], set()).add((r["video_id"].rsplit(":", 1)[0], Path(r["source_path"]).name))
    assert by_input["folder:a.mp4"] == {("folder:a.mp4", "a.mp4")}
    assert by_input["folder:a.mov"] == {("folder:a.mov", "a.mov")}
    assert {r["caption"] for r in clips if r["input_id"].startswith("folder:a.")} == {"caption of both a files"}


def test_the_shot_buffer_is_capped_in_bytes_whatever_the_frame_rate():
    """A cap in frames grows with the source's fps and size; the byte cap closes a take at the same memory."""
    from data_prep.shots import ShotSplitter

    frames = moving(120, size=(48, 64))  # one shot, no cut
    cap = 25 * frames[0].nbytes
    for fps in (30.0, 120.0):
        splitter = ShotSplitter(fps, max_shot_frames=round(60 * fps), max_shot_bytes=cap)
        shots, held = [], 0
        for start in range(0, len(frames), 8):
            shots += splitter.push(frames[start : start + 8])
            held = max(held, sum(b.nbytes for b in splitter.buffer))
        shots += splitter.finish()
        assert [len(s.frames) for s in shots] == [25, 25, 25, 25, 20]
        assert held < cap + 8 * frames[0].nbytes  # never more than the cap and the window that reached it
        np.testing.assert_array_equal(np.concatenate([s.frames for s in shots]), frames)

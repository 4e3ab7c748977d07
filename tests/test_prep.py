"""Data prep: shots, dynamism, clip counts, the Parquet contract, curriculum, and bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from itertools import pairwise

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.decode import decode_frames
from data_prep.job import PrepConfig, run_prep
from data_prep.shots import detect_shots
from data_prep.sources import load_inputs
from mempack.presets import FPS
from mempack.schema import (
    SCHEMA_VERSION,
    SchemaVersionError,
    read_clips,
    read_rejects,
    read_videos,
    unpack_tensor,
)
from mempack.video_io import write_mp4


@pytest.fixture(scope="module")
def sample(sample_prep):
    return sample_prep[3], sample_prep[4]


@pytest.fixture(scope="module")
def prepped(sample_prep):
    return sample_prep[0], sample_prep[1], sample_prep[2]


def test_shot_cuts_are_found_within_one_frame(sample):
    folder, videos = sample
    for video in videos:
        info, frames = decode_frames(str(folder / f"{video.name}.mp4"))
        assert info.num_frames == video.num_frames
        found = [start for start, _ in detect_shots(frames, info.fps)][1:]
        assert len(found) == len(video.cuts), video.name
        assert all(abs(a - b) <= 1 for a, b in zip(found, video.cuts, strict=True)), (video.name, found, video.cuts)


def test_static_shots_are_rejected_and_moving_ones_kept(prepped):
    out, summary, _ = prepped
    rejects = read_rejects(out).to_pylist()
    static = [r for r in rejects if r["stage"] == "dynamism"]
    assert sorted(r["source_path"].rsplit("/", 1)[-1] for r in static) == ["static_only.mp4", "static_then_moving.mp4"]
    assert all(r["reason"].startswith("static:") and r["score"] < 0.02 for r in static)
    kept = set(read_clips(out).column("video_id").to_pylist())
    assert "folder:static_then_moving:shot001" in kept  # its moving second shot survives
    assert "folder:static_then_moving:shot000" not in kept


def test_clips_per_shot_follow_from_length_and_the_clock(prepped, sample):
    out, summary, config = prepped
    folder, videos = sample
    clips = read_clips(out)
    counts = {}
    for vid, n in zip(clips.column("video_id").to_pylist(), clips.column("num_clips").to_pylist(), strict=True):
        counts[vid] = n
    expected = {}
    for video in videos:
        for k, shot in enumerate(video.shots):
            if shot.speed:
                # the sample is at the clock's 30 fps: sections = whole 36-frame sections after the start frame
                assert video.fps == FPS
                expected[f"folder:{video.name}:shot{k:03d}"] = (shot.frames - 1) // 36
    assert counts == expected
    assert expected == {
        "folder:street_two_shots:shot000": 2,
        "folder:street_two_shots:shot001": 1,
        "folder:static_then_moving:shot001": 2,
        "folder:long_single_shot:shot000": 3,
    }
    assert summary["clips"] == sum(expected.values()) == clips.num_rows
    for vid, n in expected.items():  # each video's clips are all present, in order, 36 frames apart
        mine = [r for r in clips.to_pylist() if r["video_id"] == vid]
        assert [r["clip_index"] for r in mine] == list(range(n))
        assert all(b["start_frame"] - a["start_frame"] == 36 for a, b in pairwise(mine))
        assert all(r["fps"] == FPS and r["num_frames"] == 36 for r in mine)
    shot_starts = {v["video_id"]: v["start_frame"] for v in read_videos(out).to_pylist()}
    assert all(r["start_frame"] == shot_starts[r["video_id"]] + 1 + 36 * r["clip_index"] for r in clips.to_pylist())


def test_latents_read_back_equal_the_encoder_output(prepped, sample):
    from mempack.encoders import VideoEncoders, resize_center_crop

    out, _, config = prepped
    folder, _ = sample
    row = [r for r in read_clips(out).to_pylist() if r["video_id"] == "folder:long_single_shot:shot000"][1]
    latents = unpack_tensor("latents", row["latents"], row["latents_shape"])
    # the portrait sample (128x96) sits in tiny's 80x48 bucket: latents 10x6
    assert latents.shape == (16, 9, 10, 6) and latents.dtype == np.float16 and row["latent_dtype"] == "float16"
    assert (row["height"], row["width"]) == (80, 48)
    _, frames = decode_frames(str(folder / "long_single_shot.mp4"))
    encoders = VideoEncoders.build("tiny", seed=config.encoder_seed)
    stream = encoders.encode_video(resize_center_crop(frames[:109], 80, 48))[0]  # 1 + 36·3 frames
    np.testing.assert_array_equal(latents, stream[:, 10:19].numpy().astype(np.float16))
    video = [v for v in read_videos(out).to_pylist() if v["video_id"] == row["video_id"]][0]
    prompt = encoders.encode_prompt(["a yellow kite sweeps across a long sky"])
    np.testing.assert_array_equal(
        unpack_tensor("prompt_embeds", video["prompt_embeds"], video["prompt_embeds_shape"]),
        prompt.prompt_embeds[0].numpy().astype(np.float16),
    )
    np.testing.assert_array_equal(
        unpack_tensor("image_latent", video["image_latent"], video["image_latent_shape"]),
        encoders.encode_image_latent(resize_center_crop(frames[:1], 80, 48))[0].numpy().astype(np.float16),
    )  # frame 0 alone, not the stream's latent 0


def test_curriculum_partitions_hold_exactly_their_videos(prepped):
    out, summary, _ = prepped
    assert summary["clips_per_video_buckets"] == {"1": 1, "2": 2, "3": 1}
    assert summary["resolution_buckets"] == {"48x80": 3, "80x48": 1}
    for bucket in (out / "clips").iterdir():
        k = int(bucket.name.split("=")[1])
        table = pq.read_table(bucket)
        ids = table.column("video_id").to_pylist()
        assert all(ids.count(v) == k for v in set(ids))  # every video in bucket k has k clips here
    assert {v["video_id"] for v in read_videos(out).to_pylist()} == set(read_clips(out).column("video_id").to_pylist())


def test_a_second_run_replaces_instead_of_duplicating(ray_local, prepped, sample, tmp_path):
    shared, first, config = prepped
    folder, _ = sample
    out = tmp_path / "prep"  # a copy: the other xdist worker may be training from the shared output now
    shutil.copytree(shared, out)
    config = dataclasses.replace(config, output=str(out))
    before = read_clips(out).num_rows
    (out / "my_notes.txt").write_text("the user's own file\n")
    again = run_prep(load_inputs(folder), config)
    assert (out / "my_notes.txt").read_text() == "the user's own file\n"  # prep removes only what it wrote
    (out / "my_notes.txt").unlink()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging or previous output left behind
    assert read_clips(out).num_rows == before == again["clips"]
    assert read_videos(out).num_rows == first["videos"]
    assert read_rejects(out).num_rows == sum(first["rejects_per_reason"].values())


def test_unknown_schema_version_is_refused(prepped, tmp_path):
    out, _, _ = prepped
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    f = next((copy / "videos").rglob("*.parquet"))
    table = pq.read_table(f)
    idx = table.schema.get_field_index("schema_version")
    import pyarrow as pa

    table = table.set_column(idx, "schema_version", pa.array([99] * table.num_rows, pa.int32()))
    pq.write_table(table, f)
    refused = f"schema_version \\[.*99\\].*reads version {SCHEMA_VERSION}.*re-run pipelines/prep.py"
    with pytest.raises(SchemaVersionError, match=refused):
        read_videos(copy)


def _bad_inputs(folder):
    """Every kind of bad input the issue lists, plus two good files with awkward names."""
    rng = np.random.default_rng(0)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (folder / "text.mp4").write_text("this is not a video\n")
    import PIL.Image

    PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "image.png")
    (folder / "image.png").rename(folder / "image.mp4")
    frames = np.stack(
        [
            np.roll(np.tile(np.arange(128, dtype=np.uint8)[None, :, None], (96, 1, 3)) * 2, 3 * i, axis=1)
            for i in range(40)
        ]
    )  # 2.5 s at 16 fps: two sections at 30 fps
    frames[:, 30:60, :] = 255 - frames[:, 30:60, :]
    write_mp4(frames[:1], folder / "one_frame.mp4", 16)
    write_mp4(frames, folder / "good.mp4", 16)
    data = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_mp4(frames, folder / "spaced näme ü.mp4", 16)
    manifest = folder / "mira.csv"
    header = [
        "clip_id",
        "source",
        "video_url",
        "video_id",
        "width",
        "height",
        "fps",
        "seconds",
        "timestamp",
        "frame_number",
        "framestamp",
        "file_path",
        "short_caption",
        "dense_caption",
        "background_caption",
        "main_object_caption",
        "style_caption",
        "camera_caption",
    ]
    names = [
        "empty.mp4",
        "random.mp4",
        "text.mp4",
        "image.mp4",
        "one_frame.mp4",
        "truncated.mp4",
        "spaced näme ü.mp4",
        "good.mp4",
        "missing.mp4",
    ]
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for k, name in enumerate(names):
            caption = "" if name == "good.mp4" else f"clip {k}"
            w.writerow(
                [
                    f"12.{k}0",
                    "youtube",
                    "",
                    f"v{k}",
                    128,
                    96,
                    16,
                    2.5,
                    "['0:00:00.0', '0:00:02.5']",
                    40,
                    "",
                    name,
                    caption,
                    caption,
                    "",
                    "",
                    "",
                    "",
                ]
            )
        # rows that are bad on their own, and a repeated clip_id: each is one input, rejected or kept alone
        for clip_id, name, timestamp in [
            ("bad_time", "good.mp4", "['soon', 'later']"),
            ("no_file", "", "['0:00:00.0', '0:00:02.5']"),
            ("past_end", "good.mp4", "['0:01:00.0', '0:01:05.0']"),
            ("12.70", "spaced näme ü.mp4", "['0:00:00.0', '0:00:02.5']"),
        ]:
            w.writerow(
                [clip_id, "youtube", "", "v", 128, 96, 16, 2.5, timestamp, 40, "", name, "c", "c", "", "", "", ""]
            )
    return manifest, names + ["bad_time", "no_file", "past_end", "12.70 again"]


def test_bad_inputs_are_counted_with_specific_reasons(ray_local, tmp_path):
    manifest, names = _bad_inputs(tmp_path)
    inputs = load_inputs(manifest)
    assert [i.source_id for i in inputs][:2] == ["12.00", "12.10"]  # clip_id stays a string
    summary = run_prep(inputs, PrepConfig(output=str(tmp_path / "out")))
    assert summary["inputs"] == len(names) == summary["inputs_accepted"] + summary["inputs_rejected"]
    assert summary["inputs_accepted"] == 3 and summary["captions_missing"] == 1
    by_id = {r["input_id"]: r["reason"] for r in read_rejects(tmp_path / "out").to_pylist()}
    assert by_id["mira:bad_time"].startswith("bad_manifest_row: line 11: not a time")
    assert by_id["mira:no_file"] == "bad_manifest_row: line 12: no file_path"
    assert by_id["mira:past_end"].startswith("window_past_end: the window starts at 60 s")
    kept = {r["input_id"] for r in read_clips(tmp_path / "out", columns=["input_id"]).to_pylist()}
    assert kept == {"mira:12.60", "mira:12.70", "mira:12.70~2"}  # a repeated clip_id is two videos
    by_file = {}
    for r in read_rejects(tmp_path / "out").to_pylist():
        by_file.setdefault(r["source_path"].rsplit("/", 1)[-1], []).append(r["reason"])
    reasons = {k: v[0].split(":")[0] for k, v in by_file.items()}
    assert reasons["empty.mp4"] == "empty_file"
    assert reasons["missing.mp4"] == "missing_file"
    assert by_file["text.mp4"] == ["not_a_video: text file"]
    assert by_file["image.mp4"] == ["not_a_video: PNG image"]
    assert reasons["random.mp4"] in ("unreadable", "no_frames"), by_file["random.mp4"]
    assert reasons["one_frame.mp4"] == "too_short" and "1 frames" in by_file["one_frame.mp4"][0]
    assert reasons["truncated.mp4"] in ("too_short", "unreadable", "no_frames")
    clips = read_clips(tmp_path / "out").to_pylist()
    assert {r["source_path"].rsplit("/", 1)[-1] for r in clips} == {"good.mp4", "spaced näme ü.mp4"}
    assert {r["caption"] for r in clips if r["source_path"].endswith("good.mp4")} == {""}
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["inputs"] == summary["inputs"]


def test_manifests_and_sidecars_become_inputs(tmp_path):
    """Sekai ids keep their underscores, Mira windows become seconds, sidecar captions are read."""
    from data_prep.sources import from_folder

    sekai = tmp_path / "sekai.csv"
    with open(sekai, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["videoFile", "cameraFile", "caption", "location", "scene", "weather", "crowdDensity", "timeOfDay"])
        w.writerow(["a_b-c_0000030_0000900.mp4", "a_b-c.txt", " a walk in Tokyo ", "Tokyo", "street", "", "", ""])
        w.writerow(["plain.mp4", "", "", "", "", "", "", ""])
    rows = load_inputs(sekai, video_root=tmp_path / "videos")
    assert [(r.source, r.source_id, r.caption) for r in rows] == [
        ("sekai", "a_b-c_0000030_0000900", "a walk in Tokyo"),
        ("sekai", "plain", ""),
    ]
    assert rows[0].source_path == str(tmp_path / "videos" / "a_b-c_0000030_0000900.mp4")

    mira = tmp_path / "mira.csv"
    with open(mira, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["clip_id", "file_path", "timestamp", "short_caption", "dense_caption"])
        w.writerow(["7.10", "x/y.mp4", "['0:01:02.5', '1:00:00.0']", "short", ""])
    (row,) = load_inputs(mira)
    assert (row.source_id, row.caption, row.start_seconds, row.end_seconds) == ("7.10", "short", 62.5, 3600.0)

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.MOV", "c.mp4", "notes.md"):
        (folder / name).write_bytes(b"x")
    (folder / "a.txt").write_text(" from txt \n")
    (folder / "sub" / "b.json").write_text('{"caption": "from json"}')
    assert [(r.source_id, r.caption) for r in from_folder(folder)] == [
        ("a", "from txt"),
        ("c", ""),
        ("notes", ""),
        ("sub/b", "from json"),
    ]  # notes.md is an input too
    with pytest.raises(ValueError, match="not a MiraData"):
        (tmp_path / "other.csv").write_text("foo,bar\n1,2\n")
        load_inputs(tmp_path / "other.csv")


def test_a_manifest_window_decodes_only_its_frames(sample):
    folder, videos = sample
    video = videos[2]  # long_single_shot: 112 frames at 30 fps
    info, frames = decode_frames(str(folder / f"{video.name}.mp4"), start_seconds=1.0, end_seconds=3.0)
    _, whole = decode_frames(str(folder / f"{video.name}.mp4"))
    assert len(frames) == 60
    np.testing.assert_array_equal(frames, whole[30:90])


@pytest.mark.parametrize("window", [1, 7, 64, 1000])
def test_online_shot_splitting_matches_whole_video_detection(sample, window):
    """Shots found window by window equal the whole-video answer; only the shot in progress is held."""
    from data_prep.shots import ShotSplitter

    folder, videos = sample
    video = videos[0]  # street_two_shots: cut at frame 76 of 116
    info, frames = decode_frames(str(folder / f"{video.name}.mp4"))
    splitter = ShotSplitter(info.fps, min_shot_frames=8)
    shots, held = [], 0
    for start in range(0, len(frames), window):
        shots += splitter.push(frames[start : start + window])
        held = max(held, sum(len(b) for b in splitter.buffer))
    shots += splitter.finish()
    assert (
        [(s.start, s.end) for s in shots] == detect_shots(frames, info.fps, min_shot_frames=8) == [(0, 76), (76, 116)]
    )
    assert all(np.array_equal(s.frames, frames[s.start : s.end]) for s in shots)
    assert held <= 76 + window  # never the whole file: at most one shot and the window that ends it


def test_long_takes_become_several_contiguous_training_videos(sample):
    from data_prep.process import ClipSpec, process_input

    folder, videos = sample
    row = load_inputs(folder)[[i.source_id for i in load_inputs(folder)].index("long_single_shot")].to_row()
    spec = ClipSpec(max_shot_seconds=1.5)  # 45 source frames at 30 fps per training video
    rows = list(process_input(row, spec, "tiny"))
    shots = [r for r in rows if r["table"] == "shots"]
    assert [r["video_id"] for r in shots] == [f"folder:long_single_shot:shot00{k}" for k in range(2)]
    # 112 frames → takes of 45, 45, 22; a take of 45 frames holds 1 + 36 (one section), 22 frames none
    assert [(r["shot_index"], r["start_frame"], r["num_clips"], r["num_frames"]) for r in shots] == [
        (0, 0, 1, 37),
        (1, 45, 1, 37),
    ]
    (short,) = [r for r in rows if r["table"] == "rejects"]
    assert short["reason"].startswith("too_short: shot 2 spans 0.70 s < 1.2 s")

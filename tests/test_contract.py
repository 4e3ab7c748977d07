"""FramePack-F1's latent contract and the one clock: what prep stores is what inference decodes.

A training video is one causal VAE stream of 1 + 36·n frames at 30 fps, section s is latents
1 + 9s … 9 + 9s of it; its start latent is frame 0 encoded alone, as inference encodes its image. These
tests hold prep's Parquet against a whole-video encode of
the same frames, inference's frame count against prep's, and the clock, buckets and version against
the presets, for every preset.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.clips import min_source_frames, plan_stream, resample_indices
from data_prep.decode import decode_frames
from data_prep.process import ClipSpec, shot_rows
from data_prep.shots import Shot
from mempack.presets import (
    FPS,
    PRESETS,
    SECTION_LATENT_FRAMES,
    frames_for_sections,
    get_preset,
    nearest_bucket,
    sections_for_frames,
)
from mempack.schema import SCHEMA_VERSION, SchemaVersionError, read_clips, read_videos, unpack_tensor


@pytest.fixture(scope="module")
def prepped(sample_prep):
    out, summary, config, folder, videos = sample_prep
    return out, config, folder


def _stream_frames(folder, video, bucket, start: int, count: int) -> np.ndarray:
    """The sample's frames [start, start + count) (it is at 30 fps already), resized as prep resizes them."""
    from mempack.encoders import resize_center_crop

    _, frames = decode_frames(str(folder / f"{video}.mp4"))
    return resize_center_crop(frames[start : start + count], *bucket)


def test_section_latents_are_slices_of_one_whole_video_encode(prepped):
    """Every stored section equals its slice of the whole shot's encode, to fp16."""
    from mempack.encoders import VideoEncoders

    out, config, folder = prepped
    encoders = VideoEncoders.build(config.preset, seed=config.encoder_seed)
    clips = read_clips(out).to_pylist()
    videos = read_videos(out).to_pylist()
    assert videos
    for video in videos:
        n = video["num_clips"]
        assert video["num_frames"] == frames_for_sections(n) == 1 + 36 * n
        name = video["video_id"].split(":")[1]
        frames = _stream_frames(
            folder, name, (video["height"], video["width"]), video["start_frame"], video["num_frames"]
        )
        stream = encoders.encode_video(frames)[0].numpy()  # [C, 1 + 9n, h, w]
        assert stream.shape[1] == 1 + SECTION_LATENT_FRAMES * n
        mine = sorted((c for c in clips if c["video_id"] == video["video_id"]), key=lambda c: c["clip_index"])
        assert len(mine) == n
        for s, clip in enumerate(mine):
            latents = unpack_tensor("latents", clip["latents"], clip["latents_shape"]).astype(np.float32)
            np.testing.assert_allclose(latents, stream[:, 1 + 9 * s : 10 + 9 * s], rtol=1e-3, atol=1e-3)
            assert (clip["height"], clip["width"]) == (video["height"], video["width"])


def test_the_start_latent_is_what_inference_encodes_from_the_first_frame(prepped):
    """Prep's start latent is, exactly (fp16, as stored), the pipeline's start latent for the video's first
    frame; the stream's latent 0 is not (the VAE's GroupNorm lets frames 1–16 into it)."""
    from mempack.encoders import VideoEncoders, resize_center_crop
    from mempack.pipeline import conditioning

    out, config, folder = prepped
    encoders = VideoEncoders.build(config.preset, seed=config.encoder_seed)
    videos = read_videos(out).to_pylist()
    assert videos
    for video in videos:
        name, size = video["video_id"].split(":")[1], (video["height"], video["width"])
        _, source = decode_frames(str(folder / f"{name}.mp4"))
        first = resize_center_crop(source[video["start_frame"]][None], *size)[0]  # as the pipeline resizes its image
        inference = conditioning(encoders, first, video["caption"] or "").start_latent[0].numpy()
        stored = unpack_tensor("image_latent", video["image_latent"], video["image_latent_shape"])
        np.testing.assert_array_equal(stored, inference.astype(np.float16))
        stream = encoders.encode_video(_stream_frames(folder, name, size, video["start_frame"], 37))[0].numpy()
        assert np.abs(stream[:, :1] - inference).max() > 0.01  # what version 2 stored, and why it changed


def test_a_section_encoded_alone_is_not_its_slice_of_the_stream(prepped):
    """Why prep encodes one stream: a section encoded on its own starts with a one-frame latent."""
    from mempack.encoders import VideoEncoders

    out, config, folder = prepped
    encoders = VideoEncoders.build(config.preset, seed=config.encoder_seed)
    frames = _stream_frames(folder, "long_single_shot", (80, 48), 0, 73)
    stream = encoders.encode_video(frames)[0]
    alone = encoders.encode_video(frames[36:73])[0]  # section 1 with the frame before it, as v1 prep did
    gap = (alone[:, 1:] - stream[:, 10:19]).abs().max().item()
    assert gap > 0.05, gap


@pytest.mark.parametrize("sections", [1, 2, 5, 50])
def test_inference_frame_count_equals_prep_for_n_sections(sections):
    """infer decodes start + n sections to 1 + 36·n frames: the length of a prepped n-section video."""
    from mempack.inference import InferenceRequest, plan_frames

    frames, planned = plan_frames(InferenceRequest(sections=sections), FPS)
    assert (frames, planned) == (frames_for_sections(sections), sections)
    source = np.arange(frames)  # a shot at the clock of exactly that many frames
    assert len(plan_stream(len(source), FPS, "tiny")) == frames
    assert sections_for_frames(frames) == sections
    seconds_frames, seconds_sections = plan_frames(InferenceRequest(seconds=sections * 1.2), FPS)
    assert seconds_sections == sections and seconds_frames == 36 * sections  # 1.2 s per section


def test_every_preset_runs_on_the_one_clock():
    for preset in PRESETS.values():
        assert preset.fps == FPS == 30.0
        assert preset.section_frames == 36 == preset.vae_temporal * SECTION_LATENT_FRAMES
        assert all(h % 16 == 0 and w % 16 == 0 for h, w in preset.buckets)
        assert preset.default_bucket in preset.buckets
    assert ClipSpec.__dataclass_fields__.keys().isdisjoint({"target_fps", "clip_frames", "height", "width"})


@pytest.mark.parametrize("src_fps", [24.0, 25.0, 29.97, 30.0, 60.0])
@pytest.mark.parametrize("seconds,sections", [(1.0, 0), (1.25, 1), (2.0, 1), (2.5, 2), (3.0, 2), (3.7, 3)])
def test_short_shots_of_real_footage_yield_training_videos(src_fps, seconds, sections):
    """A shot spanning 1.2 s holds one section at any source rate; 3 s hold two (1 + 72 frames)."""
    import cv2

    count = int(round(seconds * src_fps)) + 1
    noise = np.random.default_rng(0).integers(0, 256, (72, 128 + count, 3), dtype=np.uint8)
    texture = cv2.GaussianBlur(noise, (7, 7), 0)
    frames = np.stack([texture[:, i : i + 128] for i in range(count)])  # a camera pan: dynamic enough to keep
    row = {"source": "folder", "source_id": "clip", "source_path": "/x/clip.mp4", "caption": "a bar"}
    out = shot_rows(row, 0, Shot(0, frames), src_fps, ClipSpec(), "framepack-f1")
    if sections == 0:
        assert out[0]["table"] == "rejects" and out[0]["reason"].startswith("too_short: shot 0 spans")
        return
    (shot,) = out
    assert shot["table"] == "shots" and shot["num_clips"] == sections
    assert shot["num_frames"] == frames_for_sections(sections) and shot["fps"] == FPS
    assert shot["source_fps"] == pytest.approx(src_fps)
    assert (shot["height"], shot["width"]) == nearest_bucket("framepack-f1", 72, 128) == (480, 832)
    assert shot["frames_shape"] == [frames_for_sections(sections), 480, 832, 3]


@pytest.mark.parametrize("src_fps", [16.0, 24.0, 29.97, 30.0, 50.0, 60.0, 120.0])
def test_resampling_keeps_time_true_and_min_frames_hold_one_section(src_fps):
    m = min_source_frames(src_fps, "tiny")
    assert len(plan_stream(m, src_fps, "tiny")) == 37 and len(plan_stream(m - 1, src_fps, "tiny")) == 0
    idx = resample_indices(0, 10 * int(src_fps), src_fps, FPS)
    ticks = np.arange(len(idx)) / FPS
    assert np.abs(idx / src_fps - ticks).max() <= 0.5 / src_fps + 1e-9  # the nearest source frame to each tick


def test_buckets_keep_the_aspect_ratio():
    assert nearest_bucket("framepack-f1", 480, 832) == (480, 832)
    assert nearest_bucket("framepack-f1", 1080, 1920) == (480, 832)  # 16:9 → FramePack's 480x832
    assert nearest_bucket("framepack-f1", 1920, 1080) == (832, 480)
    assert nearest_bucket("framepack-f1", 720, 720) in {(608, 640), (640, 608)}
    assert nearest_bucket("tiny", 96, 128) == (48, 80) and nearest_bucket("tiny", 128, 96) == (80, 48)
    assert len(get_preset("framepack-f1").buckets) == 14
    with pytest.raises(ValueError, match="positive frame size"):
        nearest_bucket("tiny", 0, 10)


def test_the_training_index_never_mixes_shapes(prepped):
    from mempack.train.data import Bucket, video_index

    out, _, _ = prepped
    index = video_index(out)
    assert list(index) == sorted(index)  # curriculum: fewest clips first
    assert {b: len(v) for b, v in index.items()} == {Bucket(1, 48, 80): 1, Bucket(2, 48, 80): 2, Bucket(3, 80, 48): 1}
    assert Bucket(2, 48, 80).name == "bucket_2_48x80"
    videos = {v["video_id"]: v for v in read_videos(out).to_pylist()}
    for bucket, ids in index.items():
        assert {(videos[i]["num_clips"], videos[i]["height"], videos[i]["width"]) for i in ids} == {tuple(bucket)}


def _as_version(out, version: int) -> None:
    for f in out.rglob("*.parquet"):
        table = pq.read_table(f)
        if "schema_version" in table.schema.names:
            idx = table.schema.get_field_index("schema_version")
            pq.write_table(table.set_column(idx, "schema_version", pa.array([version] * table.num_rows, pa.int32())), f)


def test_an_old_prep_output_fails_with_one_line_saying_to_rerun_prep(prepped, tmp_path):
    from mempack.train.data import check_dataset, load_video

    out, _, _ = prepped
    old = tmp_path / "old"
    shutil.copytree(out, old)
    _as_version(old, SCHEMA_VERSION - 1)
    for read in (check_dataset, lambda root: load_video(root, "folder:street_two_shots:shot000")):
        with pytest.raises(SchemaVersionError) as err:
            read(old)
        message = str(err.value)
        assert "\n" not in message and "re-run pipelines/prep.py" in message, message
        assert f"[{SCHEMA_VERSION - 1}]" in message, message

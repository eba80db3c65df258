"""Video clips (AVI/MP4) on the real zamba clips: `trapedge detect` writes MegaDetector's video fields,
the folder source makes each clip one event, a clip that does not decode is a failure record."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timedelta

import cv2
import pytest
from PIL import Image
from pydantic import ValidationError

from common.megadetector import batch_problems
from edge.app.config import EdgeConfig
from edge.capture.frame import Frame
from edge.capture.sources import create_source
from edge.capture.sources.folder import Config as FolderConfig
from edge.capture.video import VideoConfig, clip_of, file_key_of, read_clip, sample_step
from edge.events.bursts import BurstConfig, BurstState, joins
from trapedge.cli import main

CLIPS = "videos/zamba_clips"
CHIMP = "densepose_tests__chimp.mp4"  # 320x180, 30 fps, 450 frames: the one clip the detector finds animals in
T0 = datetime(2024, 5, 1, 6, 0, 0).astimezone()


def _decodable_frames(path) -> tuple[float, int]:
    """The clip's frame rate and how many frames OpenCV actually decodes (headers may say one more)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    rate = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return rate, count


@pytest.fixture
def clip_folder(data, tmp_path):
    """The 14 real clips, a real still beside them, a truncated and a zero-byte clip."""
    folder = tmp_path / "card"
    shutil.copytree(data / CLIPS, folder / "clips")
    shutil.copy(data / "frames/autofocus_gallery/coyote1.jpg", folder / "coyote.jpg")
    raw = (data / CLIPS / CHIMP).read_bytes()
    (folder / "broken").mkdir()
    (folder / "broken" / "truncated.mp4").write_bytes(raw[: len(raw) // 2])  # its index (moov) never arrived
    (folder / "broken" / "empty.avi").write_bytes(b"")
    return folder


@pytest.mark.parametrize(("fps", "count", "sample_fps", "most", "expected"), [
    (30.0, 450, 1.0, 60, 30),     # one frame a second
    (30.0, 450, 1.0, 5, 90),      # capped: 5 samples spread over the 15 s
    (1.0, 61, 1.0, 60, 2),        # 61 frames at 1 fps, at most 60: every second frame
    (1.0, 15, 0.2, 3, 5),
    (25.0, 0, 2.0, 3, 12),        # frame count unknown: the rate alone (the cap then stops the clip)
    (10.0, 10, 30.0, 60, 1),      # asking for more than the clip has: every frame
])
def test_sample_step(fps, count, sample_fps, most, expected):
    assert sample_step(fps, count, VideoConfig(sample_fps=sample_fps, max_frames_per_clip=most)) == expected


@pytest.mark.parametrize(("video", "expectation"), [
    ({}, does_not_raise()),
    ({"sample_fps": 30, "max_frames_per_clip": 10_000}, does_not_raise()),
    ({"sample_fps": 0.01, "max_frames_per_clip": 1}, does_not_raise()),
    ({"sample_fps": 0}, pytest.raises(ValidationError, match="sample_fps")),
    ({"sample_fps": -1}, pytest.raises(ValidationError, match="sample_fps")),
    ({"sample_fps": 30.5}, pytest.raises(ValidationError, match="sample_fps")),
    ({"max_frames_per_clip": 0}, pytest.raises(ValidationError, match="max_frames_per_clip")),
    ({"max_frames_per_clip": 10_001}, pytest.raises(ValidationError, match="max_frames_per_clip")),
    ({"fps": 1}, pytest.raises(ValidationError, match="fps")),
])
def test_video_config_bounds(tmp_path, video, expectation):
    with expectation:
        EdgeConfig.model_validate({"device_id": "cam", "video": video,
                                   "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path)}]})


def test_a_folder_samples_clips_as_the_top_level_says_unless_it_says_otherwise(tmp_path):
    config = EdgeConfig.model_validate({"device_id": "cam", "video": {"sample_fps": 2},
                                        "sources": [{"type": "folder", "id": "a", "path": str(tmp_path)},
                                                    {"type": "folder", "id": "b", "path": str(tmp_path),
                                                     "video": {"max_frames_per_clip": 7}}]})
    a, b = config.sources
    assert (a.video.sample_fps, a.video.max_frames_per_clip) == (2.0, 60)
    assert (b.video.sample_fps, b.video.max_frames_per_clip) == (1.0, 7)


def test_detect_writes_every_real_clip_with_megadetectors_video_fields(clip_folder, bundle_dir, tmp_path, capsys):
    out = tmp_path / "md.json"
    args = ["detect", str(clip_folder), "--bundle", str(bundle_dir), "--output", str(out),
            "--sample-fps", "0.2", "--max-frames-per-clip", "3"]
    started = time.monotonic()
    assert main(args) == 0
    took = time.monotonic() - started
    doc = json.loads(out.read_text())
    assert batch_problems(doc) == []
    entries = {e["file"]: e for e in doc["images"]}
    clips = {name: entry for name, entry in entries.items() if name.startswith("clips/")}
    assert len(clips) == 14 and sorted(p.name for p in (clip_folder / "clips").iterdir()) == sorted(
        name.removeprefix("clips/") for name in clips)
    for name, entry in clips.items():
        assert entry.get("failure") is None, name
        rate, decodable = _decodable_frames(clip_folder / name)
        assert entry["frame_rate"] == pytest.approx(rate), name
        frames = entry["frames_processed"]
        assert 1 <= len(frames) <= 3 and frames[0] == 0 and frames == sorted(set(frames)), name
        assert frames[-1] < decodable, name
        assert all(d["frame_number"] in frames for d in entry["detections"]), name
        assert "prediction" in entry, name
    # hand-worked: at most 3 samples, 0.2 a second or spread over the whole clip
    assert clips[f"clips/{CHIMP}"]["frames_processed"] == [0, 150, 300]           # 450 frames at 30 fps
    assert clips["clips/savanna__Grumeti_Tanzania__K38_check3__09190048_Hyena.AVI"]["frames_processed"] == [0, 5, 10]
    assert clips["clips/dzanga_sangha__T10__Second_visit_T10__Second_visit_T10C2__01170043.MP4"][
        "frames_processed"] == [0, 5]                                             # 6 frames at 1 fps
    chimp = clips[f"clips/{CHIMP}"]
    assert chimp["detections"] and chimp["prediction_source"] != "blank"
    assert {d["frame_number"] for d in chimp["detections"]} <= {0, 150, 300}
    # the still beside them keeps the image format exactly; broken clips are failures with a reason
    assert "frame_rate" not in entries["coyote.jpg"] and "frame_number" not in entries["coyote.jpg"]["detections"][0]
    truncated, empty = entries["broken/truncated.mp4"], entries["broken/empty.avi"]
    assert "not a readable video" in truncated["failure"] and truncated["detections"] is None
    assert "0 bytes" in empty["failure"] and empty["frames_processed"] == []
    printed = capsys.readouterr().out
    frames = sum(len(e["frames_processed"]) for e in clips.values())
    assert f"1 images, 16 clips ({frames} frames)" in printed and "2 failed" in printed
    print(f"\n14/14 clips, {frames} frames sampled, detect took {took:.1f} s", file=sys.stderr)


def test_megadetector_checks_hold_videos_to_their_fields():
    doc = {"info": {"format_version": "1.6"}, "detection_categories": {"1": "animal"}, "images": [
        {"file": "a.mp4", "frame_rate": 30, "frames_processed": [0, 30],
         "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2], "frame_number": 30}]},
        {"file": "b.AVI", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}]},
        {"file": "c.mp4", "frame_rate": 30, "frames_processed": [0],
         "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2], "frame_number": 5}]},
        {"file": "d.mp4", "failure": "not a readable video", "detections": None},
    ]}
    assert batch_problems(doc) == [
        "images/1: a video needs frame_rate", "images/1: a video needs frames_processed",
        "images/1: detections/0: a video's detection needs frame_number",
        "images/2: detections/0: frame_number 5 is not in frames_processed"]
    doc["images"][0]["frame_rate"] = 0
    assert any("frame_rate" in p for p in batch_problems(doc))


def test_a_clip_cut_short_by_a_restart_gives_only_its_unrecorded_frames(data):
    path = data / CLIPS / CHIMP
    config = VideoConfig(sample_fps=1, max_frames_per_clip=4)   # 450 frames: every 113th
    first = list(read_clip(path, "sd", "chimp.mp4:1:2", config))
    assert [f.key for f in first] == ["chimp.mp4:1:2#0", "chimp.mp4:1:2#113", "chimp.mp4:1:2#226", "chimp.mp4:1:2"]
    assert {clip_of(f) for f in first} == {"chimp.mp4:1:2"} and file_key_of("a#b.mp4:1:2#113") == "a#b.mp4:1:2"
    assert [round((f.time - first[0].time).total_seconds(), 3) for f in first] == [0, 3.767, 7.533, 11.3]
    recorded = {("sd", first[0].key), ("sd", first[1].key)}
    again = list(read_clip(path, "sd", "chimp.mp4:1:2", config, lambda s, k: (s, k) in recorded))
    assert [f.key for f in again] == [first[2].key, first[3].key]
    assert (again[0].pixels == first[2].pixels).all()


@pytest.mark.parametrize(("state", "clip_event", "seconds", "expected"), [
    (BurstState("clip-a", "sd", T0, T0, clip=True), "clip-a", 600, True),   # a clip's frames: whatever the gap
    (BurstState("clip-a", "sd", T0, T0, clip=True), "clip-b", 1, False),    # the next clip is its own event
    (BurstState("clip-a", "sd", T0, T0, clip=True), None, 1, False),        # a still never joins a clip
    (BurstState("stills", "sd", T0, T0), "clip-a", 1, False),               # nor a clip a burst of stills
    (BurstState("stills", "sd", T0, T0), None, 1, True),
    (BurstState("stills", "sd", T0, T0), None, 11, False),
])
def test_a_clip_is_an_event_of_its_own(state, clip_event, seconds, expected):
    assert joins(state, T0 + timedelta(seconds=seconds), BurstConfig(gap_seconds=10), clip_event) is expected


def test_the_service_makes_a_dropped_clip_one_event_and_a_broken_one_a_failure(data, bundle_dir, tmp_path):
    from edge.app.service import main as run_service

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    still = incoming / "bear.jpg"  # no EXIF time: its mtime, 5 s into the clip, would put it in the clip's burst
    Image.open(data / "frames/ena24_small/8831.jpg").resize((800, 600)).save(still)
    clip = incoming / "chimp.mp4"
    shutil.copy(data / CLIPS / CHIMP, clip)
    raw = clip.read_bytes()
    (incoming / "cut.mp4").write_bytes(raw[: len(raw) // 3])
    start = time.time() - 3600
    os.utime(clip, (start + 15, start + 15))  # recording ended 15 s (450 frames at 30 fps) after it began
    os.utime(still, (start + 5, start + 5))
    config = EdgeConfig.model_validate({
        "device_id": "cam-clips", "sources": [{"type": "folder", "id": "sd", "path": str(incoming),
                                               "settle_seconds": 0, "poll_seconds": 0.1}],
        "video": {"sample_fps": 1, "max_frames_per_clip": 5}, "gate": {"enabled": False},
        "bundle": {"path": str(bundle_dir)}, "store": {"path": str(tmp_path / "state.db")}, "idle_sleep_s": 0.1})
    assert run_service(config, once=True) == 0
    db = sqlite3.connect(tmp_path / "state.db")
    rows = db.execute("SELECT key, time, event_id FROM frames WHERE path = ? ORDER BY time", (str(clip),)).fetchall()
    assert len(rows) == 5                                   # 450 frames, at most 5: every 90th
    assert [key.rpartition("#")[2] for key, _, _ in rows[:4]] == ["0", "90", "180", "270"] and "#" not in rows[4][0]
    clip_event = {event for _, _, event in rows}
    assert len(clip_event) == 1 and None not in clip_event
    (still_event,) = db.execute("SELECT event_id FROM frames WHERE path = ?", (str(still),)).fetchone()
    assert still_event is not None and still_event not in clip_event
    events = dict(db.execute("SELECT id, frames FROM events WHERE closed = 1").fetchall())
    assert events == {clip_event.pop(): 5, still_event: 1}
    (reason,) = db.execute("SELECT reason FROM failures WHERE path = ?", (str(incoming / "cut.mp4"),)).fetchone()
    assert "not a readable video" in reason
    assert run_service(config, once=True) == 0              # a restart takes nothing twice
    assert db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 6


def test_the_folder_source_imports_no_opencv_until_a_clip_arrives():
    code = ("import sys, edge.capture.sources.folder, edge.storage.recorder, edge.app.config; "
            "print('cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_frame_from_a_still_or_a_camera_is_no_clip(tmp_path):
    still = Frame("sd", "a#1.jpg:10:20", T0, "mtime", failure="x", path=tmp_path / "a#1.jpg")
    camera = Frame("usb0", "video.mp4#3", T0, "clock", failure="x")
    assert clip_of(still) is None and clip_of(camera) is None
    source = create_source(FolderConfig(id="sd", path=tmp_path), lambda s, k: False)
    source.seen.add("clip.avi:1:2")
    source.retry_later("clip.avi:1:2#30")
    assert source.seen == set()
    source.close()

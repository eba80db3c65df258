"""Capture sources and frame decoding on real files."""

import os
import shutil
import time
from datetime import datetime

import cv2
import numpy as np
import pytest
from PIL import Image

from edge.capture import SourceUnavailable, available, create_source
from edge.capture.decode import read_frame
from edge.capture.folder import Config as FolderConfig
from edge.capture.opencv import Config as OpenCVConfig
from edge.capture.picamera2 import Config as PiConfig


@pytest.fixture
def coyote(data):
    return data / "frames" / "autofocus_gallery" / "coyote1.jpg"


def test_exif_time_else_mtime(tmp_path, coyote):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2024:06:01 03:14:15"
    Image.open(coyote).save(tmp_path / "dated.jpg", exif=exif)
    shutil.copy(coyote, tmp_path / "plain.jpg")
    os.utime(tmp_path / "plain.jpg", (1_700_000_000, 1_700_000_000))
    dated, plain = read_frame(tmp_path / "dated.jpg", "sd", "a"), read_frame(tmp_path / "plain.jpg", "sd", "b")
    assert (dated.time, dated.time_source) == (datetime(2024, 6, 1, 3, 14, 15), "exif")
    assert (plain.time, plain.time_source) == (datetime.fromtimestamp(1_700_000_000), "mtime")
    assert dated.ok and dated.rgb.shape[2] == 3


@pytest.mark.parametrize(
    ("make", "ok", "flag"),
    [
        (lambda raw, p: p.write_bytes(raw[: len(raw) // 2]), True, "truncated"),
        (lambda raw, p: p.write_bytes(b""), False, None),
        (lambda raw, p: p.write_bytes(b"GIF89a not really"), False, None),
        (lambda raw, p: Image.open(p.with_name("src.jpg")).resize((12000, 9000)).save(p, quality=60), True, "reduced"),
        (lambda raw, p: Image.open(p.with_name("src.jpg")).convert("CMYK").save(p), True, None),
    ],
    ids=["truncated", "zero-byte", "not-an-image", "huge", "cmyk"],
)
def test_read_frame_never_raises(tmp_path, coyote, make, ok, flag):
    shutil.copy(coyote, tmp_path / "src.jpg")
    target = tmp_path / "x.jpg"
    make(coyote.read_bytes(), target)
    frame = read_frame(target, "sd", "k", max_side=1280)
    assert frame.ok is ok
    if ok:
        assert max(frame.rgb.shape[:2]) <= 4096 and (flag is None or flag in frame.flags)
    else:
        assert frame.rgb is None and frame.failure


def _folder_source(path, done, **kw):
    return create_source(FolderConfig(id="sd", path=path, settle_seconds=0, poll_seconds=0.01, **kw),
                         lambda sid, key: (sid, key) in done)


def _poll_all(source):
    time.sleep(0.02)
    return list(source.poll())


def test_folder_exactly_once_across_restarts(tmp_path, data):
    inbox = tmp_path / "in"
    (inbox / "card1").mkdir(parents=True)
    for name in ("8831.jpg", "8786.jpg"):
        shutil.copy(data / "frames/ena24_small" / name, inbox / "card1" / name)
    (inbox / ".hidden.jpg").write_bytes(b"x")
    (inbox / "copying.jpg.part").write_bytes(b"x")
    done: set = set()
    source = _folder_source(inbox, done)
    first = _poll_all(source)
    assert sorted(f.path.name for f in first) == ["8786.jpg", "8831.jpg"]
    assert _poll_all(source) == []                       # not twice within a run
    done.add(("sd", first[0].key))                        # only the first was recorded before a crash
    restarted = _poll_all(_folder_source(inbox, done))
    assert [f.key for f in restarted] == [first[1].key]   # the unrecorded one comes back, nothing else
    done.add(("sd", first[1].key))
    shutil.copy(data / "frames/ena24_small/9455.jpg", inbox / "later.jpg")
    (inbox / "notes.txt").write_text("not a picture")
    again = _folder_source(inbox, done)
    later = {f.path.name: f for f in _poll_all(again)}
    assert set(later) == {"later.jpg", "notes.txt"}
    assert later["later.jpg"].ok and not later["notes.txt"].ok


def test_folder_waits_for_a_file_to_settle(tmp_path, data):
    inbox = tmp_path / "in"
    inbox.mkdir()
    source = create_source(FolderConfig(id="sd", path=inbox, settle_seconds=1.0, poll_seconds=0.01), lambda *_: False)
    shutil.copy(data / "frames/ena24_small/8831.jpg", inbox / "fresh.jpg")
    assert _poll_all(source) == []
    old = time.time() - 5
    os.utime(inbox / "fresh.jpg", (old, old))
    assert [f.path.name for f in _poll_all(source)] == ["fresh.jpg"]


def test_folder_survives_a_vanished_folder(tmp_path):
    source = _folder_source(tmp_path / "not-yet", set())
    assert _poll_all(source) == []


def test_opencv_reads_a_video_file_at_the_asked_rate(tmp_path, data):
    path = tmp_path / "clip.avi"
    frames = [cv2.resize(cv2.imread(str(data / "frames/ena24_small" / n)), (320, 240))
              for n in ("8831.jpg", "8786.jpg", "9455.jpg")]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for frame in frames:
        for _ in range(10):
            writer.write(frame)
    writer.release()
    source = create_source(OpenCVConfig(id="cam", url=str(path), fps=2), lambda *_: False)
    got = []
    for _ in range(20):
        got += source.poll()
    source.close()
    assert len(got) == 6  # 3 s of video at 2 frames per second
    assert got[0].rgb.shape == (240, 320, 3) and len({f.key for f in got}) == 6
    expected = cv2.cvtColor(frames[0], cv2.COLOR_BGR2RGB).astype(int)
    assert np.abs(got[0].rgb.astype(int) - expected).mean() < 8  # RGB, not BGR


def test_picamera2_unavailable_is_reported_not_fatal():
    reasons = available()
    assert reasons["folder"] == "ok" and reasons["opencv"] == "ok"
    assert "picamera2" in reasons["picamera2"] and reasons["picamera2"] != "ok"
    with pytest.raises(SourceUnavailable, match="picam.*unavailable"):
        create_source(PiConfig(id="picam"), lambda *_: False)

"""Capture sources and frame decoding on real files."""

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edge.capture.decode import read_frame
from edge.capture.sources import SourceUnavailable, available, create_source
from edge.capture.sources.folder import Config as FolderConfig
from edge.capture.sources.opencv import Config as OpenCVConfig
from edge.capture.sources.picamera2 import Config as PiConfig


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
    # a camera time without an offset is read as this device's local time; mtimes are instants
    assert (dated.time, dated.time_source) == (datetime(2024, 6, 1, 3, 14, 15).astimezone(), "exif")
    assert (plain.time, plain.time_source) == (datetime.fromtimestamp(1_700_000_000, timezone.utc), "mtime")
    assert dated.time.tzinfo is not None and plain.time.tzinfo is not None
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
    """Without file-close notifications (a network mount, another OS): the settle time decides."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    source = create_source(FolderConfig(id="sd", path=inbox, settle_seconds=1.0, poll_seconds=0.01, notify=False),
                           lambda *_: False)
    shutil.copy(data / "frames/ena24_small/8831.jpg", inbox / "fresh.jpg")
    assert _poll_all(source) == []
    old = time.time() - 5
    os.utime(inbox / "fresh.jpg", (old, old))
    assert [f.path.name for f in _poll_all(source)] == ["fresh.jpg"]


@pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")
def test_folder_takes_a_file_as_soon_as_its_writer_closes_it(tmp_path, data):
    """inotify: a file closed after writing (or renamed into place) is complete at once, however long
    the settle time; one still open for writing waits; sub-folders made later are watched too."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    raw = (data / "frames/ena24_small/8831.jpg").read_bytes()
    source = create_source(FolderConfig(id="sd", path=inbox, settle_seconds=60, poll_seconds=60), lambda *_: False)
    assert source.notifier is not None
    assert _poll_all(source) == []  # the first scan
    with open(inbox / "writing.jpg", "wb") as out:
        out.write(raw[: len(raw) // 2])
        out.flush()
        (inbox / "copied.jpg").write_bytes(raw)  # closed: complete, though polls are a minute apart
        assert [f.path.name for f in _poll_all(source)] == ["copied.jpg"]
        out.write(raw[len(raw) // 2:])
    assert [f.path.name for f in _poll_all(source)] == ["writing.jpg"]
    (inbox / "card").mkdir()
    assert _poll_all(source) == []  # a new sub-folder: scanned at once, and watched from then on
    (inbox / "upload.jpg.part").write_bytes(raw)
    (inbox / "upload.jpg.part").rename(inbox / "card" / "upload.jpg")  # renamed into place
    (frame,) = _poll_all(source)
    assert frame.ok and frame.path.name == "upload.jpg" and "truncated" not in frame.flags
    assert _poll_all(source) == []
    source.close()


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


# --- decoding: pixels checked against an independent expectation, EXIF dates, bounded memory

@pytest.fixture
def upright(coyote):
    """A small real frame (non-square, so a missed rotation changes the shape)."""
    return Image.open(coyote).convert("RGB").resize((320, 240))


def _stretched_grey(image):
    """The frame's grey levels stretched from their lowest to their highest over 0-255, as RGB."""
    grey = np.asarray(image.convert("L")).astype(np.float64)
    return np.repeat(np.rint((grey - grey.min()) * 255 / (grey.max() - grey.min()))[..., None], 3, axis=2)


def _grey_as(image, path, to_values):
    """Save the frame's grey levels as a 16-bit or float image whose values ``to_values`` gives."""
    Image.fromarray(to_values(np.asarray(image.convert("L")))).save(path)


def _float_with_nan(grey):
    values = grey.astype(np.float32) / 255
    values[0, 0] = np.nan
    return values


def _rotated_exif6(image, path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; shown turned 90° clockwise
    image.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


@pytest.mark.parametrize(
    ("name", "write", "expected", "tolerance"),
    [
        ("rotated.jpg", _rotated_exif6, lambda im: np.asarray(im), 6),
        ("gray.jpg", lambda im, p: im.convert("L").save(p, quality=95),
         lambda im: np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2), 3),
        ("alpha.png", lambda im, p: Image.merge("RGBA", (*im.split(), Image.new("L", im.size, 128))).save(p),
         lambda im: np.asarray(im), 0),
        ("palette.png", lambda im, p: im.quantize(64).save(p), lambda im: np.asarray(im.quantize(64).convert("RGB")), 0),
        ("cmyk.jpg", lambda im, p: im.convert("CMYK").save(p, quality=95), lambda im: np.asarray(im), 6),
        # more than 8 bits a pixel: Pillow's own conversion gave a white (16-bit) or black (float) frame
        ("grey16.png", lambda im, p: _grey_as(im, p, lambda g: g.astype(np.uint16) * 257), _stretched_grey, 0.01),
        ("thermal16.png", lambda im, p: _grey_as(im, p, lambda g: 7000 + g.astype(np.uint16) * 4), _stretched_grey,
         0.01),
        ("grey16.tif", lambda im, p: _grey_as(im, p, lambda g: g.astype(np.uint16) * 257), _stretched_grey, 0.01),
        ("grey16b.tif", lambda im, p: _grey_as(im, p, lambda g: (g.astype(np.uint16) * 257).astype(">u2")),
         _stretched_grey, 0.01),  # big-endian: Pillow's getextrema refuses it
        ("float.tif", lambda im, p: _grey_as(im, p, _float_with_nan), _stretched_grey, 0.01),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_read_frame_pixels_are_upright_rgb(tmp_path, upright, name, write, expected, tolerance):
    write(upright, tmp_path / name)
    frame = read_frame(tmp_path / name, "sd", "k")
    want = expected(upright).astype(int)
    assert frame.ok and frame.flags == () and frame.rgb.shape == want.shape
    assert np.abs(frame.rgb.astype(int) - want).mean() <= tolerance


def test_truncated_jpeg_keeps_the_part_that_arrived(tmp_path, coyote):
    raw = coyote.read_bytes()
    (tmp_path / "t.jpg").write_bytes(raw[: len(raw) * 2 // 3])
    whole, cut = read_frame(coyote, "sd", "a"), read_frame(tmp_path / "t.jpg", "sd", "b")
    assert cut.flags == ("truncated",) and cut.rgb.shape == whole.rgb.shape
    rows = whole.rgb.shape[0] // 3
    assert np.abs(cut.rgb[:rows].astype(int) - whole.rgb[:rows]).mean() < 1  # the top decoded as is


@pytest.mark.parametrize(
    ("make", "failure"),
    [
        (lambda p: p.mkdir(), "file not found"),
        (lambda p: None, "file not found"),
        (lambda p: p.write_text("date,species\n2024-06-01,fox\n"), "not a readable image"),
    ],
    ids=["directory-named-jpg", "missing", "csv-named-jpg"],
)
def test_read_frame_failures_carry_a_reason(tmp_path, make, failure):
    make(tmp_path / "x.jpg")
    frame = read_frame(tmp_path / "x.jpg", "sd", "k")
    assert not frame.ok and failure in frame.failure and frame.key == "k"


def test_unreadable_file_is_a_failure_not_an_exception(tmp_path, coyote, monkeypatch):
    shutil.copy(coyote, tmp_path / "locked.jpg")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("edge.capture.decode.Image.open", denied)  # chmod 000 does not stop root
    frame = read_frame(tmp_path / "locked.jpg", "sd", "k")
    assert not frame.ok and "Permission denied" in frame.failure and frame.time_source == "mtime"


@pytest.mark.parametrize(
    ("original", "plain", "expected"),
    [
        ("2024:06:01 03:14:15", "2020:01:01 00:00:00", datetime(2024, 6, 1, 3, 14, 15)),
        (b"2024:06:01 03:14:15\x00", None, datetime(2024, 6, 1, 3, 14, 15)),
        ("0000:00:00 00:00:00", "2020:01:02 03:04:05", datetime(2020, 1, 2, 3, 4, 5)),  # unset camera clock
        ("    :  :     :  :  ", "2020:01:02 03:04:05", datetime(2020, 1, 2, 3, 4, 5)),
        ("2024-06-01T03:14:15", "2020:01:02 03:04:05", datetime(2020, 1, 2, 3, 4, 5)),
        ("2024:13:01 03:14:15", None, None),
        (None, "2020:01:02 03:04:05", datetime(2020, 1, 2, 3, 4, 5)),
        (None, None, None),
    ],
)
def test_exif_date_fallbacks(tmp_path, upright, original, plain, expected):
    exif = Image.Exif()
    if original is not None:
        exif.get_ifd(0x8769)[36867] = original
    if plain is not None:
        exif[306] = plain
    upright.save(tmp_path / "d.jpg", exif=exif)
    os.utime(tmp_path / "d.jpg", (1_700_000_000, 1_700_000_000))
    frame = read_frame(tmp_path / "d.jpg", "sd", "k")
    if expected is None:
        assert (frame.time, frame.time_source) == (datetime.fromtimestamp(1_700_000_000, timezone.utc), "mtime")
    else:
        assert (frame.time, frame.time_source) == (expected.astimezone(), "exif")


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        ("+02:00", datetime(2024, 6, 1, 3, 14, 15, tzinfo=timezone(timedelta(hours=2)))),
        ("-05:30", datetime(2024, 6, 1, 3, 14, 15, tzinfo=timezone(-timedelta(hours=5, minutes=30)))),
        ("garbage", datetime(2024, 6, 1, 3, 14, 15).astimezone()),  # an unreadable offset: local time
    ],
)
def test_exif_offset_time_is_kept(tmp_path, upright, offset, expected):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2024:06:01 03:14:15"
    exif.get_ifd(0x8769)[36881] = offset
    upright.save(tmp_path / "o.jpg", exif=exif)
    frame = read_frame(tmp_path / "o.jpg", "sd", "k")
    assert frame.time == expected and frame.time.utcoffset() == expected.utcoffset()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_block_costs_only_the_date(tmp_path, upright):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2024:06:01 03:14:15"
    upright.save(tmp_path / "d.jpg", exif=exif)
    raw = bytearray((tmp_path / "d.jpg").read_bytes())
    start = raw.find(b"Exif\x00\x00") + 14
    raw[start:start + 4] = b"\xff\xff\xff\x7f"  # first IFD offset far past the end
    (tmp_path / "d.jpg").write_bytes(bytes(raw))
    frame = read_frame(tmp_path / "d.jpg", "sd", "k")
    assert frame.ok and frame.time_source == "mtime"


def test_huge_jpeg_decodes_small_in_bounded_memory(tmp_path, coyote):
    huge = tmp_path / "huge.jpg"
    Image.open(coyote).resize((12000, 9000), Image.Resampling.NEAREST).save(huge, quality=60)
    code = (
        "import resource, sys; from edge.capture.decode import read_frame; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"f = read_frame({str(huge)!r}, 'sd', 'k', max_side=960); "
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before; "
        "print(f.rgb.shape[0], f.rgb.shape[1], ','.join(f.flags), grew // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    height, width, flags, grew_mib = int(out[0]), int(out[1]), out[2], int(out[3])
    assert (width, height) == (1500, 1125) and flags == "reduced"  # 1/8 DCT scale, still >= 960
    assert grew_mib < 100  # a full decode would need 324 MB for the pixels alone


@pytest.mark.parametrize("size", [8944, 30000])
def test_a_tiny_png_of_huge_size_is_refused_in_bounded_memory(tmp_path, size):
    """A 1-bit PNG of a few KB that would decode to 80 MP / 900 MP (825 MB and more): refused with a
    reason before any pixel is decoded, so the service's MemoryMax is never reached."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (size, size)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 200_000
    code = (
        "import resource; from edge.capture.decode import read_frame; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"f = read_frame({str(bomb)!r}, 'sd', 'k'); "
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024); print(f.failure)"
    )
    grew_mib, failure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.splitlines()
    assert int(grew_mib) < 50
    assert failure.startswith("image too large") and ("20 MP (max_pixels)" in failure or "decompression bomb" in failure)


def test_a_png_within_the_budget_still_decodes(tmp_path):
    Image.new("RGB", (5000, 4000), (10, 20, 30)).save(tmp_path / "ok.png")
    frame = read_frame(tmp_path / "ok.png", "sd", "k")
    assert frame.ok and frame.rgb.shape == (4000, 5000, 3)


def test_the_folder_never_follows_a_symbolic_link_out_of_it(tmp_path, data, caplog):
    inbox, outside = tmp_path / "in", tmp_path / "secret"
    inbox.mkdir()
    outside.mkdir()
    shutil.copy(data / "frames/ena24_small/8831.jpg", outside / "private.jpg")
    shutil.copy(data / "frames/ena24_small/8786.jpg", inbox / "camera.jpg")
    (inbox / "link.jpg").symlink_to(outside / "private.jpg")
    (inbox / "passwd.jpg").symlink_to("/etc/passwd")
    (inbox / "dir").symlink_to(outside, target_is_directory=True)
    source = create_source(FolderConfig(id="sd", path=inbox, settle_seconds=0, poll_seconds=0.01, recursive=True),
                           lambda *_: False)
    with caplog.at_level("WARNING"):
        frames = _poll_all(source)
        assert _poll_all(source) == []
    assert [Path(f.path).name for f in frames] == ["camera.jpg"]
    refused = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert len(refused) == 3  # each link said once, not at every scan
    source.close()
    # a file swapped for a link between the scan and the decode is refused, not read
    frame = read_frame(inbox / "link.jpg", "sd", "k", follow_symlinks=False)
    assert not frame.ok and "symbolic link" in frame.failure


# --- folder source: files still arriving, clocks ahead, files that vanish

def test_folder_takes_a_growing_file_only_once_complete(tmp_path, data):
    inbox = tmp_path / "in"
    inbox.mkdir()
    raw = (data / "frames/ena24_small/8831.jpg").read_bytes()
    source = create_source(FolderConfig(id="ftp", path=inbox, settle_seconds=0.3, poll_seconds=0.01), lambda *_: False)
    with open(inbox / "upload.jpg", "wb") as out:
        for chunk in range(4):  # an upload trickling in
            out.write(raw[chunk * len(raw) // 4:(chunk + 1) * len(raw) // 4])
            out.flush()
            assert _poll_all(source) == []
    time.sleep(0.35)
    (frame,) = _poll_all(source)
    assert frame.ok and "truncated" not in frame.flags and frame.key.endswith(f":{len(raw)}:{(inbox / 'upload.jpg').stat().st_mtime_ns}")
    assert _poll_all(source) == []
    source.close()


def test_folder_file_with_mtime_in_the_future_is_not_held_back(tmp_path, data):
    inbox = tmp_path / "in"
    inbox.mkdir()
    shutil.copy(data / "frames/ena24_small/8831.jpg", inbox / "ahead.jpg")
    ahead = time.time() + 3600  # camera clock an hour ahead, copied with cp -p
    os.utime(inbox / "ahead.jpg", (ahead, ahead))
    source = create_source(FolderConfig(id="sd", path=inbox, settle_seconds=0.3, poll_seconds=0.01), lambda *_: False)
    assert _poll_all(source) == []  # first sighting: not yet known to be stable
    time.sleep(0.35)
    assert [f.path.name for f in _poll_all(source)] == ["ahead.jpg"]
    source.close()


def test_folder_file_removed_before_decoding_is_a_failure_frame(tmp_path, data):
    inbox = tmp_path / "in"
    inbox.mkdir()
    for name in ("8831.jpg", "8786.jpg"):
        shutil.copy(data / "frames/ena24_small" / name, inbox / name)
    os.utime(inbox / "8786.jpg", (time.time() - 60, time.time() - 60))  # the older one comes first
    source = _folder_source(inbox, set())
    time.sleep(0.02)
    frames = source.poll()  # scanned and chosen, not yet decoded
    (inbox / "8831.jpg").unlink()
    got = {f.path.name: f for f in frames}
    assert got["8786.jpg"].ok and not got["8831.jpg"].ok and "not found" in got["8831.jpg"].failure
    source.close()


# --- opencv source: live streams read by a thread, video files resumed

def _write_clip(path, data, names=("8831.jpg", "8786.jpg", "9455.jpg"), repeat=10, fps=10):
    frames = [cv2.resize(cv2.imread(str(data / "frames/ena24_small" / n)), (320, 240)) for n in names]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for frame in frames:
        for _ in range(repeat):
            writer.write(frame)
    writer.release()
    return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(int) for f in frames]


@pytest.mark.parametrize(
    ("url", "live", "is_file"),
    [(0, None, False), ("/dev/video0", None, False), ("rtsp://cam.local/stream1", None, False),
     ("v4l2src ! videoconvert ! appsink", None, False), ("clips/visit.avi", None, True),
     ("clips/visit.avi", True, False), ("/dev/video0", False, True)],
)
def test_opencv_live_or_file(url, live, is_file, monkeypatch):
    monkeypatch.setattr("edge.capture.sources.opencv.Source._read_live", lambda self: None)  # no camera here
    source = create_source(OpenCVConfig(id="cam", url=url, live=live), lambda *_: False)
    assert source.is_file is is_file
    source.close()


def test_opencv_video_file_resumes_and_dates_frames_from_its_mtime(tmp_path, data):
    path = tmp_path / "clip.avi"
    _write_clip(path, data)  # 3 s at 10 fps
    os.utime(path, (1_700_000_000, 1_700_000_000))
    done: set = set()
    first = create_source(OpenCVConfig(id="cam", url=str(path), fps=2), lambda sid, key: (sid, key) in done)
    taken = [f for _ in range(3) for f in first.poll()]
    first.close()
    assert taken[0].time_source == "mtime"
    assert taken[0].time == datetime.fromtimestamp(1_700_000_000 - 3.0, timezone.utc)  # recording ended at the mtime
    assert (taken[1].time - taken[0].time).total_seconds() == pytest.approx(0.5, abs=0.01)
    done.update(("cam", f.key) for f in taken)
    again = create_source(OpenCVConfig(id="cam", url=str(path), fps=2), lambda sid, key: (sid, key) in done)
    rest = [f for _ in range(10) for f in again.poll()]
    again.close()
    assert len(rest) == 3 and not {f.key for f in rest} & {f.key for f in taken}
    assert rest[0].time == taken[-1].time + (taken[1].time - taken[0].time)


def test_opencv_live_reader_keeps_up_and_reconnects(tmp_path, data):
    path = tmp_path / "loop.avi"
    expected = _write_clip(path, data, repeat=3)
    # read as a live stream: the thread drains it in milliseconds, hits the end, reconnects, again...
    source = create_source(OpenCVConfig(id="cam", url=str(path), live=True, fps=20, reconnect_seconds=0.01),
                           lambda *_: False)
    got, slowest, deadline = [], 0.0, time.monotonic() + 0.6
    while time.monotonic() < deadline:
        start = time.monotonic()
        frames = source.poll()
        slowest = max(slowest, time.monotonic() - start)
        assert len(frames) <= 1
        got += frames
    source.close()
    assert not source._reader.is_alive()
    assert 5 <= len(got) <= 13 and len({f.key for f in got}) == len(got)  # paced at fps, across many reopenings
    assert slowest < 0.6  # a poll waits one bounded interval at most
    for frame in got:  # each is one of the clip's pictures, in RGB order
        assert min(np.abs(frame.rgb.astype(int) - e).mean() for e in expected) < 8


def test_opencv_dead_stream_backs_off_without_blocking(tmp_path):
    source = create_source(OpenCVConfig(id="cam", url=str(tmp_path / "gone.avi"), live=True, reconnect_seconds=0.05),
                           lambda *_: False)
    start = time.monotonic()
    assert source.poll() == []
    assert time.monotonic() - start < 0.8
    time.sleep(0.1)
    assert source.backoff > 0.05 * 4  # doubled on each failed attempt
    source.close()
    assert not source._reader.is_alive()

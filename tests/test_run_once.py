"""`trapedge run --once` right after files arrive: it waits for them to settle, takes them, and says what it did."""

import shutil

from edge.app.config import EdgeConfig
from edge.app.service import main


def test_run_once_waits_for_files_still_settling_and_prints_a_summary(tmp_path, data, bundle_dir, capsys):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = EdgeConfig.model_validate({
        "device_id": "cam-once", "sources": [{"type": "folder", "id": "sd", "path": str(incoming),
                                              "settle_seconds": 1.0, "poll_seconds": 0.1}],
        "bundle": {"path": str(bundle_dir)}, "store": {"path": str(tmp_path / "state.db")}, "idle_sleep_s": 0.1})
    for name in ("8831.jpg", "8786.jpg"):  # just copied: their mtime is now, so they are still settling
        shutil.copy(data / "frames/ena24_small" / name, incoming / name)
    assert main(config, once=True) == 0
    out = capsys.readouterr().out
    assert "trapedge run --once: 2 frames (0 failed" in out and "still settling" not in out


def test_frames_without_exif_time_are_said_once_per_source(tmp_path, data, bundle_dir, caplog):
    from PIL import Image

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(3):  # PNGs: no EXIF capture time, so the file time is used
        Image.open(data / "frames/ena24_small/8831.jpg").convert("RGB").resize((320, 240)).save(incoming / f"{i}.png")
    config = EdgeConfig.model_validate({
        "device_id": "cam-once", "sources": [{"type": "folder", "id": "sd", "path": str(incoming),
                                              "settle_seconds": 0, "poll_seconds": 0.1}],
        "bundle": {"path": str(bundle_dir)}, "store": {"path": str(tmp_path / "state.db")}, "idle_sleep_s": 0.1})
    with caplog.at_level("WARNING"):
        assert main(config, once=True) == 0
    said = [r.getMessage() for r in caplog.records if "no EXIF capture time" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("sd: ") and "cp -p" in said[0]

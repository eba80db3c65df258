"""Health figures and the disk-full policy: unit checks, then the service on a real, tiny filesystem."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from edge.app.health import DiskConfig, DiskGuard, DiskUsage, disk_free_mb, disk_full, temperature_c

FRAMES = ["ena24_small/8831.jpg", "ena24_small/8786.jpg", "autofocus_gallery/coyote1.jpg",
          "ena24_small/4383.jpg", "autofocus_gallery/buck.jpeg", "animl_samples/sample-img-skunk-large.jpg"]


class FakeDisk:
    """An injected ``shutil.disk_usage`` whose free space the test sets."""

    def __init__(self, free_mb: float):
        self.free_mb = free_mb
        self.asked: list[Path] = []

    def __call__(self, path: Path) -> DiskUsage:
        self.asked.append(Path(path))
        return DiskUsage(10**10, 10**10 - int(self.free_mb * 1e6), int(self.free_mb * 1e6))


def test_temperature_is_the_hottest_readable_zone(tmp_path):
    for zone, text in {"thermal_zone0": "45000\n", "thermal_zone1": "51234\n", "thermal_zone2": "n/a\n"}.items():
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(text)
    (tmp_path / "cooling_device0").mkdir()
    (tmp_path / "cooling_device0" / "temp").write_text("99000\n")  # not a thermal zone
    assert temperature_c(tmp_path) == 51.2
    assert temperature_c(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("free_mb", "was_full", "expected"),
    [
        (500, False, False),
        (199.9, False, True),
        (200, False, False),   # exactly the minimum is enough
        (210, True, True),     # full until min + margin (220) is free again
        (220, True, False),
        (0, True, True),
    ],
)
def test_disk_full_policy(free_mb, was_full, expected):
    assert disk_full(free_mb, DiskConfig(min_free_mb=200, resume_margin_mb=20), was_full) is expected


def test_disk_free_of_a_path_not_yet_created_is_its_filesystems(tmp_path):
    fake = FakeDisk(123.4)
    assert disk_free_mb(tmp_path / "state" / "sub" / "trapedge.db", fake) == pytest.approx(123.4)
    assert fake.asked == [tmp_path]
    real = shutil.disk_usage(tmp_path).free / 1e6
    assert disk_free_mb(tmp_path / "nope.db") == pytest.approx(real, abs=50)


def test_guard_changes_state_on_crossings_and_logs_each_once(tmp_path, caplog):
    fake = FakeDisk(1000)
    guard = DiskGuard(tmp_path / "db", DiskConfig(min_free_mb=200, resume_margin_mb=20), fake)
    changes = []
    with caplog.at_level(logging.WARNING, logger="trapedge.health"):
        for free in (1000, 150, 100, 210, 219, 221, 500):
            fake.free_mb = free
            changes.append((guard.check(), guard.accepting))
    assert changes == [(False, True), (True, False), (False, False), (False, False), (False, False),
                       (True, True), (False, True)]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["disk full", "disk space back"]
    assert guard.figures() == {"disk_free_mb": 500.0, "disk_full": False, "accepting_frames": True}


# --- the service ------------------------------------------------------------------------------
def _config(tmp_path: Path, bundle_dir: Path, state: Path, broker=None, **overrides) -> Path:
    config = {
        "device_id": "cam-disk", "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path / "incoming"),
                                              "settle_seconds": 0, "poll_seconds": 0.05}],
        "bundle": {"path": str(bundle_dir), "backend": {"type": "onnxruntime", "threads": 1}}, "gate": {"enabled": False},
        "bursts": {"gap_seconds": 1}, "store": {"path": str(state / "trapedge.db")},
        "mqtt": {"host": broker.host, "port": broker.port} if broker else None, "idle_sleep_s": 0.05,
        **overrides,
    }
    (tmp_path / "incoming").mkdir(exist_ok=True)
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _service(config: Path):
    from common.config_loader import load_config
    from edge.app.config import EdgeConfig
    from edge.app.service import Service

    service = Service(load_config(config, EdgeConfig))
    service.start()
    return service


def _drop(data: Path, folder: Path, rels: list[str], prefix: str) -> list[Path]:
    paths = []
    for i, rel in enumerate(rels):
        target = folder / f"{prefix}{i:02d}{Path(rel).suffix}"
        shutil.copy(data / "frames" / rel, target)
        os.utime(target, (time.time() - 5, time.time() - 5))
        paths.append(target)
    return paths


def _poll_until(service, frames: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _count(service, "frames") < frames:
        service.poll_once()
        time.sleep(0.05)
    assert _count(service, "frames") == frames


def _count(service, table: str) -> int:
    with service.store.lock:
        return service.store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _poll_for(service, seconds: float) -> int:
    handled, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        handled += service.poll_once()
        time.sleep(0.05)
    return handled


def test_service_pauses_intake_while_disk_full_injected(tmp_path, data, bundle_dir):
    service = _service(_config(tmp_path, bundle_dir, tmp_path / "state", disk={"min_free_mb": 200}))
    fake = FakeDisk(50)
    service.disk.usage = fake
    try:
        waiting = _drop(data, tmp_path / "incoming", FRAMES[:3], "w")
        assert _poll_for(service, 1.0) == 0
        health = service.health()
        assert (health["disk_full"], health["accepting_frames"], health["disk_free_mb"]) == (True, False, 50.0)
        assert _count(service, "frames") == 0 and all(p.exists() for p in waiting)
        fake.free_mb = 5000
        _poll_until(service, 3)
        assert _poll_for(service, 0.5) == 0  # each waiting frame exactly once
        assert service.health()["accepting_frames"] is True
        paths = sorted(p for (p,) in service.store.conn.execute("SELECT path FROM frames"))
        assert paths == sorted(str(p) for p in waiting)
    finally:
        service.stop()


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs mounted inside tmp_path (needs root / CAP_SYS_ADMIN); unmounted at teardown."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", f"trapedge-test-{uuid.uuid4().hex[:6]}",
                             str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_mb: float) -> Path:
    """A ballast file that leaves about ``leave_mb`` free on ``mount``."""
    ballast = mount / "ballast"
    size = shutil.disk_usage(mount).free - int(leave_mb * 1e6)
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * max(size, 0))
    return ballast


def test_real_full_disk_pauses_intake_outbox_drains_then_resumes(tmp_path, data, bundle_dir, small_fs,
                                                                 mosquitto_factory):
    broker = mosquitto_factory(persistence=True)
    config = _config(tmp_path, bundle_dir, small_fs, broker, disk={"min_free_mb": 4, "resume_margin_mb": 1})
    service = _service(config)
    try:
        broker.stop()  # messages of the first frames wait in the outbox
        first = _drop(data, tmp_path / "incoming", FRAMES[:3], "a")
        _poll_until(service, 3)
        service.recorder.close_idle(idle_seconds=0)
        queued = len(service.store.outbox)
        ballast = _fill(small_fs, leave_mb=2)
        later = _drop(data, tmp_path / "incoming", FRAMES[3:], "b")
        assert _poll_for(service, 0.5) == 0
        health = service.health()
        assert health["disk_full"] is True and health["accepting_frames"] is False and health["disk_free_mb"] < 4
        broker.start()  # the outbox drains while intake is paused
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(service.store.outbox):
            assert service.poll_once() == 0
            time.sleep(0.1)
        assert queued > 0 and len(service.store.outbox) == 0
        assert _count(service, "frames") == 3 and all(p.exists() for p in first + later)
        ballast.unlink()
        _poll_until(service, 6)
        assert _poll_for(service, 0.5) == 0
        assert service.store.integrity_check() == "ok"
        keys = [k for (k,) in service.store.conn.execute("SELECT key FROM frames")]
        assert len(keys) == len(set(keys)) == 6
        assert service.health()["disk_full"] is False
    finally:
        service.stop()


def test_a_full_disk_with_frames_in_flight_offers_them_all_again(tmp_path, data, bundle_dir, monkeypatch):
    """Two frames at once: the first frame's write fails for want of space while the second is analysed. Both
    go back to the folder with no attempt counted against them, and each is recorded once when space is back."""
    service = _service(_config(tmp_path, bundle_dir, tmp_path / "state", bundle={
        "path": str(bundle_dir), "frames_at_once": 2, "backend": {"type": "onnxruntime", "threads": 1}}))
    service.disk.usage = FakeDisk(5000)
    record, failed = service.recorder.record, []

    def full_once(analysis):
        if not failed:
            failed.append(analysis.frame.key)
            raise sqlite3.OperationalError("database or disk is full")
        return record(analysis)

    monkeypatch.setattr(service.recorder, "record", full_once)
    try:
        assert service.pipeline.depth == 2
        dropped = _drop(data, tmp_path / "incoming", FRAMES[:4], "f")
        service.poll_once()
        assert failed and _count(service, "frames") == 0 and not service.disk.accepting
        assert len(service.pipeline) == 0  # the frame in flight went back too
        counted = service.store.conn.execute("SELECT COALESCE(SUM(count), 0) FROM attempts").fetchone()[0]
        assert counted == 0
        service.disk.write_failed_until = 0.0
        _poll_until(service, 4)
        assert _poll_for(service, 0.5) == 0  # each frame exactly once
        paths = sorted(p for (p,) in service.store.conn.execute("SELECT path FROM frames"))
        assert paths == sorted(str(p) for p in dropped)
    finally:
        service.stop()

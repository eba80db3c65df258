"""Scenario 3: the store's filesystem fills up while frames arrive, then space is freed.

The store lives on a size-limited tmpfs mounted inside the test's temp dir (unmounted at
teardown; the row is skipped with the reason where mounting is refused). A ballast file leaves
less than ``disk.min_free_mb``: the service must pause intake and say ``disk_full`` in its
status, then take every waiting frame, each once, when the ballast goes.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from .harness import (
    CountingSubscriber,
    EdgeProcess,
    Feeder,
    drain,
    frame_figures,
    integrity,
    real_frames,
    scalar,
    wait_for,
    write_edge_config,
)

pytestmark = pytest.mark.reliability


@pytest.fixture
def small_fs(tmp_path, row):
    """A 32 MiB tmpfs at ``tmp_path/small`` (root or CAP_SYS_ADMIN needed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", f"trapedge-rel-{uuid.uuid4().hex[:6]}",
                             str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        with row("3 disk full"):
            pytest.skip(f"cannot mount a size-limited tmpfs: {result.stderr.strip() or result.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount, leave_mb: float):
    """A ballast file leaving about ``leave_mb`` free."""
    ballast = mount / "ballast"
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * max(0, shutil.disk_usage(mount).free - int(leave_mb * 1e6)))
    return ballast


def test_full_disk_pauses_intake_and_resumes(tmp_path, data, bundle_dir, small_fs, mosquitto, row):
    with row("3 disk full") as r:
        subscriber = CountingSubscriber(mosquitto)
        db = small_fs / "trapedge.db"
        config = write_edge_config(tmp_path, bundle_dir, mosquitto, store=db, status_interval_s=1,
                                   disk={"min_free_mb": 4, "resume_margin_mb": 1})
        service = EdgeProcess(config, tmp_path / "service.log").start()
        feeder = Feeder(real_frames(data), tmp_path / "incoming", interval_s=0.4).start()
        try:
            wait_for(lambda: scalar(db, "SELECT COUNT(*) FROM frames") >= 5, 60, "first frames")
            ballast = fill(small_fs, leave_mb=2)
            wait_for(lambda: subscriber.saw_status(lambda s: (s.get("health") or {}).get("disk_full") is True), 30,
                     "a disk_full status")
            time.sleep(1)
            paused_at = scalar(db, "SELECT COUNT(*) FROM frames")
            time.sleep(3)
            still = scalar(db, "SELECT COUNT(*) FROM frames")
            ballast.unlink()
            wait_for(lambda: subscriber.saw_status(lambda s: (s.get("health") or {}).get("disk_full") is False
                                                   and (s.get("health") or {}).get("frames", 0) > 0), 30,
                     "a status with space back")
            dropped, sent = drain(db, feeder, subscriber, 120, 60, 30)
        finally:
            feeder.stop()
            rc = service.stop()
            subscriber.close()
        figures = frame_figures(db, dropped)
        received, duplicated = subscriber.figures()
        paused = still == paused_at
        r.figures = {"frames dropped": figures["dropped"], "recorded": figures["recorded"], "twice": figures["twice"],
                     "pause seen": "yes" if paused else "no", "sent": sent, "received": received,
                     "lost": sent - received, "duplicated": duplicated, "integrity": integrity(db)}
        r.note = f"frames {paused_at} -> {still} in 3 s while full; exit {rc}"
        assert rc == 0, service.tail()
        assert paused, "frames were still taken while the disk was full"
        assert figures["recorded"] == len(dropped) and figures["twice"] == 0 and figures["failures"] == 0
        assert integrity(db) == "ok" and sent == received

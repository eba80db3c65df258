"""The appliance against a full disk and a database taken from under it (issue: trust boundary).

In process, on the real bundle, store and folder source: a full disk is SQLite's own SQLITE_FULL
(``PRAGMA max_page_count`` pinned at the database's size on every connection: writes fail exactly
as on a full filesystem, without needing root to fill one).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import common.sqlite
from edge.app.config import EdgeConfig
from edge.app.service import Service, main
from edge.storage.store import StoreError, StoreLost

FRAMES = ["ena24_small/8831.jpg", "ena24_small/8786.jpg", "autofocus_gallery/coyote1.jpg", "ena24_small/4383.jpg",
          "ena24_small/5840.jpg", "autofocus_gallery/buck.jpeg"]


def _config(tmp_path: Path, bundle_dir: Path) -> EdgeConfig:
    (tmp_path / "incoming").mkdir(exist_ok=True)
    return EdgeConfig.model_validate({
        "device_id": "cam-attack", "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path / "incoming"),
                                                "settle_seconds": 0, "poll_seconds": 0.01}],
        "bundle": {"path": str(bundle_dir), "frames_at_once": 2, "backend": {"type": "onnxruntime", "threads": 1}},
        "store": {"path": str(tmp_path / "state" / "trapedge.db")}, "bursts": {"gap_seconds": 3600},
        "disk": {"min_free_mb": 1}})


def _drop(data: Path, tmp_path: Path, rel: str) -> None:
    shutil.copy(data / "frames" / rel, tmp_path / "incoming" / Path(rel).name)


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full.on``: every store connection, open or opened later, can no longer grow its database."""
    class Full:
        on = False
        conns: list[sqlite3.Connection] = []

        def set(self, on: bool) -> None:
            self.on = on
            for conn in self.conns:
                try:
                    pages = conn.execute("PRAGMA page_count").fetchone()[0]
                except sqlite3.ProgrammingError:  # closed with its service
                    continue
                conn.execute(f"PRAGMA max_page_count = {pages if on else 1073741823}")

    full = Full()
    connect = common.sqlite.connect

    def tracked(path):
        conn = connect(path)
        full.conns.append(conn)
        if full.on:
            conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return conn

    monkeypatch.setattr("edge.storage.store.connect", tracked)
    return full


def test_a_full_disk_neither_stops_the_service_nor_loses_a_frame(tmp_path, data, bundle_dir, full_disk, caplog,
                                                                tally):
    config = _config(tmp_path, bundle_dir)
    service = Service(config)
    service.start()
    for rel in FRAMES[:2]:
        _drop(data, tmp_path, rel)
    service.run(once=True)  # two frames of one burst, closed
    full_disk.set(True)
    with caplog.at_level(logging.WARNING):
        for rel in FRAMES[2:4]:  # frames arrive, bursts close, status is written: on a full disk
            _drop(data, tmp_path, rel)
            service.disk.write_failed_until = 0.0
            time.sleep(0.02)
            service.run(once=True)
        service.stop()
        for rel in FRAMES[4:]:
            _drop(data, tmp_path, rel)
        restarted = Service(config)  # a restart on the full disk: it starts, and its loop survives
        restarted.start()
        restarted.run(once=True)
    failed_writes = [r for r in caplog.records if "a database write failed" in r.getMessage()]
    assert failed_writes, "the pinned database size made writes fail"
    assert not [r for r in caplog.records if r.exc_info], "a full disk is a state, not a traceback"
    full_disk.set(False)  # space back
    restarted.disk.write_failed_until = 0.0
    time.sleep(0.02)
    restarted.run(once=True)
    assert not restarted.health()["disk_full"]
    restarted.stop()
    db = config.store.path
    keys = sorted(k.split(":")[0] for (k,) in _rows(db, "SELECT key FROM frames"))
    assert keys == sorted(Path(rel).name for rel in FRAMES), "every frame recorded once, none lost"
    assert _rows(db, "SELECT COUNT(*) FROM events WHERE closed = 0") == [(0,)]
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    tally.record("edge: full disk (SQLITE_FULL on writes, then a restart on it)", attempts=len(failed_writes),
                 rejected=len(failed_writes), crashes=0, failed_restarts=0)


def test_a_deleted_database_stops_with_a_reason_and_the_restart_duplicates_nothing(tmp_path, data, bundle_dir,
                                                                                     caplog, tally):
    config = _config(tmp_path, bundle_dir)
    for rel in FRAMES:
        _drop(data, tmp_path, rel)
    assert main(config, once=True) == 0
    db = config.store.path
    first = sorted(_rows(db, "SELECT msg_id, topic FROM outbox"))
    assert first, "the frames queued messages"

    service = Service(config)
    service.start()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreLost, match="deleted or replaced while running"):
        service.run(once=True)
    service.stop()

    with caplog.at_level(logging.ERROR):
        assert main(config, once=True) == 0  # the restart: a new database, every file analysed again
    again = sorted(_rows(db, "SELECT msg_id, topic FROM outbox"))
    assert again == first, "the same frames make the same message ids: central keeps each sighting once"
    tally.record("edge: database deleted while running", attempts=1, rejected=1, crashes=0, failed_restarts=0)


def test_a_read_only_database_is_one_line_at_start(tmp_path, data, bundle_dir, monkeypatch, caplog, tally):
    config = _config(tmp_path, bundle_dir)
    assert main(config, once=True) == 0
    db = config.store.path
    if os.geteuid() == 0:  # root writes through file modes: make SQLite see what a read-only file gives
        def read_only(path):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        monkeypatch.setattr("edge.storage.store.connect", read_only)
    else:
        db.chmod(0o444)
        db.parent.chmod(0o555)
    with caplog.at_level(logging.ERROR):
        assert main(config, once=True) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "readonly" in lines[0] and "writable by the service user" in lines[0]
    assert not any(r.exc_info for r in caplog.records), "a reason, not a traceback"
    with pytest.raises(StoreError):
        from edge.storage.store import Store
        Store(db)
    tally.record("edge: read-only database at start", attempts=1, rejected=1, crashes=0, failed_restarts=0)


KILLER = """
import os, sys, time
from edge.analysis.analyzer import Analyzer
from edge.app.config import EdgeConfig
from edge.app.service import main

real = Analyzer.finish
def dies_on_poison(self, begun):  # as the kernel's OOM killer ends a service that decodes a bomb
    if begun.frame.key.startswith("poison"):
        time.sleep(1.0)  # the next frame is in flight by now
        os._exit(137)
    return real(self, begun)
Analyzer.finish = dies_on_poison
sys.exit(main(EdgeConfig.model_validate_json(sys.argv[1]), once=True))
"""


def test_a_frame_that_kills_the_service_is_not_retried_forever(tmp_path, data, bundle_dir, tally):
    """Two frames at once: the frame in flight beside the one that kills the service is tried again alone
    and recorded; the killer is a failure record at the third start."""
    config = _config(tmp_path, bundle_dir)
    assert config.bundle.frames_in_flight() == 2
    incoming, now = tmp_path / "incoming", time.time()
    for i, (rel, name) in enumerate([(FRAMES[0], "a.jpg"), (FRAMES[2], "poison.jpg"), (FRAMES[1], "z.jpg")]):
        shutil.copy(data / "frames" / rel, incoming / name)
        os.utime(incoming / name, (now - 60 + i, now - 60 + i))  # taken in this order
    codes = [subprocess.run([sys.executable, "-c", KILLER, config.model_dump_json()], capture_output=True,
                            timeout=300).returncode for _ in range(3)]
    assert codes == [137, 137, 0], "the third start records the frame as a failure and goes on"
    db = config.store.path
    (reason,) = _rows(db, "SELECT reason FROM failures WHERE key LIKE 'poison%'")[0]
    assert "stopped the service 2 times" in reason
    assert _rows(db, "SELECT COUNT(*) FROM failures") == [(1,)]
    assert sorted(k.split(":")[0] for (k,) in _rows(db, "SELECT key FROM frames")) == ["a.jpg", "z.jpg"]
    assert _rows(db, "SELECT * FROM attempts") == []
    tally.record("edge: a frame that kills the service (OOM)", attempts=3, rejected=1, crashes=0, failed_restarts=0)


def test_the_service_takes_a_png_bomb_and_links_as_failures_and_skips(tmp_path, data, bundle_dir, tally):
    """End to end: a 10 KB PNG declaring 8944² pixels is one failure record with its reason; links
    in the drop folder are never followed (not a frame, not a message); the real frame goes through."""
    from PIL import Image

    config = _config(tmp_path, bundle_dir)
    incoming, outside = tmp_path / "incoming", tmp_path / "outside"
    outside.mkdir()
    Image.new("1", (8944, 8944)).save(incoming / "bomb.png", optimize=True)
    shutil.copy(data / "frames" / FRAMES[0], outside / "private.jpg")
    (incoming / "private.jpg").symlink_to(outside / "private.jpg")
    (incoming / "passwd.png").symlink_to("/etc/passwd")
    _drop(data, tmp_path, FRAMES[1])
    assert main(config, once=True) == 0
    db = config.store.path
    (reason,) = _rows(db, "SELECT reason FROM failures WHERE key LIKE 'bomb.png%'")[0]
    assert reason.startswith("image unreadable: image too large (8944x8944, PNG)")
    assert [k.split(":")[0] for (k,) in _rows(db, "SELECT key FROM frames")] == [Path(FRAMES[1]).name]
    assert not _rows(db, "SELECT key FROM failures WHERE key NOT LIKE 'bomb.png%'")
    stored = sum(len(p) for (p,) in _rows(db, "SELECT payload FROM outbox"))
    tally.record("edge: PNG bomb and symbolic links in the drop folder", attempts=3, rejected=3, crashes=0,
                 failed_restarts=0, bytes_stored=stored)

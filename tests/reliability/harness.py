"""The real appliance as a subprocess, frames fed into its drop folder, and a counting subscriber.

Same approach as ``tests/test_service.py``: a config file, ``python -m trapedge.cli run``, real
frames copied in (``.part`` then renamed, as an uploader does), rows read from its SQLite file.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

DEVICE = "cam-rel"


def real_frames(data: Path) -> list[Path]:
    """Every camera JPEG under ``data/frames``, in a fixed order."""
    return sorted(p for p in (data / "frames").rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})


def write_edge_config(workdir: Path, bundle_dir: Path, broker, store: Path | None = None, **overrides) -> Path:
    """``edge.yaml`` for one folder source ``workdir/incoming`` and the store under ``workdir/state``."""
    config = {
        "device_id": DEVICE, "site": "island",
        "sources": [{"type": "folder", "id": "sd", "path": str(workdir / "incoming"), "settle_seconds": 0.2,
                     "poll_seconds": 0.2}],
        "bundle": {"path": str(bundle_dir), "backend": {"type": "onnxruntime", "threads": 1}},
        "rules": {"watch": [{"label": "bear", "threshold": 0.3}]},
        "bursts": {"gap_seconds": 1},
        "store": {"path": str(store or workdir / "state" / "trapedge.db")},
        "mqtt": {"host": broker.host, "port": broker.port} if broker else None,
        "idle_sleep_s": 0.1, "status_interval_s": 2,
        **overrides,
    }
    (workdir / "incoming").mkdir(parents=True, exist_ok=True)
    path = workdir / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class EdgeProcess:
    """``trapedge run --config``, restartable; its output appended to one log."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> EdgeProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "trapedge.cli", "run", "--config", str(self.config)],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops it; returns the exit status."""
        if not self.alive:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Feeder:
    """Drops real frames into the folder at a steady pace from a thread, each under a new name."""

    def __init__(self, frames: list[Path], folder: Path, interval_s: float, prefix: str = "f"):
        self.frames, self.folder, self.interval_s, self.prefix = frames, folder, interval_s, prefix
        self.dropped: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def drop(self, source: Path) -> Path:
        target = self.folder / f"{self.prefix}{len(self.dropped):05d}{source.suffix.lower()}"
        partial = target.with_suffix(".part")
        shutil.copy(source, partial)
        partial.rename(target)
        self.dropped.append(target)
        return target

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.drop(self.frames[i % len(self.frames)])
            i += 1
            self._stop.wait(self.interval_s)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> list[Path]:
        self._stop.set()
        self._thread.join(10)
        return self.dropped


class CountingSubscriber:
    """A persistent QoS-1 session on ``<prefix>/<device>/#``: every delivery counted by message id."""

    def __init__(self, broker, device: str = DEVICE, prefix: str = "trapedge"):
        self.deliveries: Counter[str] = Counter()
        self.statuses: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rel-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/{device}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, msg) -> None:
        payload = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/status"):
                self.statuses.append(payload)
            else:
                self.deliveries[payload["id"]] += 1

    def figures(self) -> tuple[int, int]:
        """(distinct ids received, deliveries beyond the first of each id)."""
        with self.lock:
            return len(self.deliveries), sum(self.deliveries.values()) - len(self.deliveries)

    def saw_status(self, predicate) -> bool:
        with self.lock:
            return any(predicate(s) for s in self.statuses)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def query(db: Path, sql: str, *args) -> list[tuple]:
    """Rows of one statement on a fresh read connection; [] while the schema does not exist yet."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def scalar(db: Path, sql: str, *args, default=0):
    rows = query(db, sql, *args)
    return rows[0][0] if rows and rows[0][0] is not None else default


def outbox_created(db: Path) -> int:
    """Outbox rows ever created: AUTOINCREMENT's high-water mark survives deletion on PUBACK."""
    return scalar(db, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")


def outbox_left(db: Path) -> int:
    return scalar(db, "SELECT COUNT(*) FROM outbox")


def settled(db: Path) -> bool:
    """Nothing waits: the outbox is empty and every event is closed."""
    return db.exists() and outbox_left(db) == 0 and scalar(db, "SELECT COUNT(*) FROM events WHERE closed = 0") == 0 \
        and bool(query(db, "SELECT 1 FROM events LIMIT 1") or query(db, "SELECT 1 FROM frames LIMIT 1"))


def recorded_paths(db: Path, table: str = "frames") -> Counter[str]:
    """How many rows of ``table`` name each file path."""
    return Counter(path for (path,) in query(db, f"SELECT path FROM {table}"))


def integrity(db: Path) -> str:
    return scalar(db, "PRAGMA integrity_check", default="(no database)")


def frame_figures(db: Path, dropped: list[Path]) -> dict:
    """dropped, recorded (frames or failures, once), twice (a path in more than one row), missing."""
    frames, failures = recorded_paths(db, "frames"), recorded_paths(db, "failures")
    both = frames + failures
    names = [str(p) for p in dropped]
    return {"dropped": len(names), "recorded": sum(1 for n in names if both[n] >= 1),
            "twice": sum(1 for n in names if both[n] > 1), "missing": sum(1 for n in names if both[n] == 0),
            "failures": sum(failures.values())}


def drain(db: Path, feeder, subscriber, record_s: float, drain_s: float, receive_s: float) -> tuple[list[Path], int]:
    """Stop feeding, then wait until every dropped frame is recorded, the outbox is empty and the
    subscriber holds every message the outbox ever created; returns (dropped frames, sent)."""
    dropped = feeder.stop()
    wait_for(lambda: frame_figures(db, dropped)["recorded"] == len(dropped), record_s, "every frame recorded")
    wait_for(lambda: settled(db), drain_s, "outbox drained")
    sent = outbox_created(db)
    wait_for(lambda: subscriber.figures()[0] >= sent, receive_s, "every message at the subscriber")
    return dropped, sent


def random_pause(rng: random.Random, low: float, high: float) -> float:
    pause = rng.uniform(low, high)
    time.sleep(pause)
    return pause

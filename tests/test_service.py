"""The appliance end to end: real frames, a real Mosquitto, the real `trapedge run` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

OUTAGE_S = float(os.environ.get("TRAPEDGE_SERVICE_OUTAGE_S", "30"))
FRAMES = ["ena24_small/8831.jpg", "ena24_small/8786.jpg", "ena24_small/9455.jpg",  # bears (one burst)
          "autofocus_gallery/coyote1.jpg", "ena24_small/4383.jpg", "ena24_small/7951.jpg",
          "ena24_small/5840.jpg", "autofocus_gallery/buck.jpeg", "animl_samples/sample-img-skunk-large.jpg"]


class Subscriber:
    """Collects every message of the device, keyed by message id, across broker restarts."""

    def __init__(self, broker, prefix: str = "trapedge"):
        self.received: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, msg) -> None:
        if msg.retain:  # retained status replayed on (re)subscribe
            return
        with self.lock:
            self.received.append((msg.topic, json.loads(msg.payload), msg.dup))

    def of_kind(self, kind: str) -> list[dict]:
        with self.lock:
            return [p for topic, p, _ in self.received if topic.endswith("/" + kind)]

    def ids(self) -> list[str]:
        with self.lock:
            return [p["id"] for topic, p, dup in self.received if not topic.endswith("/status") and not dup]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(tmp_path: Path, bundle_dir: Path, broker, **overrides) -> Path:
    config = {
        "device_id": "cam-test", "site": "island",
        "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path / "incoming"), "settle_seconds": 0.2,
                     "poll_seconds": 0.2}],
        "bundle": {"path": str(bundle_dir), "threads": 1},
        "rules": {"watch": [{"label": "bear", "threshold": 0.3}]},
        "bursts": {"gap_seconds": 60},
        "store": {"path": str(tmp_path / "state" / "trapedge.db")},
        "mqtt": {"host": broker.host, "port": broker.port} if broker else None,
        "idle_sleep_s": 0.2, "status_interval_s": 5,
        **overrides,
    }
    (tmp_path / "incoming").mkdir(exist_ok=True)
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_service(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trapedge.cli", "run", "--config", str(config)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stop_service(process: subprocess.Popen, timeout: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def db_rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def drop(data: Path, folder: Path, rel: str, name: str | None = None) -> Path:
    target = folder / (name or rel.replace("/", "__"))
    shutil.copy(data / "frames" / rel, target.with_suffix(".part"))
    target.with_suffix(".part").rename(target)
    return target


def expected_messages(db: Path) -> int:
    """Embeddings + closed events + alerts the device produced, from its own rows."""
    embeddings = db_rows(db, "SELECT COUNT(*) FROM embeddings")[0][0]
    events = db_rows(db, "SELECT COUNT(*) FROM events WHERE closed = 1")[0][0]
    alerts = db_rows(db, "SELECT COUNT(*) FROM events WHERE alerted = 1")[0][0]
    return embeddings + events + alerts


def test_watch_listed_bear_raises_one_alert(tmp_path, data, bundle_dir, mosquitto):
    subscriber = Subscriber(mosquitto)
    config = write_config(tmp_path, bundle_dir, mosquitto)
    process = start_service(config, tmp_path / "service.log")
    try:
        for rel in FRAMES[:3]:
            drop(data, tmp_path / "incoming", rel)
        wait_for(lambda: subscriber.of_kind("alert"), 60, "an alert")
        alert = subscriber.of_kind("alert")[0]
        assert alert["label"] == "bear" and alert["device"] == "cam-test" and alert["site"] == "island"
        assert alert["thumbnail"]["format"] == "jpeg" and alert["thumbnail"]["bytes"] <= 40_000
        wait_for(lambda: len(subscriber.of_kind("embedding")) >= 3, 30, "embeddings")
        embedding = subscriber.of_kind("embedding")[0]
        assert embedding["event_id"] == alert["event_id"] and len(embedding["vector"]) == embedding["dim"]
    finally:
        assert stop_service(process) == 0
        subscriber.close()
    assert len(subscriber.of_kind("alert")) == 1  # one alert per event, however many frames
    print((tmp_path / "service.log").read_text()[-2000:])


def test_validate_config_reports_key_and_line(tmp_path, bundle_dir):
    config = write_config(tmp_path, bundle_dir, None)
    text = config.read_text().replace("gap_seconds: 60", "gap_seconds: soon")
    config.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "gap_seconds" in l)
    result = subprocess.run([sys.executable, "-m", "trapedge.cli", "run", "--config", str(config), "--validate-config"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert f"edge.yaml:{line}: bursts.gap_seconds" in result.stderr

"""``trapedge bench --latency``: how long a watch-listed animal takes from its file closing to its alert.

Starts Debian's mosquitto on a free loopback port and the real service (``trapedge run --config``, in
its own process) watching a folder with file-close notifications on, the default bundle and a watch
rule for ``bird``; a QoS 1 subscriber waits on the alert topic. Then it writes real bird frames into
the folder one at a time, at random intervals, and times each from the moment its writer closed it
to the moment its alert (matched by the alert's ``file`` field) reached the subscriber. The service's
own records split that time: when the folder source took the file (its DEBUG log) and when the
frame's analysis was recorded (``frames.processed_at``).

Bursts are cut at 10 ms (``bursts.gap_seconds``), so that every frame is an event of its own and
alerts: an event alerts once, on the first frame that meets the rule, which is what is timed here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from common.local_broker import BrokerMissing, Mosquitto
from common.wire import topic

DEVICE, PREFIX, LABEL = "bench-latency", "trapedge", "bird"
FRAMES = ["ena24_small/7951.jpg", "ena24_small/5840.jpg", "ena24_small/49.jpg", "ena24_small/8200.jpg"]  # crows, a chicken
WARMUP = 1  # alerts not counted: the first inference after start-up
PAUSE_S = (0.1, 0.6)  # random wait between alerts, so that a file lands at any point of the service's loop
START_TIMEOUT_S, ALERT_TIMEOUT_S = 180.0, 30.0
TAKING = re.compile(r"^(\S+ \S+) DEBUG edge\.capture\.sources\.folder: \S+: taking (.+):\d+:\d+$")


class LatencyError(RuntimeError):
    """The benchmark cannot run or finish; one line that says why."""


@dataclass
class Sample:
    """One alert: when its file closed and when each step after it happened (epoch seconds)."""

    file: str
    closed: float
    received: float
    taken: float | None = None
    recorded: float | None = None


class AlertWatcher:
    """A QoS 1 subscriber to the device's alerts and status: when each alert arrived, by its ``file``."""

    def __init__(self, broker: Mosquitto):
        self.arrived: dict[str, float] = {}
        self.online = threading.Event()
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency-subscriber")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(topic(PREFIX, DEVICE, "alert"), 1), (topic(PREFIX, DEVICE, "status"), 1)])
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        body = json.loads(msg.payload)
        if msg.topic.endswith("/status"):
            if body.get("state") == "online":
                self.online.set()
            return
        with self.changed:
            self.arrived.setdefault(str(body.get("file")), now)
            self.changed.notify_all()

    def wait(self, file: str, timeout: float) -> float | None:
        """When the alert for ``file`` arrived; None if it did not within ``timeout`` seconds."""
        with self.changed:
            self.changed.wait_for(lambda: file in self.arrived, timeout)
            return self.arrived.get(file)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(workdir: Path, bundle: Path, broker: Mosquitto) -> Path:
    """The service's edge.yaml: defaults everywhere but the folder, broker, watch rule and burst gap."""
    config = {
        "device_id": DEVICE,
        "sources": [{"type": "folder", "id": "drop", "path": str(workdir / "incoming"), "notify": True}],
        "bundle": {"path": str(bundle.resolve())},
        "rules": {"watch": [{"label": LABEL, "threshold": 0.3}]},
        "bursts": {"gap_seconds": 0.01},
        "store": {"path": str(workdir / "state" / "trapedge.db")},
        "mqtt": {"host": broker.host, "port": broker.port, "prefix": PREFIX},
        "log_level": "DEBUG",
    }
    (workdir / "incoming").mkdir()
    path = workdir / "edge.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_service(config: Path, log: Path, watcher: AlertWatcher) -> subprocess.Popen:
    """``trapedge run`` in its own process, once it is connected and has said it is online."""
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "trapedge.cli", "run", "--config", str(config)],
                                   stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not watcher.online.wait(0.2):
        if process.poll() is not None:
            raise LatencyError(f"trapedge run exited with {process.returncode}: {last_line(log)}")
        if time.monotonic() > deadline:
            stop_service(process)
            raise LatencyError(f"trapedge run was not online after {START_TIMEOUT_S:.0f} s: {last_line(log)}")
    return process


def stop_service(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def drop(raw: bytes, folder: Path, name: str) -> float:
    """Write ``raw`` as ``folder/name`` in place, as a camera or an upload does; when it was closed."""
    with open(folder / name, "wb") as out:
        out.write(raw)
    return time.time()


def measure(folder: Path, frames: list[bytes], count: int, watcher: AlertWatcher) -> list[Sample]:
    """Drop ``WARMUP + count`` frames one at a time, each once the previous one's alert arrived."""
    pause = random.Random(0)
    samples = []
    for i in range(WARMUP + count):
        time.sleep(pause.uniform(*PAUSE_S))
        name = f"{LABEL}-{i:04d}.jpg"
        closed = drop(frames[i % len(frames)], folder, name)
        received = watcher.wait(name, ALERT_TIMEOUT_S)
        if received is None:
            raise LatencyError(f"no alert for {name} within {ALERT_TIMEOUT_S:.0f} s (does the bundle still label "
                               f"{FRAMES[i % len(FRAMES)]} {LABEL!r}?)")
        if i >= WARMUP:
            samples.append(Sample(name, closed, received))
    return samples


def taken_times(log: Path) -> dict[str, float]:
    """When the folder source took each file, from the service's DEBUG log (local time, milliseconds)."""
    times = {}
    for line in log.read_text(errors="replace").splitlines():
        match = TAKING.match(line)
        if match:
            times[match.group(2)] = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return times


def recorded_times(db: Path) -> dict[str, float]:
    """When each frame's analysis was recorded (``frames.processed_at``), by file name."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT path, processed_at FROM frames").fetchall()
    finally:
        conn.close()
    return {Path(path).name: datetime.fromisoformat(at).timestamp() for path, at in rows}


def percentiles_ms(values: list[float]) -> dict[str, float]:
    """p50, p95 and max of durations in seconds, in milliseconds."""
    ms = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "max": round(float(ms.max()), 1)}


def summarise(samples: list[Sample], broker: Mosquitto) -> dict[str, Any]:
    """The figures: per step, p50/p95/max of the time since the file closed."""
    steps = {"taken": [s.taken - s.closed for s in samples if s.taken is not None],
             "recorded": [s.recorded - s.closed for s in samples if s.recorded is not None],
             "received": [s.received - s.closed for s in samples]}
    return {
        "alerts": len(samples), "warmup": WARMUP, "label": LABEL, "frames": FRAMES,
        "broker": f"mosquitto {broker.host}:{broker.port}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "latency_ms": {step: percentiles_ms(values) for step, values in steps.items() if values},
        "samples": [asdict(s) for s in samples],
    }


def report(result: dict[str, Any]) -> None:
    """The short table."""
    print(f"file closed → alert at a QoS 1 subscriber: {result['alerts']} alerts ({result['label']}, "
          f"after {result['warmup']} warm-up), {result['broker']}")
    print(f"machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs")
    print(f"{'since the file closed':<34}{'p50':>9}{'p95':>9}{'max':>9}")
    names = {"taken": "the folder source took it", "recorded": "its analysis was recorded",
             "received": "its alert arrived (PUBACK path)"}
    for step, figures in result["latency_ms"].items():
        print(f"{names[step]:<34}" + "".join(f"{figures[q]:>7.0f}ms" for q in ("p50", "p95", "max")))


def run(args: argparse.Namespace) -> int:
    """``trapedge bench --latency``: one-line errors, exit status 2, when it cannot run."""
    try:
        result = bench(args.bundle, args.folder, args.alerts)
    except (LatencyError, BrokerMissing) as exc:
        print(f"trapedge bench --latency: {exc}", file=sys.stderr)
        return 2
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def bench(bundle: Path, data: Path, alerts: int) -> dict[str, Any]:
    """Broker, subscriber and service started, ``alerts`` alerts timed, everything stopped again."""
    if not (bundle / "manifest.json").is_file():
        raise LatencyError(f"no model bundle at {bundle}: build it with `make export` (or pass --bundle)")
    missing = [rel for rel in FRAMES if not (data / rel).is_file()]
    if missing:
        raise LatencyError(f"{data / missing[0]} not found: pass the real frames folder (../shared/data/frames)")
    frames = [(data / rel).read_bytes() for rel in FRAMES]
    with tempfile.TemporaryDirectory(prefix="trapedge-latency-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        try:
            broker.start()
        except RuntimeError as exc:
            raise LatencyError(str(exc).splitlines()[0]) from None
        try:
            samples = time_alerts(Path(tmp), bundle, broker, frames, alerts)
        finally:
            broker.stop(timeout=5)
    return summarise(samples, broker)


def time_alerts(workdir: Path, bundle: Path, broker: Mosquitto, frames: list[bytes], alerts: int) -> list[Sample]:
    """The subscriber and the service up, ``alerts`` alerts timed, both stopped; then each sample's
    steps read from the service's log and store."""
    watcher = AlertWatcher(broker)
    log = workdir / "service.log"
    try:
        service = start_service(write_config(workdir, bundle, broker), log, watcher)
        try:
            samples = measure(workdir / "incoming", frames, alerts, watcher)
        except LatencyError:
            if service.poll() is not None:
                raise LatencyError(f"trapedge run exited with {service.returncode}: {last_line(log)}") from None
            raise
        finally:
            stop_service(service)
    finally:
        watcher.close()
    taken, recorded = taken_times(log), recorded_times(workdir / "state" / "trapedge.db")
    for sample in samples:
        sample.taken, sample.recorded = taken.get(sample.file), recorded.get(sample.file)
    return samples

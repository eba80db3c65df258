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

Then the same service gets the real frames folder at full rate (``--frames`` files written at once) and
its own peak resident memory is read (``VmHWM``, Linux): start-up, the signature check, the publisher,
the folder watch and the store included, which the pipeline figures of ``trapedge bench`` leave out. A
second service does the same one frame at a time (``bundle.frames_at_once: 1``), as a device with
less memory runs.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from common.local_broker import BrokerMissing, Mosquitto
from common.wire import topic
from edge.capture.decode import list_images
from edge.runtime.machine import auto_frames_at_once

DEVICE, PREFIX, LABEL = "bench-latency", "trapedge", "bird"
FRAMES = ["ena24_small/7951.jpg", "ena24_small/5840.jpg", "ena24_small/49.jpg", "ena24_small/8200.jpg"]  # crows, a chicken
WARMUP = 1  # alerts not counted: the first inference after start-up
PAUSE_S = (0.1, 0.6)  # random wait between alerts, so that a file lands at any point of the service's loop
START_TIMEOUT_S, ALERT_TIMEOUT_S = 180.0, 30.0
FULL_RATE_TIMEOUT_S = 10.0  # a frame of the full-rate run, at the most
FULL_RATE_PREFIX = "full-rate-"
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


@dataclass
class FullRate:
    """The service itself on a folder's frames written all at once."""

    frames_at_once: int
    frames: int
    fps: float
    peak_rss_mb: float | None


def write_config(workdir: Path, bundle: Path, broker: Mosquitto, frames_at_once: int = 0,
                 log_level: str = "DEBUG") -> Path:
    """The service's edge.yaml: defaults everywhere but the folder, broker, watch rule, burst gap and log
    level (DEBUG logs when the folder source takes each file), and ``frames_at_once`` where it is not 0."""
    config: dict[str, Any] = {
        "device_id": DEVICE,
        "sources": [{"type": "folder", "id": "drop", "path": str(workdir / "incoming"), "notify": True}],
        "bundle": {"path": str(bundle.resolve())},
        "rules": {"watch": [{"label": LABEL, "threshold": 0.3}]},
        "bursts": {"gap_seconds": 0.01},
        "store": {"path": str(workdir / "state" / "trapedge.db")},
        "mqtt": {"host": broker.host, "port": broker.port, "prefix": PREFIX},
        "log_level": log_level,
    }
    if frames_at_once:
        config["bundle"]["frames_at_once"] = frames_at_once
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


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the service's store, read while it runs too; none while the store is not there yet."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return []
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # its tables are not created yet
        return []
    finally:
        conn.close()


def recorded_times(db: Path, prefix: str = "") -> dict[str, float]:
    """When each frame's analysis was recorded (``frames.processed_at``), by file name (those starting with
    ``prefix``)."""
    return {Path(path).name: datetime.fromisoformat(at).timestamp()
            for path, at in _rows(db, "SELECT path, processed_at FROM frames")
            if path and Path(path).name.startswith(prefix)}


def failed_files(db: Path, prefix: str) -> list[str]:
    """Files starting with ``prefix`` the service recorded as failures, with their reason."""
    return [f"{Path(path).name}: {reason}" for path, reason in _rows(db, "SELECT path, reason FROM failures")
            if path and Path(path).name.startswith(prefix)]


def peak_rss_mb(pid: int) -> float | None:
    """A running process's peak resident memory so far (MB, ``VmHWM``); None without Linux's /proc."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), None)
    return None if kib is None else round(kib / 1024, 1)


def full_rate(service: subprocess.Popen, workdir: Path, log: Path, images: list[Path], frames: int,
              frames_at_once: int) -> FullRate:
    """Write ``frames`` files (``images`` in turn) into the watched folder at once, wait until the service
    has recorded them all, and read its frames/s (first file written → last one recorded) and peak RSS."""
    folder, db = workdir / "incoming", workdir / "state" / "trapedge.db"
    first_closed = time.time()
    for i in range(frames):
        image = images[i % len(images)]
        drop(image.read_bytes(), folder, f"{FULL_RATE_PREFIX}{i:04d}{image.suffix.lower()}")
    deadline = time.monotonic() + FULL_RATE_TIMEOUT_S * frames
    while len(recorded := recorded_times(db, FULL_RATE_PREFIX)) < frames:
        if service.poll() is not None:
            raise LatencyError(f"trapedge run exited with {service.returncode}: {last_line(log)}")
        failed = failed_files(db, FULL_RATE_PREFIX)
        if failed:
            raise LatencyError(f"the service failed on a frame of the full-rate run: {failed[0]}")
        if time.monotonic() > deadline:
            raise LatencyError(f"the service recorded {len(recorded)} of {frames} frames written at once in "
                               f"{FULL_RATE_TIMEOUT_S * frames:.0f} s")
        time.sleep(0.1)
    seconds = max(recorded.values()) - first_closed
    return FullRate(frames_at_once, frames, round(frames / seconds, 2), peak_rss_mb(service.pid))


def percentiles_ms(values: list[float]) -> dict[str, float]:
    """p50, p95 and max of durations in seconds, in milliseconds."""
    ms = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "max": round(float(ms.max()), 1)}


def summarise(samples: list[Sample], broker: Mosquitto, full_rate: list[FullRate] | None = None) -> dict[str, Any]:
    """The figures: per step, p50/p95/max of the time since the file closed; the full-rate runs."""
    steps = {"taken": [s.taken - s.closed for s in samples if s.taken is not None],
             "recorded": [s.recorded - s.closed for s in samples if s.recorded is not None],
             "received": [s.received - s.closed for s in samples]}
    return {
        "alerts": len(samples), "warmup": WARMUP, "label": LABEL, "frames": FRAMES,
        "broker": f"mosquitto {broker.host}:{broker.port}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "latency_ms": {step: percentiles_ms(values) for step, values in steps.items() if values},
        "samples": [asdict(s) for s in samples],
        "service_full_rate": [asdict(run) for run in full_rate or []],
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
    for run in result.get("service_full_rate", []):
        rss = "-" if run["peak_rss_mb"] is None else f"{run['peak_rss_mb']:.0f} MB"
        print(f"the service (trapedge run), {run['frames']} frames written at once, {run['frames_at_once']} frame(s) "
              f"at once: {run['fps']:.1f} frames/s, peak RSS {rss} (start-up included)")


def run(args: argparse.Namespace) -> int:
    """``trapedge bench --latency``: one-line errors, exit status 2, when it cannot run."""
    try:
        result = bench(args.bundle, args.folder, args.alerts, args.frames)
    except (LatencyError, BrokerMissing) as exc:
        print(f"trapedge bench --latency: {exc}", file=sys.stderr)
        return 2
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def bench(bundle: Path, data: Path, alerts: int, frames: int = 0) -> dict[str, Any]:
    """Broker, subscriber and service started, ``alerts`` alerts timed, everything stopped again; then,
    with ``frames``, the service on that many of ``data``'s frames at full rate (frames at once as the
    device chooses, and one at a time where it chooses more)."""
    if not (bundle / "manifest.json").is_file():
        raise LatencyError(f"no model bundle at {bundle}: build it with `make export` (or pass --bundle)")
    missing = [rel for rel in FRAMES if not (data / rel).is_file()]
    if missing:
        raise LatencyError(f"{data / missing[0]} not found: pass the real frames folder (../shared/data/frames)")
    raw = [(data / rel).read_bytes() for rel in FRAMES]
    auto = auto_frames_at_once()  # the service's default backend, ONNX Runtime, runs frames at once
    with tempfile.TemporaryDirectory(prefix="trapedge-latency-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        try:
            broker.start()
        except RuntimeError as exc:
            raise LatencyError(str(exc).splitlines()[0]) from None
        try:
            samples = time_alerts(Path(tmp), bundle, broker, raw, alerts)
            images = list_images(data) if frames else []  # FRAMES are among them: never empty
            runs = [service_at_full_rate(Path(tmp) / f"full-rate-{n}", bundle, broker, images, frames, n)
                    for n in sorted({auto, 1}, reverse=True)] if frames else []
        finally:
            broker.stop(timeout=5)
    return summarise(samples, broker, runs)


def time_alerts(workdir: Path, bundle: Path, broker: Mosquitto, frames: list[bytes], alerts: int) -> list[Sample]:
    """The subscriber and the service up, ``alerts`` alerts timed, both stopped; then each sample's
    steps read from the service's log and store."""
    log = workdir / "service.log"
    with running_service(write_config(workdir, bundle, broker), log, broker) as (service, watcher):
        try:
            samples = measure(workdir / "incoming", frames, alerts, watcher)
        except LatencyError:
            if service.poll() is not None:
                raise LatencyError(f"trapedge run exited with {service.returncode}: {last_line(log)}") from None
            raise
    taken, recorded = taken_times(log), recorded_times(workdir / "state" / "trapedge.db")
    for sample in samples:
        sample.taken, sample.recorded = taken.get(sample.file), recorded.get(sample.file)
    return samples


def service_at_full_rate(workdir: Path, bundle: Path, broker: Mosquitto, images: list[Path], frames: int,
                         frames_at_once: int) -> FullRate:
    """A service with ``frames_at_once`` at its default log level on ``frames`` files written at once."""
    workdir.mkdir()
    log = workdir / "service.log"
    config = write_config(workdir, bundle, broker, frames_at_once, log_level="INFO")
    with running_service(config, log, broker) as (service, _):
        return full_rate(service, workdir, log, images, frames, frames_at_once)


@contextmanager
def running_service(config: Path, log: Path, broker: Mosquitto) -> Iterator[tuple[subprocess.Popen, AlertWatcher]]:
    """A subscriber and ``trapedge run --config`` (online), both stopped on the way out."""
    watcher = AlertWatcher(broker)
    try:
        service = start_service(config, log, watcher)
        try:
            yield service, watcher
        finally:
            stop_service(service)
    finally:
        watcher.close()

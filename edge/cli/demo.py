"""``make demo``: the appliance over a folder of real frames, with a local broker when one exists.

Copies the frames into a drop folder (as an SD-card import would), starts Mosquitto on a free
loopback port if it is installed, subscribes to everything the device publishes, runs the
service until the folder is drained, then shows what it found and what it sent.
``python -m edge.cli.demo --frames ../shared/data/frames --bundle bundles/default --workdir results/demo``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from common.local_broker import BrokerMissing, Mosquitto
from edge.app.config import EdgeConfig
from edge.app.service import Service
from edge.capture.decode import list_images

DEMO_WATCH = [{"label": "bear", "threshold": 0.4}, {"label": "fox", "threshold": 0.5},
              {"label": "wolf_coyote", "threshold": 0.5}]


def burst_groups(images: list[Path]) -> list[list[Path]]:
    """Frames grouped as a camera would have shot them: same folder and same label (from a
    ``labels.csv`` beside them, as in ENA24) form one burst; other frames stand alone."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    labels: dict[Path, dict[str, str]] = {}
    for path in images:
        csv_path = path.parent / "labels.csv"
        if path.parent not in labels:
            rows = csv_path.read_text().splitlines()[1:] if csv_path.is_file() else []
            labels[path.parent] = dict(row.split(",", 1) for row in rows if "," in row)
        groups.setdefault((path.parent, labels[path.parent].get(path.name, path.name)), []).append(path)
    return list(groups.values())


def prepare_drop_folder(frames: Path, drop: Path) -> int:
    """Fresh copies of every image under ``frames``, their file times set as a camera's would be:
    2 s apart within a burst, 10 minutes between bursts (these files carry no EXIF time)."""
    shutil.rmtree(drop, ignore_errors=True)
    drop.mkdir(parents=True)
    clock = time.time() - 24 * 3600
    count = 0
    for group in burst_groups(list_images(frames)):
        for path in group:
            target = drop / f"{path.parent.name}__{path.name}"
            shutil.copyfile(path, target)
            os.utime(target, (clock, clock))
            clock += 2
            count += 1
        clock += 600
    return count


class Listener:
    """Collects every message under the device's topics."""

    def __init__(self, host: str, port: int, prefix: str):
        self.messages: list[tuple[str, dict]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="trapedge-demo-listener")
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, json.loads(msg.payload)))
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.connect(host, port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def demo_config(workdir: Path, drop: Path, bundle: Path, broker: Mosquitto | None) -> EdgeConfig:
    """The demo device: one folder source, a small watch-list, the local broker if any."""
    return EdgeConfig.model_validate({
        "device_id": "demo-cam", "site": "demo",
        "sources": [{"type": "folder", "id": "sd", "path": str(drop), "settle_seconds": 0}],
        "bundle": {"path": str(bundle)},
        "rules": {"watch": DEMO_WATCH},
        "store": {"path": str(workdir / "trapedge.db")},
        "mqtt": {"host": broker.host, "port": broker.port} if broker else None,
        "log_level": "WARNING",
    })


def show(service: Service, received: list[tuple[str, dict]]) -> None:
    """Print events, alerts and the message counts."""
    rows = service.store.conn.execute(
        "SELECT source_id, start, frames, label, score, alerted FROM events ORDER BY start").fetchall()
    print(f"\n{service.counters.frames} frames analysed, {service.counters.failures} failed, "
          f"{service.counters.detections} detections, {len(rows)} events, {service.counters.alerts} alerts")
    print(f"{'start':<24} {'frames':>6}  {'label':<14} {'score':>5}  alert")
    for _source, start, frames, label, score, alerted in rows:
        taken = datetime.fromisoformat(start).strftime("%Y-%m-%d %H:%M:%S%z")
        print(f"{taken:<24} {frames:>6}  {label or '-':<14} {score or 0:>5.2f}  {'ALERT' if alerted else ''}")
    kinds = Counter(topic.rsplit("/", 1)[-1] for topic, _ in received)
    print(f"\nreceived over MQTT: {dict(kinds) or 'nothing (no broker: messages wait in the outbox)'}; "
          f"still in the outbox: {len(service.store.outbox)}")
    for topic, payload in received:
        if topic.endswith("/alert"):
            thumb = payload.get("thumbnail") or {}
            print(f"  alert {payload['label']} {payload['score']:.2f} event {payload['event_id'][:8]} "
                  f"thumbnail {thumb.get('width')}x{thumb.get('height')} {thumb.get('bytes')} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, default=Path("../shared/data/frames"))
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--workdir", type=Path, default=Path("results/demo"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    count = prepare_drop_folder(args.frames, args.workdir / "incoming")
    print(f"{count} frames dropped into {args.workdir / 'incoming'}")
    try:
        broker = Mosquitto(args.workdir / "broker").start()
    except BrokerMissing as exc:
        print(f"{exc}: running with the outbox only")
        broker = None
    listener = Listener(broker.host, broker.port, "trapedge") if broker else None
    service = Service(demo_config(args.workdir, args.workdir / "incoming", args.bundle, broker))
    try:
        service.start()
        service.run(once=True)
        if service.publisher:
            service.publisher.kick()
            deadline = time.monotonic() + 10
            while len(service.store.outbox) and time.monotonic() < deadline:
                time.sleep(0.1)
        time.sleep(0.5)
        show(service, listener.messages if listener else [])
    finally:
        service.stop()
        if listener:
            listener.close()
        if broker:
            broker.stop(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
from collections.abc import Collection
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from common.local_broker import BrokerMissing, Mosquitto
from edge.app.config import EdgeConfig
from edge.app.service import Service
from edge.capture.decode import list_images
from edge.events.rules import RulesConfig

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


def watch_list_lines(rules: RulesConfig) -> list[str]:
    """The watch-list the demo alerts on, one label a line."""
    lines = ["watch-list (an event alerts once its mean label probability over the burst reaches the threshold, "
             "with at least min_count crops of the label in one frame):"]
    rows = [[rule.label, f"threshold {rule.threshold:.2f}", f"min_count {rule.min_count}"] for rule in rules.watch]
    return lines + ["  " + line for line in aligned(rows, right={1, 2})]


def aligned(rows: list[list[str]], right: Collection[int] = ()) -> list[str]:
    """``rows`` as lines of columns two spaces apart, each as wide as its widest cell (``right``: numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    cells = [[cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
             for row in rows]
    return ["  ".join(row).rstrip() for row in cells]


def sent_messages(service: Service, received: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """What the device sent: the broker's copy, else what still waits in the outbox."""
    if received:
        return received
    return [(m.topic, json.loads(m.payload)) for m in service.store.outbox.pending(limit=100_000)]


def frame_rows(service: Service, messages: list[tuple[str, dict]]) -> list[list[str]]:
    """One row per frame, in capture order: its file, and on an event's first frame the event, its
    label and score, ALERT, and why it did or did not alert (the frame that raised an alert says so)."""
    reasons = {p["event_id"]: p.get("alert_reason", "") for t, p in messages if t.endswith("/event")}
    alerts = {p["event_id"]: p for t, p in messages if t.endswith("/alert")}
    events = {eid: (frames, label, score, alerted) for eid, frames, label, score, alerted in service.store.conn.execute(
        "SELECT id, frames, label, score, alerted FROM events")}
    rows, shown = [], set()
    for path, key, taken, eid in service.store.conn.execute(
            "SELECT path, key, time, event_id FROM frames ORDER BY time, key").fetchall():
        name = Path(path).name if path else key.split(":")[0]
        if eid is None or eid in shown:
            raised = eid is not None and alerts.get(eid, {}).get("file") == name
            why = "nothing detected: no event" if eid is None else ("<- raised the alert" if raised else "")
            rows.append([name, "", _taken(taken), "", "", "", "", why])
            continue
        shown.add(eid)
        frames, label, score, alerted = events[eid]
        rows.append([name, eid[:8], _taken(taken), str(frames), label or "-", f"{score or 0:.2f}",
                     "ALERT" if alerted else "no", reasons.get(eid, "") + _raised(alerts.get(eid), frames)])
    return rows


def _raised(alert: dict | None, frames: int) -> str:
    """Where an event's alert came from: the frame, the label and score as the burst stood then."""
    if alert is None or frames == 1:
        return ""
    return f"; raised by {alert.get('file')} at {alert['label']} {alert['score']:.2f} (frame {alert['frames']} of {frames})"


def _taken(iso_time: str) -> str:
    return datetime.fromisoformat(iso_time).strftime("%Y-%m-%d %H:%M:%S")


def show(service: Service, received: list[tuple[str, dict]]) -> None:
    """Print one row per frame and event (file, label, score, alert and why), then the message counts."""
    rows = service.store.conn.execute("SELECT COUNT(*), SUM(alerted) FROM events").fetchone()
    print(f"\n{service.counters.frames} frames analysed, {service.counters.failures} failed, "
          f"{service.counters.detections} detections, {rows[0]} events, {service.counters.alerts} alerts")
    messages = sent_messages(service, received)
    header = ["file", "event", "taken", "frames", "label", "score", "alert", "why"]
    for line in aligned([header, *frame_rows(service, messages)], right={3, 5}):
        print(line)
    kinds = Counter(topic.rsplit("/", 1)[-1] for topic, _ in received)
    print(f"\nreceived over MQTT: {dict(kinds) or 'nothing (no broker: messages wait in the outbox)'}; "
          f"still in the outbox: {len(service.store.outbox)}")


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
    config = demo_config(args.workdir, args.workdir / "incoming", args.bundle, broker)
    print("\n".join(watch_list_lines(config.rules)))
    service = Service(config)
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

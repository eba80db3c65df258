"""edge.publish.mqtt against a real Mosquitto on loopback: order, acknowledgement, outages, last will."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from common.wire import load_schema, topic
from edge.events.bursts import Event
from edge.publish.mqtt import MqttConfig, Publisher
from edge.storage.store import Store
from edge.wire.messages import EventMessage

ROOT = Path(__file__).resolve().parents[1]
DEVICE, PREFIX = "cam-ridge-01", "trapedge"
OUTAGE_S = float(os.environ.get("TRAPEDGE_OUTAGE_S", "3"))  # the reliability suite runs 30
EVENT_SCHEMA = jsonschema.Draft202012Validator(load_schema("event"))
STATUS_SCHEMA = jsonschema.Draft202012Validator(load_schema("status"))


def wait_until(condition, timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Subscriber:
    """A paho client recording everything under ``<prefix>/<device>/``; re-subscribes on reconnect."""

    def __init__(self, broker, *, client_id: str | None = None, clean_session: bool = True, auth=None):
        self.received: list[tuple[str, dict, bool, bool]] = []  # topic, payload, retain, dup
        self.lock, self.subscribed = threading.Lock(), threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=clean_session)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(0.1, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/{DEVICE}/#", qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscriber could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.received.append((message.topic, json.loads(message.payload), message.retain, bool(message.dup)))

    def payloads(self, kind: str) -> list[dict]:
        with self.lock:
            return [p for t, p, _, _ in self.received if t == f"{PREFIX}/{DEVICE}/{kind}"]

    def event_ids(self) -> list[str]:
        return [p["id"] for p in self.payloads("event")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def announced(pub: Publisher, watcher: Subscriber) -> bool:
    """The publisher is connected and its ``online`` status has arrived and been acknowledged. Connected
    alone is not enough: the worker sends ``online`` a moment later, and a stop before then sends only
    ``offline``."""
    return pub.connected and pub.inflight == 0 and any(p["state"] == "online" for p in watcher.payloads("status"))


def retained_status(broker, auth=None) -> dict:
    """The retained status as a newly connecting consumer sees it."""
    subscriber = Subscriber(broker, auth=auth)
    try:
        assert wait_until(lambda: subscriber.payloads("status"), 3), "no retained status"
        with subscriber.lock:
            (topic, payload, retain, _), = [m for m in subscriber.received if m[0].endswith("/status")]
        assert retain
        STATUS_SCHEMA.validate(payload)
        return payload
    finally:
        subscriber.close()


def queue_events(outbox, count: int, first: int = 0) -> list[str]:
    """Queue ``count`` event messages built from real-looking events; returns their ids in order."""
    ids = []
    for n in range(first, first + count):
        start = datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc) + timedelta(minutes=n)
        event = Event(f"event-{n:04d}", "sd", start, start + timedelta(seconds=4), 3, "fox", 0.87,
                      {"fox": 0.87, "other": 0.1}, {"fox": 1}, closed=True)
        message = EventMessage(device=DEVICE, site="north ridge", event=event, alerted=False)
        ids.append(outbox.add(topic(PREFIX, DEVICE, "event"), message))
    return ids


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "trapedge.db")
    yield store
    store.close()


@pytest.fixture
def clients(store):
    """Make publishers and subscribers; all are stopped at teardown (before the store closes)."""
    made = []

    def publisher(broker, *, status_extra=None, **config) -> Publisher:
        settings = dict(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0) | config
        made.append(Publisher(MqttConfig(**settings), DEVICE, store.outbox, status_extra))
        made[-1].start()
        return made[-1]

    def subscriber(broker, **options) -> Subscriber:
        made.append(Subscriber(broker, **options))
        return made[-1]

    yield publisher, subscriber
    for client in reversed(made):
        client.stop(timeout=2) if isinstance(client, Publisher) else client.close()


def test_outbox_is_delivered_in_order_once_with_retained_online_status(mosquitto, store, clients):
    publisher, subscriber = clients
    watcher = subscriber(mosquitto)
    expected = queue_events(store.outbox, 30)  # queued before the broker is reachable
    pub = publisher(mosquitto, status_extra=lambda: {"bundle_version": "2024.05.1", "queue_depth": 7})
    assert wait_until(lambda: pub.connected, 5)
    expected += queue_events(store.outbox, 20, first=30)
    pub.kick()

    assert wait_until(lambda: len(watcher.event_ids()) >= 50, 10), f"got {len(watcher.event_ids())} of 50"
    assert watcher.event_ids() == expected
    for payload in watcher.payloads("event"):
        EVENT_SCHEMA.validate(payload)
    assert wait_until(lambda: len(store.outbox) == 0 and pub.inflight == 0, 5)
    status = retained_status(mosquitto)
    assert (status["state"], status["bundle_version"], status["health"]) == ("online", "2024.05.1", {"queue_depth": 7})


def test_rows_leave_the_outbox_only_after_their_puback(mosquitto, store, clients):
    publisher, subscriber = clients
    watcher = subscriber(mosquitto)
    pub = publisher(mosquitto, max_inflight=20)
    assert wait_until(lambda: announced(pub, watcher), 5)

    mosquitto.pause()  # the socket stays open; nothing is acknowledged
    try:
        expected = queue_events(store.outbox, 50)
        pub.kick()
        assert wait_until(lambda: pub.inflight == 20, 5), f"in flight: {pub.inflight}"
        time.sleep(0.3)
        assert (pub.inflight, len(store.outbox)) == (20, 50)
    finally:
        mosquitto.resume()

    assert wait_until(lambda: len(watcher.event_ids()) >= 50, 10)
    assert watcher.event_ids() == expected
    assert wait_until(lambda: len(store.outbox) == 0, 5)


def test_broker_outage_loses_nothing_and_duplicates_nothing(mosquitto_factory, store, clients):
    # Persistence keeps the subscriber's session across the restart, so what the publisher sends
    # before the subscriber has reconnected is queued for it rather than lost to the test.
    broker = mosquitto_factory(persistence=True)
    publisher, subscriber = clients
    watcher = subscriber(broker, client_id="outage-watcher", clean_session=False)
    pub = publisher(broker)
    assert wait_until(lambda: pub.connected, 5)

    count, stop_after = 100, 30
    interval = max(0.05, (OUTAGE_S + 1.0) / (count - stop_after))  # the outage falls mid-stream
    expected, stopped_at, queued_while_down = [], None, 0
    for n in range(count):
        expected += queue_events(store.outbox, 1, first=n)
        pub.kick()
        if n == stop_after:
            broker.stop()
            stopped_at = time.monotonic()
            assert wait_until(lambda: not pub.connected, 5)
        elif stopped_at and not broker.running:
            queued_while_down += 1
            if time.monotonic() - stopped_at >= OUTAGE_S:
                assert len(store.outbox) >= queued_while_down  # waiting, not lost or dropped
                broker.start()
        time.sleep(interval)
    if not broker.running:
        broker.start()

    assert queued_while_down > 0
    assert wait_until(lambda: len(set(watcher.event_ids())) >= count, 15), f"{len(set(watcher.event_ids()))}/{count}"
    assert wait_until(lambda: len(store.outbox) == 0 and pub.inflight == 0, 5)
    with watcher.lock:
        deliveries = [(p["id"], dup) for t, p, _, dup in watcher.received if t.endswith("/event")]
    first_seen = list(dict.fromkeys(msg_id for msg_id, _ in deliveries))
    assert first_seen == expected  # every id, in seq order
    # The broker may re-deliver to the subscriber what was in flight to it when it stopped (DUP
    # flag set): that is the subscriber's leg. A second publish by the publisher arrives without it.
    published = Counter(msg_id for msg_id, dup in deliveries if not dup)
    assert [msg_id for msg_id, n in published.items() if n > 1] == []
    assert pub.connected and retained_status(broker)["state"] == "online"


def test_messages_in_flight_at_a_broker_crash_are_resent_once_in_order(mosquitto_factory, store, clients):
    broker = mosquitto_factory(persistence=True)
    publisher, subscriber = clients
    watcher = subscriber(broker, client_id="crash-watcher", clean_session=False)
    pub = publisher(broker, max_inflight=20)
    assert wait_until(lambda: announced(pub, watcher), 5)

    broker.pause()
    expected = queue_events(store.outbox, 30)
    pub.kick()
    assert wait_until(lambda: pub.inflight == 20, 5)  # sent, never acknowledged
    broker.kill()
    assert wait_until(lambda: not pub.connected, 5)
    assert (pub.inflight, len(store.outbox)) == (0, 30)  # forgotten in flight, kept in the outbox
    broker.start()

    assert wait_until(lambda: len(watcher.event_ids()) >= 30, 10)
    time.sleep(0.3)  # room for a duplicate to show up
    assert watcher.event_ids() == expected
    assert wait_until(lambda: len(store.outbox) == 0, 5)


PUBLISHER_PROCESS = """
import sys, time
from edge.publish.mqtt import MqttConfig, Publisher
from edge.storage.store import Store
store = Store(sys.argv[1])
Publisher(MqttConfig(host=sys.argv[2], port=int(sys.argv[3])), sys.argv[4], store.outbox).start()
time.sleep(60)
"""


def test_last_will_marks_a_dead_device_offline(mosquitto, tmp_path, clients):
    _, subscriber = clients
    watcher = subscriber(mosquitto)
    args = [str(tmp_path / "lwt.db"), mosquitto.host, str(mosquitto.port), DEVICE]
    process = subprocess.Popen([sys.executable, "-c", PUBLISHER_PROCESS, *args], cwd=ROOT)
    try:
        assert wait_until(lambda: [p["state"] for p in watcher.payloads("status")] == ["online"], 20)
        process.send_signal(signal.SIGKILL)  # power cut: no DISCONNECT, the broker sends the will
        process.wait(5)
    finally:
        process.kill()
    assert wait_until(lambda: len(watcher.payloads("status")) == 2, 5)
    online, will = watcher.payloads("status")
    assert will["state"] == "offline" and will["id"] != online["id"]
    STATUS_SCHEMA.validate(will)
    assert retained_status(mosquitto)["id"] == will["id"]


def test_clean_stop_publishes_offline_once(mosquitto, store, clients, caplog):
    publisher, subscriber = clients
    watcher = subscriber(mosquitto)
    pub = publisher(mosquitto)
    assert wait_until(lambda: announced(pub, watcher), 5)
    with caplog.at_level(logging.DEBUG):
        pub.stop(timeout=3)
        time.sleep(0.2)
    assert not pub.connected
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR], "a clean stop logs no error"
    time.sleep(0.3)  # a will, wrongly sent after our own offline, would arrive by now
    assert [p["state"] for p in watcher.payloads("status")] == ["online", "offline"]
    assert retained_status(mosquitto)["state"] == "offline"


def test_stop_sends_what_is_pending_first(mosquitto, store, clients):
    publisher, subscriber = clients
    watcher = subscriber(mosquitto)
    pub = publisher(mosquitto)
    assert wait_until(lambda: pub.connected, 5)
    expected = queue_events(store.outbox, 40)  # no kick: stop itself must drain
    pub.stop(timeout=5)
    assert len(store.outbox) == 0
    assert wait_until(lambda: len(watcher.event_ids()) >= 40, 5)
    assert watcher.event_ids() == expected


def test_wrong_password_keeps_messages_and_the_publisher_alive(mosquitto_factory, store, clients, tmp_path, caplog):
    broker = mosquitto_factory(users={"cam": "correct-horse-battery"})
    publisher, subscriber = clients
    watcher = subscriber(broker, auth=("cam", "correct-horse-battery"))
    expected = queue_events(store.outbox, 5)
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("tr0ub4dor-wrong\n")
    caplog.set_level(logging.DEBUG)

    pub = publisher(broker, username="cam", password_file=wrong, reconnect_min_s=0.1, reconnect_max_s=0.2)
    assert wait_until(lambda: "refused the connection" in caplog.text, 5)
    assert wait_until(lambda: caplog.text.count("refused the connection") >= 2, 5), "it should keep retrying"
    assert not pub.connected and len(store.outbox) == 5 and watcher.event_ids() == []
    assert pub._worker.is_alive()
    pub.stop(timeout=2)
    assert "Sending CONNECT" in caplog.text  # paho's own log was captured too...
    assert "tr0ub4dor" not in caplog.text  # ...and neither it nor ours shows the password

    right = tmp_path / "right.secret"
    right.write_text("correct-horse-battery\n")
    publisher(broker, username="cam", password_file=right)  # the same outbox, now delivered
    assert wait_until(lambda: watcher.event_ids() == expected, 5)
    assert wait_until(lambda: len(store.outbox) == 0, 5)


@pytest.mark.parametrize(
    ("settings", "expectation"),
    [
        ({"host": "broker.lan"}, does_not_raise()),
        ({"host": "b", "username": "cam", "password": "x", "tls": {"ca": "/etc/ca.pem"}}, does_not_raise()),
        ({"host": "b", "hostname": "c"}, pytest.raises(ValidationError, match="Extra inputs")),
        ({"host": "b", "port": 0}, pytest.raises(ValidationError, match="port")),
        ({"host": "b", "prefix": "trap/+"}, pytest.raises(ValidationError, match="wildcards")),
        ({"host": "b", "password": "x"}, pytest.raises(ValidationError, match="needs a username")),
        ({"host": "b", "username": "u", "password": "x", "password_file": "/p"},
         pytest.raises(ValidationError, match="not both")),
        ({"host": "b", "tls": {"ca": "/ca", "cert": "/c"}}, pytest.raises(ValidationError, match="go together")),
        ({"host": "b", "reconnect_min_s": 5, "reconnect_max_s": 1}, pytest.raises(ValidationError, match="at least")),
    ],
)
def test_config(settings, expectation):
    with expectation:
        config = MqttConfig(**settings)
        assert config.tls.enabled == ("tls" in settings)


def test_password_file_is_read_and_never_shown(tmp_path):
    secret = tmp_path / "mqtt.secret"
    secret.write_text("s3cr3t pass\n")
    config = MqttConfig(host="b", username="cam", password_file=secret)
    assert config.secret() == "s3cr3t pass"
    assert "s3cr3t" not in repr(config) + config.model_dump_json()
    inline = MqttConfig(host="b", username="cam", password="s3cr3t")
    assert inline.secret() == "s3cr3t" and "s3cr3t" not in repr(inline) + inline.model_dump_json()
    with pytest.raises(ValueError, match="password_file") as err:
        MqttConfig(host="b", username="cam", password_file=tmp_path / "missing").secret()
    assert "s3cr3t" not in str(err.value)


def test_forgetting_pahos_copy_of_unacknowledged_publishes(store):
    """The one paho internal the publisher reads (paho-mqtt is pinned below 3 for it): after a drop,
    paho's own queue of unacknowledged QoS 1 publishes is emptied, so only the outbox re-sends."""
    publisher = Publisher(MqttConfig(enabled=False), DEVICE, store.outbox)
    client = publisher._client
    info = client.publish(f"{PREFIX}/{DEVICE}/event", b"{}", qos=1)  # not connected: paho keeps it to re-send
    assert info.rc == mqtt.MQTT_ERR_NO_CONN and len(client._out_messages) == 1
    Publisher._forget_unacknowledged(client)
    assert len(client._out_messages) == 0


def test_outbox_refuses_what_is_not_json_and_queues_nothing(store):
    bad = EventMessage(device=DEVICE, site=None, event=Event("e", "sd", datetime(2024, 5, 1, tzinfo=timezone.utc),
                       datetime(2024, 5, 1, tzinfo=timezone.utc), 1, "fox", float("nan")), alerted=False)
    with pytest.raises(ValueError, match="JSON compliant"):
        store.outbox.add(topic(PREFIX, DEVICE, "event"), bad)
    assert len(store.outbox) == 0

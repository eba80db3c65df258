"""The outbox drained to an MQTT broker: a row leaves the outbox only after its PUBACK.

Threads and locks. paho's network thread runs the callbacks; one worker thread makes every
outbox publish, so ``kick()`` only wakes it and never blocks the pipeline. paho calls
``on_publish`` while holding its own message lock, so that callback takes none of ours: it
queues the acknowledgement and the worker (or ``on_disconnect``) settles it under
``self._lock``. The order of locks is always ``self._lock`` → paho's locks and
``self._lock`` → the store's lock, never the other way round.

Order and duplicates. Messages go out in ``seq`` order, at most ``max_inflight`` unacknowledged.
On a disconnect the in-flight ones are forgotten (they stay in the outbox) and the next
connection re-sends from the oldest pending row, so nothing is lost and order is kept; a
message is never published twice on one connection. A re-send after a lost PUBACK can
duplicate a message, which consumers recognise by its ``id``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.logs import quiet_after_disconnect
from common.wire import COMPACT_KINDS, check_device, check_prefix, compact_topic, topic
from edge.storage.outbox import Outbox, OutboxMessage
from edge.wire.compact import CompactCodec
from edge.wire.messages import StatusMessage

log = logging.getLogger(__name__)




class MqttTls(BaseModel):
    """TLS towards the broker; on when ``ca`` is set."""

    model_config = ConfigDict(extra="forbid")
    ca: Path | None = Field(None, title="CA certificate (PEM) that signed the broker's certificate")
    cert: Path | None = Field(None, title="Client certificate (PEM), for brokers that require one")
    key: Path | None = Field(None, title="Client private key (PEM), with cert")
    insecure: bool = Field(False, title="Skip the broker host name check (testing only)")

    @model_validator(mode="after")
    def _complete(self) -> MqttTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together")
        if self.cert is not None and self.ca is None:
            raise ValueError("tls.cert needs tls.ca")
        return self

    @property
    def enabled(self) -> bool:
        return self.ca is not None


class MqttEncoding(BaseModel):
    """How each kind goes out: JSON on ``<prefix>/<device>/<kind>`` or a compact binary record
    (``common/compact.py``: an alert 27 bytes, an embedding 222) on ``<prefix>/<device>/c/<kind>``.
    Status and event messages are JSON only."""

    model_config = ConfigDict(extra="forbid")
    alert: Literal["json", "compact"] = Field("json", title="Alerts: JSON with thumbnail, or 27-byte compact records")
    embedding: Literal["json", "compact"] = Field(
        "json", title="Embeddings: JSON with the full vector, or 222-byte compact records (needs the bundle's projection)")

    def compact_kinds(self) -> frozenset[str]:
        """The kinds sent compact."""
        return frozenset(kind for kind in COMPACT_KINDS if getattr(self, kind) == "compact")


class MqttConfig(BaseModel):
    """Where and how the appliance publishes."""

    # hide_input_in_errors: a model-level error would otherwise print the input dict, password included
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    enabled: bool = Field(True, title="Publish to the broker (messages wait in the outbox when off)")
    host: str = Field("localhost", min_length=1, title="Broker host name or address")
    port: int = Field(1883, ge=1, le=65535, title="Broker port")
    prefix: str = Field("trapedge", title="Topic prefix: <prefix>/<device>/<kind>")
    username: str | None = Field(None, title="User name")
    password: SecretStr | None = Field(None, title="Password (prefer password_file)")
    password_file: Path | None = Field(None, title="File whose content (one line) is the password")
    tls: MqttTls = Field(default_factory=MqttTls, title="TLS")
    keepalive: int = Field(30, ge=5, le=65535, title="Keepalive interval in seconds")
    client_id: str | None = Field(None, min_length=1, title="MQTT client id (default trapedge-<device>)")
    max_inflight: int = Field(20, ge=1, le=65535, title="Most publishes awaiting a PUBACK at once")
    reconnect_min_s: float = Field(1.0, gt=0, title="First reconnect delay in seconds, doubled per failure")
    reconnect_max_s: float = Field(60.0, gt=0, title="Longest reconnect delay in seconds")
    encoding: MqttEncoding = Field(default_factory=MqttEncoding, title="JSON or compact records, per kind")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set one of password and password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    def secret(self) -> str | None:
        """The password, read from ``password_file`` when set (trailing newline dropped)."""
        if self.password_file is None:
            return self.password.get_secret_value() if self.password is not None else None
        try:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise ValueError(f"mqtt.password_file {self.password_file}: {err.strerror}") from None


class Publisher:
    """Publishes the outbox to the broker and keeps the retained device status.

    Args:
        config: broker settings.
        device_id: this appliance's id, one topic level.
        outbox: the store's outbox; rows are deleted here once acknowledged.
        status_extra: returns health figures for each ``online`` status; its
            ``bundle_version`` key, if any, becomes the status's ``bundle_version``.
        compact: the bundle's compact encoder, needed when ``config.encoding`` sends a kind compact.
    """

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        outbox: Outbox,
        status_extra: Callable[[], dict] | None = None,
        compact: CompactCodec | None = None,
    ):
        self.config, self.device, self.outbox = config, check_device(device_id), outbox
        self.status_extra = status_extra
        self.compact_kinds = config.encoding.compact_kinds()
        if self.compact_kinds and compact is None:
            raise ValueError(f"mqtt.encoding sends {', '.join(sorted(self.compact_kinds))} compact: that needs the "
                             "bundle's compact encoder")
        self.compact = compact
        self.status_topic = topic(config.prefix, device_id, "status")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._inflight: dict[int, int | None] = {}  # paho mid -> outbox seq (None: a status message)
        self._sent_upto = 0  # highest seq published on this connection
        self._session = 0  # counts connections; an ack belongs to the one it arrived on
        self._connected = self._announce = self._closing = False
        self._worker: threading.Thread | None = None
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def inflight(self) -> int:
        """Publishes awaiting their PUBACK."""
        return len(self._inflight)

    def start(self) -> None:
        """Connect in the background; paho reconnects with backoff for as long as we run."""
        if not self.config.enabled:
            log.info("mqtt is disabled: messages stay in the outbox")
            return
        self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._worker.start()
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self._client.loop_start()

    def kick(self) -> None:
        """New rows are in the outbox: send them if connected (any thread, never blocks)."""
        self._wake.set()

    def publish_status(self) -> None:
        """Refresh the retained ``online`` status (with fresh health figures) when connected."""
        self._announce = True
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is pending while connected, publish the retained ``offline`` status and
        disconnect cleanly, all within ``timeout`` seconds; the rest stays in the outbox."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        self._wait_for(self._drained, deadline)
        with self._lock:
            self._closing = True
        self._wait_for(lambda: not self._inflight, deadline)
        self._say_offline(deadline)
        self._client.disconnect()
        self._client.loop_stop()
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            self._settle_acks()

    # -- the worker thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                with self._lock:
                    self._settle_acks()
                    self._send_online()
                    self._fill_window()
            except Exception:  # the worker must outlive any one bad row or callback
                log.exception("mqtt outbox worker")
                time.sleep(1.0)

    def _settle_acks(self) -> None:
        """Delete the rows whose PUBACK arrived on the current connection (under the lock)."""
        while True:
            try:
                session, mid = self._acks.get_nowait()
            except queue.Empty:
                break
            if session == self._session and mid in self._inflight:
                seq = self._inflight.pop(mid)
                if seq is not None:
                    self.outbox.acknowledge(seq)
        self._changed.notify_all()

    def _drained(self) -> bool:
        """Nothing left to do on this connection (under the lock)."""
        return not self._connected or (not self._inflight and not self.outbox.pending(1, self._sent_upto))

    def _send_online(self) -> None:
        if self._announce and self._connected and not self._closing:
            self._announce = False
            self._publish_status(self._status("online"))

    def _fill_window(self) -> None:
        """Publish pending rows after the last one sent, up to ``max_inflight`` unacknowledged."""
        room = self.config.max_inflight - len(self._inflight)
        if not self._connected or self._closing or room <= 0:
            return
        for row in self.outbox.pending(limit=room, after=self._sent_upto):
            try:
                info = self._client.publish(*self._wire(row), qos=row.qos, retain=row.retain)
            except ValueError as err:  # an unpublishable row stays in the outbox, loudly
                log.error("outbox message %s (seq %d) cannot be published: %s", row.msg_id, row.seq, err)
                self._sent_upto = row.seq
                continue
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection is going; on_disconnect follows
            self._inflight[info.mid] = row.seq
            self._sent_upto = row.seq

    def _wire(self, row: OutboxMessage) -> tuple[str, bytes]:
        """The topic and payload a row goes out as: its JSON, or its compact record when ``mqtt.encoding``
        asks for one (a message without a compact form goes as JSON, with an error in the log)."""
        kind = row.topic.rsplit("/", 1)[-1]
        if kind not in self.compact_kinds or self.compact is None:
            return row.topic, row.payload
        try:
            return compact_topic(self.config.prefix, self.device, kind), self.compact.encode(kind, row.payload)
        except ValueError as err:
            log.error("outbox message %s (seq %d) has no compact form (%s): sent as JSON on %s", row.msg_id, row.seq,
                      err, row.topic)
            return row.topic, row.payload

    # -- paho callbacks (paho's network thread)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # A fresh will for each connection, so that its id is new each time it may be sent.
        client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason)
            return
        with self._lock:
            self._session += 1
            self._connected, self._announce, self._sent_upto = True, True, 0
        log.info("connected to %s:%d; %d messages pending", self.config.host, self.config.port, len(self.outbox))
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.debug("cannot reach broker %s:%d; retrying", self.config.host, self.config.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        with self._lock:
            self._settle_acks()  # acks that arrived before the connection dropped still count
            was_connected, self._connected = self._connected, False
            self._inflight.clear()
            self._forget_unacknowledged(client)
            self._changed.notify_all()
        if was_connected and not self._closing:
            log.warning("disconnected from the broker (%s); %d messages wait in the outbox", reason, len(self.outbox))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        self._acks.put((self._session, mid))
        self._wake.set()

    # -- helpers

    def _make_client(self) -> mqtt.Client:
        config = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"trapedge-{self.device}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.secret())
        if config.tls.enabled:
            tls = config.tls
            client.tls_set(
                ca_certs=str(tls.ca),
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
            )
            client.tls_insecure_set(tls.insecure)
        client.enable_logger(log.getChild("paho"))  # paho logs flags, never the password
        log.getChild("paho").addFilter(quiet_after_disconnect)
        client.suppress_exceptions = True  # a failing callback is logged; paho's thread goes on
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]  # paho takes float seconds; its stub says int
        client.max_inflight_messages_set(0)  # our window is the limit; paho must never queue behind it
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    @staticmethod
    def _forget_unacknowledged(client: mqtt.Client) -> None:
        # paho keeps unacknowledged QoS>0 publishes and re-sends them after the next CONNACK,
        # behind our re-drain of the same rows: duplicates, out of order. The outbox is the
        # only queue, so drop paho's copy. (paho 2.x has no public call for this.)
        with client._out_message_mutex:
            client._out_messages.clear()

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        """A status message; ``online`` carries ``status_extra``'s figures, if it works."""
        if state == "online" and self.status_extra is not None:
            try:
                health = dict(self.status_extra())
                version = health.pop("bundle_version", None)
                version = None if version is None else str(version)
                return StatusMessage(device=self.device, state=state, bundle_version=version, health=health).encode()
            except Exception:
                log.exception("status_extra failed; status sent without it")
        return StatusMessage(device=self.device, state=state).encode()

    def _publish_status(self, body: bytes) -> int | None:
        """Publish a retained status (under the lock); returns its mid, None if not sent."""
        info = self._client.publish(self.status_topic, body, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self._inflight[info.mid] = None
        return info.mid

    def _say_offline(self, deadline: float) -> None:
        with self._lock:
            mid = self._publish_status(self._status("offline")) if self._connected else None
        if mid is None:
            log.info("not connected at stop: the broker has (or will send) the last will instead")
            return
        if not self._wait_for(lambda: mid not in self._inflight, deadline):
            log.warning("no PUBACK for the offline status before the stop timeout")

    def _wait_for(self, done: Callable[[], bool], deadline: float) -> bool:
        with self._changed:
            return self._changed.wait_for(done, max(0.0, deadline - time.monotonic()))

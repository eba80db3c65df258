"""The MQTT side: subscribe to every device's messages and hand each payload to a callback.

A persistent session (fixed client id, ``clean_session=False``) with QoS 1: the broker keeps
messages while the service is down. paho acknowledges a message when ``on_message`` returns, so
the callback stores it before returning; nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from central.config import BrokerConfig
from common.logs import quiet_after_disconnect
from common.wire import COMPACT_KINDS, COMPACT_LEVEL, KINDS

log = logging.getLogger(__name__)


def subscriptions(prefix: str) -> list[tuple[str, int]]:
    """``<prefix>/+/<kind>`` for every kind and ``<prefix>/+/c/<kind>`` for the compact ones, at QoS 1."""
    return [(f"{prefix}/+/{kind}", 1) for kind in KINDS] + [(f"{prefix}/+/{COMPACT_LEVEL}/{kind}", 1)
                                                             for kind in COMPACT_KINDS]


class Subscriber:
    """Receives ``(topic, payload bytes)`` on paho's network thread and passes them to ``handle``."""

    def __init__(self, config: BrokerConfig, handle: Callable[[str, bytes], None]):
        self.config, self.handle = config, handle
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                  clean_session=config.clean_session, protocol=mqtt.MQTTv311)
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            self.client.username_pw_set(config.username, password)
        self.client.enable_logger(log.getChild("paho"))
        log.getChild("paho").addFilter(quiet_after_disconnect)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background; paho reconnects for as long as we run."""
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason)
            return
        client.subscribe(subscriptions(self.config.prefix))
        log.info("subscribed to %s/+/{%s} and %s/+/%s/{%s}", self.config.prefix, ",".join(KINDS), self.config.prefix,
                 COMPACT_LEVEL, ",".join(COMPACT_KINDS))

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        try:
            self.handle(message.topic, bytes(message.payload))
        except Exception:  # a store failure must not kill paho's thread; the message is logged
            log.exception("could not handle a message on %s", message.topic)

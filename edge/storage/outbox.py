"""The store-and-forward queue: messages wait in SQLite until the broker acknowledges them."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from common.sqlite import utc_now
from edge.wire.messages import Message


@dataclass(frozen=True)
class OutboxMessage:
    """One message waiting for its PUBACK."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """The store-and-forward queue: rows leave only when the broker acknowledged them."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock):
        self.conn, self.lock = conn, lock

    def add(self, topic: str, message: Message, qos: int = 1, retain: bool = False) -> str:
        """Queue one message (inside the caller's transaction, if any); returns its id.

        Raises:
            ValueError: the message cannot be encoded (NaN or infinity in it): nothing is queued.
        """
        body = message.encode()
        with self.lock:
            self.conn.execute(
                "INSERT INTO outbox (msg_id, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)",
                (message.id, topic, body, qos, int(retain), utc_now()),
            )
        return message.id

    def pending(self, limit: int = 100, after: int = 0) -> list[OutboxMessage]:
        """The oldest unacknowledged messages, in the order they were queued."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT seq, msg_id, topic, payload, qos, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [OutboxMessage(s, m, t, bytes(p), q, bool(r)) for s, m, t, p, q, r in rows]

    def acknowledge(self, seq: int) -> None:
        """Delete a message the broker has acknowledged (PUBACK)."""
        with self.lock:
            self.conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

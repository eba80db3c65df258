"""The central SQLite database: messages, rejections, sightings, review decisions.

Same habits as ``edge.storage.store``: WAL, a schema versioned by ``PRAGMA user_version`` and applied by
ordered migrations, one connection shared under a lock. A message is stored once per device and ``id``:
a redelivered QoS-1 message is recognised and ignored, another device's message with the same id is not.
A sighting no gallery can take (a vector too wide, cut short, not finite) is quarantined: kept, with
the reason, but out of the galleries, the review queue and the exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from central.ingest import Message, Rejected, Sighting
from common.sqlite import apply_migrations, connect, store_path_problem, utc_now

MIGRATIONS: list[str] = [
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, device TEXT NOT NULL, topic TEXT NOT NULL,
        payload TEXT NOT NULL, received_at TEXT NOT NULL
    );
    CREATE INDEX messages_kind ON messages (kind, device);
    CREATE TABLE rejected (
        seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, message_id TEXT, reason TEXT NOT NULL,
        payload BLOB NOT NULL, received_at TEXT NOT NULL
    );
    CREATE TABLE sightings (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, device TEXT NOT NULL,
        event_id TEXT NOT NULL, frame_time TEXT NOT NULL, label TEXT, model TEXT NOT NULL,
        dim INTEGER NOT NULL, vector BLOB NOT NULL, crop BLOB, edge BLOB, name TEXT, individual TEXT,
        meta TEXT NOT NULL DEFAULT '{}', received_at TEXT NOT NULL, reviewed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sightings_queue ON sightings (reviewed, seq);
    CREATE TABLE proposals (
        anchor_id TEXT NOT NULL, rank INTEGER NOT NULL, candidate_id TEXT NOT NULL, individual TEXT NOT NULL,
        cosine REAL NOT NULL, confidence REAL NOT NULL, inliers INTEGER, PRIMARY KEY (anchor_id, rank)
    );
    CREATE TABLE decisions (
        seq INTEGER PRIMARY KEY, anchor_id TEXT NOT NULL, candidate_id TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('match', 'no_match')), cosine REAL, at TEXT NOT NULL,
        UNIQUE (anchor_id, candidate_id)
    );
    """,
    # 2: proposals are computed when the review page asks (against the gallery as it is then);
    # the copy stored at ingest was never read
    """
    DROP TABLE proposals;
    """,
    # 3: message ids are unique per device (another device's message with the same id was dropped);
    # sightings no gallery can take are quarantined with the reason instead of stopping start-up
    """
    CREATE TABLE messages_by_device (
        id TEXT NOT NULL, kind TEXT NOT NULL, device TEXT NOT NULL, topic TEXT NOT NULL,
        payload TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (device, id)
    );
    INSERT INTO messages_by_device (id, kind, device, topic, payload, received_at)
        SELECT id, kind, device, topic, payload, received_at FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_by_device RENAME TO messages;
    CREATE INDEX messages_kind ON messages (kind, device);
    ALTER TABLE sightings ADD COLUMN quarantined TEXT;
    """,
    # 4: the review's history, so that a verdict, a skip or "done" can be undone; a skipped anchor
    # moves behind the queue (queue_rank) instead of leaving it
    """
    ALTER TABLE sightings ADD COLUMN queue_rank INTEGER;
    CREATE TABLE review_log (
        seq INTEGER PRIMARY KEY, action TEXT NOT NULL CHECK (action IN ('match', 'no_match', 'done', 'skip')),
        anchor_id TEXT NOT NULL, candidate_id TEXT, before TEXT NOT NULL, at TEXT NOT NULL, undone_at TEXT
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
SIGHTING_COLUMNS = "id, device, event_id, frame_time, label, model, vector, crop, name, edge, individual, meta"
USABLE = "quarantined IS NULL"
LOG_COLUMNS = "seq, action, anchor_id, candidate_id, at, undone_at"
QUEUE_KEY = "coalesce(queue_rank, seq)"  # arrival order, except that a skipped anchor goes to the back
SIGHTING_IDS = uuid.UUID("0b8f4f6e-3c57-4c1e-a2f4-6d9a5e1c7b20")  # for a message id another device's sighting holds


@dataclass(frozen=True)
class Decision:
    """A researcher's verdict on one pair of images."""

    anchor_id: str
    candidate_id: str
    verdict: str  # "match" or "no_match"
    cosine: float | None
    at: str


@dataclass(frozen=True)
class ImageInfo:
    """What the review pages list about an image, without its vector or pictures."""

    id: str
    device: str
    frame_time: str
    name: str | None
    label: str | None
    individual: str | None  # known identity of an enrolled image
    has_crop: bool
    has_edge: bool


@dataclass(frozen=True)
class ReviewAction:
    """One step of the review, as undo sees it: ``action`` is a verdict, ``done`` or ``skip``."""

    seq: int
    action: str
    anchor_id: str
    candidate_id: str | None
    at: str
    undone_at: str | None


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database's ``user_version``."""
    return apply_migrations(conn, MIGRATIONS, "central store")


class StoreError(RuntimeError):
    """The central store cannot be opened; the message is one line that says what to do."""


def store_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the central store (read only: nothing is created or migrated), or ``None``."""
    problem = store_path_problem(path, MIGRATIONS, "central store")
    return f"store.path: {problem}" if problem else None


class CentralStore:
    """All central state, behind one lock (the MQTT thread and the web server share it).

    Raises:
        StoreError: ``path`` is a folder, another program's file, an edge store, a store of a newer trapedge,
            or cannot be opened (each said in one line; an edge store passed the check and stopped the
            service at its first query).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if problem := store_path_problem(self.path):  # a folder, another program's file: before SQLite's words
            raise StoreError(f"store.path: {problem}")
        try:
            self.conn = connect(self.path)
            migrate(self.conn)  # refuses an edge store or a newer one before changing anything
        except sqlite3.Error as exc:
            raise StoreError(f"store.path: {self.path}: {exc}") from None
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # --- ingest -------------------------------------------------------------------------------
    def add_message(self, message: Message, sighting: Sighting | None = None) -> bool:
        """Store a valid message (and its sighting); False when its device already sent its ``id``.

        Give the sighting through ``claim_id`` first: its id must be free.
        """
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self.conn.execute(
                    "INSERT OR IGNORE INTO messages (id, kind, device, topic, payload, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (message.id, message.kind, message.device, message.topic, _slim(message.payload), utc_now()))
                new = cursor.rowcount == 1
                if new and sighting is not None:
                    self._insert_sighting(sighting)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return new

    def claim_id(self, sighting: Sighting) -> Sighting:
        """The sighting under an id no other device's sighting holds: its message id, else
        ``uuid5(device/message id)`` (the message id in ``meta["message_id"]``)."""
        with self.lock:
            row = self.conn.execute("SELECT device FROM sightings WHERE id = ?", (sighting.id,)).fetchone()
        if row is None or row[0] == sighting.device:
            return sighting
        return dataclasses.replace(sighting, id=str(uuid.uuid5(SIGHTING_IDS, f"{sighting.device}/{sighting.id}")),
                                   meta={**sighting.meta, "message_id": sighting.id})

    def add_sighting(self, sighting: Sighting) -> bool:
        """Store an enrolled image's sighting; False when its id is already stored."""
        with self.lock:
            return self._insert_sighting(sighting)

    def _insert_sighting(self, s: Sighting) -> bool:
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO sightings (id, device, event_id, frame_time, label, model, dim, vector, crop, "
            "edge, name, individual, meta, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (s.id, s.device, s.event_id, s.frame_time, s.label, s.model, int(s.vector.size),
             s.vector.astype(np.float32).tobytes(), s.crop_jpeg, s.edge_jpeg, s.name, s.individual,
             json.dumps(s.meta), utc_now()))
        return cursor.rowcount == 1

    def add_rejected(self, rejected: Rejected) -> None:
        """Log a payload that was refused, with its reason (first 4 KiB of it kept, and of its topic 1 KiB)."""
        message_id = rejected.message_id[:100] if rejected.message_id is not None else None
        with self.lock:
            self.conn.execute(
                "INSERT INTO rejected (topic, message_id, reason, payload, received_at) VALUES (?, ?, ?, ?, ?)",
                (rejected.topic[:1024], message_id, rejected.reason[:1024], rejected.raw[:4096], utc_now()))

    # --- quarantine ---------------------------------------------------------------------------
    def quarantine_unusable(self, max_dim: int) -> list[tuple[str, str]]:
        """Quarantine every sighting whose stored vector no gallery can take; (id, reason) of each.

        Checked without reading the vectors: a dimension outside 1..``max_dim``, or a vector blob
        that is not ``dim`` float32 numbers. Vectors that are not finite are caught as galleries load.
        """
        with self.lock:
            rows = self.conn.execute(
                f"SELECT id, dim, typeof(dim), typeof(vector), length(vector) FROM sightings WHERE {USABLE} AND "
                "(typeof(dim) != 'integer' OR typeof(vector) != 'blob' OR dim < 1 OR dim > ? OR length(vector) != 4 * dim)",
                (max_dim,)).fetchall()
        found = [(row[0], _unusable(*row[1:], max_dim)) for row in rows]
        for sid, reason in found:
            self.quarantine([sid], reason)
        return found

    def quarantine(self, ids: list[str], reason: str) -> None:
        """Take sightings out of the galleries, the queue and the exports, keeping them and the reason."""
        with self.lock:
            self.conn.executemany("UPDATE sightings SET quarantined = ? WHERE id = ?", [(reason, i) for i in ids])

    # --- reads --------------------------------------------------------------------------------
    def count(self, table: str, where: str = "1") -> int:
        """Rows of one table (tests and the status line)."""
        with self.lock:
            return self.conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]

    def latest_status(self) -> dict[str, tuple[str, dict]]:
        """Per device, its latest ``online`` status message by the time the device wrote it (a status delivered
        late from its outbox is not the latest): (received at, payload). A payload stored before ingest
        refused NaN is skipped (``json_extract`` fails on it for every device)."""
        with self.lock:
            rows = self.conn.execute(
                "SELECT device, received_at, payload FROM messages WHERE rowid IN (SELECT (SELECT rowid FROM "
                "messages m WHERE m.kind = 'status' AND m.device = d.device AND json_valid(m.payload) AND "
                "json_extract(m.payload, '$.state') = 'online' ORDER BY julianday(json_extract(m.payload, '$.time')) "
                "DESC, m.received_at DESC, m.rowid DESC LIMIT 1) FROM (SELECT DISTINCT device FROM "
                "messages WHERE kind = 'status') d) ORDER BY device").fetchall()
        return {device: (at, json.loads(payload)) for device, at, payload in rows}

    def rejections(self) -> list[tuple[str, str | None, str]]:
        """(topic, message id, reason) of every rejected payload, oldest first."""
        with self.lock:
            return self.conn.execute("SELECT topic, message_id, reason FROM rejected ORDER BY seq").fetchall()

    def sighting(self, sighting_id: str) -> Sighting | None:
        """One stored sighting, with its crop and edge map."""
        with self.lock:
            row = self.conn.execute(f"SELECT {SIGHTING_COLUMNS} FROM sightings WHERE id = ? AND {USABLE}",
                                    (sighting_id,)).fetchone()
        return None if row is None else _sighting(row)

    def sightings(self) -> list[Sighting]:
        """Every sighting not quarantined, in arrival order (images included)."""
        with self.lock:
            rows = self.conn.execute(f"SELECT {SIGHTING_COLUMNS} FROM sightings WHERE {USABLE} ORDER BY seq").fetchall()
        return [_sighting(row) for row in rows]

    def image_index(self) -> list[ImageInfo]:
        """Every sighting not quarantined, in arrival order, without vectors or pictures (fast to list)."""
        with self.lock:
            rows = self.conn.execute(f"SELECT id, device, frame_time, name, label, individual, crop IS NOT NULL, "
                                     f"edge IS NOT NULL FROM sightings WHERE {USABLE} ORDER BY seq").fetchall()
        return [ImageInfo(*row[:6], bool(row[6]), bool(row[7])) for row in rows]

    def vectors(self, model: str, dim: int) -> tuple[list[str], np.ndarray]:
        """Ids and (N, dim) float32 vectors of one embedding space's sightings, in arrival order."""
        with self.lock:
            rows = self.conn.execute(f"SELECT id, vector FROM sightings WHERE model = ? AND dim = ? AND {USABLE} "
                                     "ORDER BY seq", (model, dim)).fetchall()
        if not rows:
            return [], np.zeros((0, dim), np.float32)
        return [r[0] for r in rows], np.stack([np.frombuffer(r[1], np.float32) for r in rows])

    def embedding_spaces(self) -> list[tuple[str, int]]:
        """Each (model, dimension) stored: vectors meet only their own space's."""
        with self.lock:
            return self.conn.execute(
                f"SELECT DISTINCT model, dim FROM sightings WHERE {USABLE} ORDER BY model, dim").fetchall()

    def device_spaces(self) -> dict[str, set[tuple[str, int]]]:
        """The (model, dimension) pairs each device has sent."""
        spaces: dict[str, set[tuple[str, int]]] = {}
        with self.lock:
            for device, model, dim in self.conn.execute(f"SELECT DISTINCT device, model, dim FROM sightings WHERE {USABLE}"):
                spaces.setdefault(device, set()).add((model, dim))
        return spaces

    # --- review -------------------------------------------------------------------------------
    def decide(self, anchor_id: str, candidate_id: str, verdict: str, cosine: float | None = None) -> None:
        """Record (or change) the verdict on a pair of images."""
        with self.lock:
            self.conn.execute(
                "INSERT INTO decisions (anchor_id, candidate_id, verdict, cosine, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (anchor_id, candidate_id) DO UPDATE SET verdict = excluded.verdict, at = excluded.at",
                (anchor_id, candidate_id, verdict, cosine, utc_now()))

    def decisions(self) -> list[Decision]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT anchor_id, candidate_id, verdict, cosine, at FROM decisions ORDER BY seq").fetchall()
        return [Decision(*row) for row in rows]

    def mark_reviewed(self, anchor_id: str) -> None:
        """The researcher is done with this anchor; the queue moves on."""
        with self.lock:
            self.conn.execute("UPDATE sightings SET reviewed = 1 WHERE id = ?", (anchor_id,))

    def queue(self, limit: int = 50) -> list[str]:
        """Anchors still to review, oldest first (skipped ones last): the first is where the researcher resumes."""
        with self.lock:
            rows = self.conn.execute(f"SELECT id FROM sightings WHERE reviewed = 0 AND {USABLE} "
                                     f"ORDER BY {QUEUE_KEY}, seq LIMIT ?", (limit,)).fetchall()
        return [r[0] for r in rows]

    def queue_neighbour(self, anchor_id: str, step: int) -> str | None:
        """The anchor after (``step`` 1) or before (-1) ``anchor_id`` in the queue, wrapping around; paging
        changes nothing. None when the queue is empty; the first in the queue when ``anchor_id`` is unknown."""
        order = "ASC" if step > 0 else "DESC"
        with self.lock:
            key = self.conn.execute(f"SELECT {QUEUE_KEY}, seq FROM sightings WHERE id = ?", (anchor_id,)).fetchone()
            row = None
            if key is not None:
                row = self.conn.execute(
                    f"SELECT id FROM sightings WHERE reviewed = 0 AND {USABLE} AND ({QUEUE_KEY}, seq) "
                    f"{'>' if step > 0 else '<'} (?, ?) ORDER BY {QUEUE_KEY} {order}, seq {order} LIMIT 1", key).fetchone()
            row = row or self.conn.execute(f"SELECT id FROM sightings WHERE reviewed = 0 AND {USABLE} "
                                           f"ORDER BY {QUEUE_KEY} {order}, seq {order} LIMIT 1").fetchone()
        return None if row is None else row[0]

    def queue_position(self, anchor_id: str) -> int | None:
        """1-based place of an anchor in the queue; None when it is not waiting."""
        with self.lock:
            row = self.conn.execute(f"SELECT {QUEUE_KEY}, seq, reviewed FROM sightings WHERE id = ? AND {USABLE}",
                                    (anchor_id,)).fetchone()
            if row is None or row[2]:
                return None
            return 1 + self.conn.execute(f"SELECT count(*) FROM sightings WHERE reviewed = 0 AND {USABLE} AND "
                                         f"({QUEUE_KEY}, seq) < (?, ?)", row[:2]).fetchone()[0]

    # --- the review's history: every step can be undone -----------------------------------------
    def record_verdict(self, anchor_id: str, candidate_id: str, verdict: str, cosine: float | None,
                       done: bool) -> None:
        """Record (or change) a verdict as a review step; ``done`` also takes the anchor out of the queue."""
        with self._step(verdict, anchor_id, candidate_id):
            self.decide(anchor_id, candidate_id, verdict, cosine)
            if done:
                self.mark_reviewed(anchor_id)

    def finish(self, anchor_id: str) -> None:
        """The researcher is done with the anchor without a match (a new individual): out of the queue."""
        with self._step("done", anchor_id, None):
            self.mark_reviewed(anchor_id)

    def skip(self, anchor_id: str) -> None:
        """Move the anchor to the back of the queue; it stays to be reviewed."""
        with self._step("skip", anchor_id, None):
            self.conn.execute(f"UPDATE sightings SET queue_rank = (SELECT max({QUEUE_KEY}) + 1 FROM sightings) "
                              "WHERE id = ?", (anchor_id,))

    def undo(self) -> ReviewAction | None:
        """Revert the latest step not yet undone (verdict, queue place and reviewed flag as before it);
        the step stays in the history, marked undone. None when there is nothing to undo."""
        with self.lock, self._transaction():
            row = self.conn.execute(f"SELECT {LOG_COLUMNS}, before FROM review_log WHERE undone_at IS NULL "
                                    "ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None:
                return None
            step, before = ReviewAction(*row[:-1]), json.loads(row[-1])
            self.conn.execute("UPDATE sightings SET reviewed = ?, queue_rank = ? WHERE id = ?",
                              (before["reviewed"], before["queue_rank"], step.anchor_id))
            if step.candidate_id is not None:
                self._restore_decision(step.anchor_id, step.candidate_id, before["decision"])
            now = utc_now()
            self.conn.execute("UPDATE review_log SET undone_at = ? WHERE seq = ?", (now, step.seq))
        return dataclasses.replace(step, undone_at=now)

    def declared_new(self) -> set[str]:
        """Images the researcher declared a new individual ("done" with no match; not undone)."""
        with self.lock:
            rows = self.conn.execute("SELECT DISTINCT anchor_id FROM review_log WHERE action = 'done' "
                                     "AND undone_at IS NULL").fetchall()
        return {row[0] for row in rows}

    def history(self, limit: int = 100) -> list[ReviewAction]:
        """The latest review steps, newest first (undone ones included, marked)."""
        with self.lock:
            rows = self.conn.execute(f"SELECT {LOG_COLUMNS} FROM review_log ORDER BY seq DESC LIMIT ?",
                                     (limit,)).fetchall()
        return [ReviewAction(*row) for row in rows]

    @contextlib.contextmanager
    def _step(self, action: str, anchor_id: str, candidate_id: str | None):
        """One review step in one transaction, logged with what undo must restore."""
        with self.lock, self._transaction():
            state = self.conn.execute("SELECT reviewed, queue_rank FROM sightings WHERE id = ?", (anchor_id,)).fetchone()
            if state is None:
                raise ValueError(f"unknown image {anchor_id!r}")
            decision = None if candidate_id is None else self.conn.execute(
                "SELECT verdict, cosine, at FROM decisions WHERE anchor_id = ? AND candidate_id = ?",
                (anchor_id, candidate_id)).fetchone()
            before = {"reviewed": state[0], "queue_rank": state[1], "decision": decision}
            yield
            self.conn.execute("INSERT INTO review_log (action, anchor_id, candidate_id, before, at) VALUES (?, ?, ?, ?, ?)",
                              (action, anchor_id, candidate_id, json.dumps(before), utc_now()))

    @contextlib.contextmanager
    def _transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _restore_decision(self, anchor_id: str, candidate_id: str, before: list | None) -> None:
        if before is None:
            self.conn.execute("DELETE FROM decisions WHERE anchor_id = ? AND candidate_id = ?", (anchor_id, candidate_id))
        else:
            self.conn.execute("UPDATE decisions SET verdict = ?, cosine = ?, at = ? "
                              "WHERE anchor_id = ? AND candidate_id = ?", (*before, anchor_id, candidate_id))


def _unusable(dim, dim_type: str, vector_type: str, size: int | None, max_dim: int) -> str:
    if dim_type != "integer" or vector_type != "blob":
        return f"stored dim ({dim_type}) or vector ({vector_type}) is not an integer and a blob"
    if not 1 <= dim <= max_dim:
        return f"vector of {dim} dimensions, outside 1..ingest.max_vector_dim ({max_dim})"
    return f"vector blob of {size} bytes, not {dim} float32 numbers"


def _slim(payload: dict) -> str:
    """The payload as stored in ``messages``: vectors and images live in ``sightings`` only."""
    slim = {k: v for k, v in payload.items() if k not in ("vector", "crop")}
    return json.dumps(slim, separators=(",", ":"))


def _sighting(row) -> Sighting:
    sid, device, event_id, frame_time, label, model, vector, crop, name, edge, individual, meta = row
    return Sighting(id=sid, device=device, event_id=event_id, frame_time=frame_time, label=label, model=model,
                    vector=np.frombuffer(vector, np.float32), crop_jpeg=crop, name=name, edge_jpeg=edge,
                    individual=individual, meta=json.loads(meta))

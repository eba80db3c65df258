"""The appliance's SQLite database: frames, detections, events, embeddings, failures, outbox, suppression clusters.

WAL journal, a schema versioned with ``PRAGMA user_version`` and applied by ordered migrations,
and retention by age and size that never deletes an unsent outbox message.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from common.sqlite import NotThisStore, apply_migrations, connect
from edge.events.suppression import Cluster, release
from edge.storage.outbox import Outbox

MIGRATIONS: list[str] = [
    # 1: first schema
    """
    CREATE TABLE frames (
        id INTEGER PRIMARY KEY, source_id TEXT NOT NULL, key TEXT NOT NULL, time TEXT NOT NULL,
        time_source TEXT NOT NULL, path TEXT, width INTEGER, height INTEGER, night INTEGER,
        brightness REAL, motion REAL, gated INTEGER NOT NULL DEFAULT 0, flags TEXT NOT NULL DEFAULT '',
        event_id TEXT, processed_at TEXT NOT NULL, UNIQUE (source_id, key)
    );
    CREATE INDEX frames_time ON frames (processed_at);
    CREATE TABLE detections (
        id INTEGER PRIMARY KEY, frame_id INTEGER NOT NULL REFERENCES frames (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL, x1 REAL, y1 REAL, x2 REAL, y2 REAL, confidence REAL NOT NULL,
        class_id INTEGER NOT NULL, label TEXT, label_score REAL, probs TEXT
    );
    CREATE INDEX detections_frame ON detections (frame_id);
    CREATE TABLE embeddings (
        id INTEGER PRIMARY KEY, detection_id INTEGER NOT NULL REFERENCES detections (id) ON DELETE CASCADE,
        event_id TEXT, model TEXT NOT NULL, model_version TEXT NOT NULL, dim INTEGER NOT NULL,
        vector BLOB NOT NULL
    );
    CREATE TABLE events (
        id TEXT PRIMARY KEY, source_id TEXT NOT NULL, start TEXT NOT NULL, end TEXT NOT NULL,
        frames INTEGER NOT NULL, label TEXT, score REAL, probs TEXT NOT NULL DEFAULT '{}',
        counts TEXT NOT NULL DEFAULT '{}', crops INTEGER NOT NULL DEFAULT 0, probs_sum TEXT NOT NULL DEFAULT '{}',
        thumbnail BLOB, thumbnail_score REAL NOT NULL DEFAULT 0,
        closed INTEGER NOT NULL DEFAULT 0, alerted INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL
    );
    CREATE INDEX events_open ON events (closed);
    CREATE TABLE failures (
        id INTEGER PRIMARY KEY, source_id TEXT NOT NULL, key TEXT NOT NULL, path TEXT, reason TEXT NOT NULL,
        at TEXT NOT NULL, UNIQUE (source_id, key)
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,
        payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created TEXT NOT NULL
    );
    """,
    # 2: each box's one final label says which model decided it
    """
    ALTER TABLE detections ADD COLUMN label_source TEXT;
    """,
    # 3: frames being analysed: a frame that kills the service (out of memory) is not retried forever
    """
    CREATE TABLE attempts (
        source_id TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (source_id, key)
    );
    """,
    # 4: places where boxes recur (repeat-detection suppression), and on each box the cluster that suppressed it
    """
    CREATE TABLE suppression_clusters (
        id TEXT PRIMARY KEY, source_id TEXT NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL,
        y2 REAL NOT NULL, hits INTEGER NOT NULL, events INTEGER NOT NULL, day_events INTEGER NOT NULL,
        night_events INTEGER NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('candidate', 'suppressed', 'released')), since TEXT
    );
    CREATE INDEX suppression_clusters_source ON suppression_clusters (source_id);
    ALTER TABLE detections ADD COLUMN suppressed_by TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreConfig(BaseModel):
    """Where the database lives and how long it keeps things."""

    model_config = ConfigDict(extra="forbid")
    path: Path = Field(Path("/var/lib/trapedge/trapedge.db"), title="SQLite database file")
    retention_days: float = Field(30, gt=0, le=36500, title="Delete frames, detections and events older than this "
                                                         "(at most 100 years: a larger cutoff is before year 1)")
    max_mb: float = Field(2048, gt=0, title="Delete the oldest frames while the database is larger than this")


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database's ``user_version``; returns the new version."""
    return apply_migrations(conn, MIGRATIONS, "edge store")


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do, in one line."""


class StoreLost(StoreError):
    """The database file was deleted or replaced while the service had it open."""


def is_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space (SQLite's SQLITE_FULL, or ENOSPC)."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _file_id(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class Store:
    """The database of one appliance. Thread-safe through one lock around its connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.conn = connect(self.path)
            self.lock = threading.RLock()
            with self.lock:
                migrate(self.conn)
                self.conn.execute("BEGIN IMMEDIATE")  # a read-only file or folder shows now, not at the first frame
                self.conn.execute("ROLLBACK")
            self.file_id = _file_id(self.path)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            raise StoreError(_why(self.path, exc)) from None
        self.outbox = Outbox(self.conn, self.lock)
        self._data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]

    def check_file(self) -> None:
        """Raise ``StoreLost`` when the database file is no longer the one this store opened (deleted,
        or replaced): writes would go to an unlinked file and be lost at the next start."""
        try:
            same = _file_id(self.path) == self.file_id
        except FileNotFoundError:
            same = False
        if not same:
            raise StoreLost(f"store {self.path} was deleted or replaced while running: stopping, so that the "
                            "service starts again on the file now there (frames are analysed again under the same "
                            "message ids: central keeps no duplicates)")

    def transaction(self) -> _Transaction:
        """``with store.transaction():`` — one atomic unit (frame rows + its outbox messages)."""
        return _Transaction(self)

    def is_done(self, source_id: str, key: str) -> bool:
        """Whether a frame (or its failure) was already recorded: the exactly-once check."""
        with self.lock:
            row = self.conn.execute(
                "SELECT 1 FROM frames WHERE source_id = ? AND key = ? UNION ALL "
                "SELECT 1 FROM failures WHERE source_id = ? AND key = ? LIMIT 1",
                (source_id, key, source_id, key),
            ).fetchone()
        return row is not None

    def begin_attempt(self, source_id: str, key: str) -> int:
        """Note that a frame's analysis starts; returns how many times it has (1 the first time). The
        row goes when the frame or its failure is recorded (``end_attempt``, in that transaction), so a
        count above 1 means an earlier analysis of it never finished: the service died on it."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO attempts (source_id, key, count) VALUES (?, ?, 1) "
                         "ON CONFLICT (source_id, key) DO UPDATE SET count = count + 1", (source_id, key))
            return int(conn.execute("SELECT count FROM attempts WHERE source_id = ? AND key = ?",
                                    (source_id, key)).fetchone()[0])

    def undo_attempt(self, source_id: str, key: str) -> None:
        """The service did not die on this attempt: recording it failed (a full disk), so it is not
        counted against the frame. Best effort: on a disk too full even for this, it stays counted."""
        try:
            with self.transaction() as conn:
                conn.execute("UPDATE attempts SET count = count - 1 WHERE source_id = ? AND key = ? AND count > 0",
                             (source_id, key))
        except sqlite3.Error:
            pass

    def end_attempt(self, source_id: str, key: str) -> None:
        """The frame is recorded (call inside the recording transaction)."""
        self.conn.execute("DELETE FROM attempts WHERE source_id = ? AND key = ?", (source_id, key))

    # --- suppression clusters ----------------------------------------------------------------
    def clusters(self, source_id: str | None = None) -> list[Cluster]:
        """The repeat-detection clusters (of one source), most events first."""
        where, args = ("WHERE source_id = ?", (source_id,)) if source_id is not None else ("", ())
        with self.lock:
            rows = self.conn.execute(f"SELECT {_CLUSTER_COLUMNS} FROM suppression_clusters {where} "
                                     "ORDER BY events DESC, last_seen DESC", args).fetchall()
        return [_cluster(row) for row in rows]

    def save_clusters(self, changed: Iterable[Cluster], removed: Iterable[str]) -> None:
        """Write the clusters a frame changed and delete those it forgot (inside the frame's transaction)."""
        self.conn.executemany(
            f"INSERT OR REPLACE INTO suppression_clusters ({_CLUSTER_COLUMNS}) VALUES ({','.join('?' * 14)})",
            [_cluster_row(c) for c in changed])
        self.conn.executemany("DELETE FROM suppression_clusters WHERE id = ?", [(cid,) for cid in removed])

    def release_cluster(self, cluster_id: str) -> Cluster | None:
        """Release one cluster (``edge.events.suppression.release``); None when there is no such id. A
        running service reads it back before its next frame (``changed_elsewhere``)."""
        with self.transaction() as conn:
            row = conn.execute(f"SELECT {_CLUSTER_COLUMNS} FROM suppression_clusters WHERE id = ?",
                               (cluster_id,)).fetchone()
            if row is None:
                return None
            released = release(_cluster(row))
            self.save_clusters([released], [])
        return released

    def changed_elsewhere(self) -> bool:
        """Whether another connection (``trapedge suppress release``) committed since the last call."""
        with self.lock:
            version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = version != self._data_version, version
        return changed

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` result (``ok`` when healthy)."""
        with self.lock:
            return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    def size_mb(self) -> float:
        """Database size including its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return (self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6

    def apply_retention(self, config: StoreConfig, now: datetime | None = None) -> int:
        """Delete old frames (their detections and embeddings cascade), old closed events and
        failures; then the oldest frames while over ``max_mb``. Never touches the outbox.

        Returns:
            Number of frames deleted.
        """
        now = now or datetime.now(timezone.utc)
        cutoff = (now - timedelta(days=config.retention_days)).isoformat(timespec="milliseconds")
        with self.transaction():
            deleted = self.conn.execute("DELETE FROM frames WHERE processed_at < ?", (cutoff,)).rowcount
            self.conn.execute("DELETE FROM events WHERE closed = 1 AND updated_at < ?", (cutoff,))
            self.conn.execute("DELETE FROM failures WHERE at < ?", (cutoff,))
        while self.size_mb() > config.max_mb:
            with self.transaction():
                batch = self.conn.execute(
                    "DELETE FROM frames WHERE id IN (SELECT id FROM frames ORDER BY processed_at LIMIT 100)"
                ).rowcount
            with self.lock:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("VACUUM")
            deleted += batch
            if batch == 0:
                break
        return deleted


_CLUSTER_COLUMNS = ("id, source_id, x1, y1, x2, y2, hits, events, day_events, night_events, first_seen, last_seen, "
                    "state, since")


def _cluster_row(c: Cluster) -> tuple:
    return (c.id, c.source_id, *c.box, c.hits, c.events, c.day_events, c.night_events, c.first_seen.isoformat(),
            c.last_seen.isoformat(), c.state, c.since.isoformat() if c.since else None)


def _cluster(row: tuple) -> Cluster:
    cid, source, x1, y1, x2, y2, hits, events, day, night, first, last, state, since = row
    return Cluster(cid, source, (x1, y1, x2, y2), hits, events, datetime.fromisoformat(first),
                   datetime.fromisoformat(last), day, night, state, datetime.fromisoformat(since) if since else None)


def _why(path: Path, exc: BaseException) -> str:
    """One line: what is wrong with the database at ``path`` and what to do."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, NotThisStore):  # says what to do itself
        return f"store {path}: {text}"
    if "readonly" in text or "read-only" in text or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS)):
        hint = "make the file, its -wal/-shm files and its folder writable by the service user"
    elif is_full(exc):
        hint = "free space on that filesystem"
    elif "malformed" in text or "not a database" in text:
        hint = "move it aside (the service then starts a new one) and keep it for inspection"
    else:
        hint = "check the path in store.path"
    return f"store {path}: {text}: {hint}"


class _Transaction:
    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store.lock.acquire()
        self.store.conn.execute("BEGIN IMMEDIATE")
        return self.store.conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            try:
                self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            except sqlite3.Error:
                if self.store.conn.in_transaction:  # a COMMIT that failed (disk full) leaves it open
                    self.store.conn.execute("ROLLBACK")
                if not exc_type:
                    raise
        finally:
            self.store.lock.release()

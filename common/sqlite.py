"""SQLite as the edge and central stores use it: WAL connections and ordered migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds and its offset."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with foreign keys on, usable from the thread that opened it
    and (under the caller's lock) from others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[str], name: str = "database") -> int:
    """Apply every migration newer than the database's ``user_version``, each in one transaction.

    Returns:
        The new version (``len(migrations)``).

    Raises:
        RuntimeError: the database was written by a newer version of trapedge.
    """
    latest = len(migrations)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > latest:
        raise RuntimeError(f"{name} schema {version} is newer than this trapedge ({latest})")
    for number in range(version + 1, latest + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return latest

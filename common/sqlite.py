"""SQLite as the edge and central stores use it: WAL connections and ordered migrations."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from common.config_loader import writable_folder

SQLITE_HEADER = b"SQLite format 3\x00"


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds and its offset."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class NotThisStore(sqlite3.DatabaseError):
    """The database is another kind of store (the edge's for central's, another program's) or was written
    by a newer trapedge: the message says which and what to do."""


def _first_table(migrations: Sequence[str]) -> str:
    """The table the first migration creates: every store of this kind has it."""
    match = re.search(r"CREATE TABLE (\w+)", migrations[0])
    if match is None:
        raise ValueError("the first migration creates no table")
    return match.group(1)


def kind_problem(conn: sqlite3.Connection, migrations: Sequence[str], name: str) -> str | None:
    """Why the open database is not a ``name`` this trapedge can use (``None``: it is, or it is new)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        return (f"{name} schema {version} is newer than this trapedge ({len(migrations)}): install the trapedge "
                "version that wrote it")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    marker = _first_table(migrations)
    if tables and marker not in tables:  # an edge store at central, central's at the edge: same versions
        article = "an" if name[:1] in "aeiou" else "a"
        return f"not {article} {name} (it has no {marker} table; another store or program wrote it): fix store.path"
    return None


def store_path_problem(path: Path, migrations: Sequence[str] | None = None, name: str = "store") -> str | None:
    """Why ``path`` cannot hold a store, in one line that says what to do; ``None`` when it can (a SQLite
    file, an empty file, or none yet in a folder this user may write). With ``migrations``, a database
    of another kind or from a newer trapedge is refused too (read only: nothing is created or migrated).
    Checked before a service starts: a folder's name, or another program's file, otherwise failed only
    once the service was running."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder: name the database file in it (e.g. {path / 'trapedge.db'})"
    if not writable_folder(path):
        return f"{path.parent} is not writable by this user: create it, owned by the service user"
    if not path.exists():
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror}): make it readable and writable by the service user"
    if head and head != SQLITE_HEADER:
        return f"{path} is not a SQLite database: move it aside (a new store is then started) or fix the path"
    if not head or migrations is None:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            problem = kind_problem(conn, migrations, name)
    except sqlite3.Error as exc:
        return f"{path}: {exc}: move it aside (a new store is then started) or fix the path"
    return f"{path}: {problem}" if problem else None


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
        NotThisStore: the database was written by a newer version of trapedge, or is another kind of store
            (nothing is changed then).
    """
    latest = len(migrations)
    if problem := kind_problem(conn, migrations, name):
        raise NotThisStore(problem)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
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

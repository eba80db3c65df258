"""PostgreSQL connection strings (``gallery.dsn``): checked with the config, shown only with the password masked.

libpq echoes a connection string it cannot parse into its error (``missing "=" after
"postgres:/trap:secret@db/trapedge"``), so no libpq message reaches a log or a terminal unmasked:
``mask`` replaces every form of the password that the string holds (URI userinfo, ``password=``
in a query or a key/value string, raw and decoded) with ``***``, also when the string is malformed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
CONNECT_TIMEOUT_S = 10  # when the DSN sets no connect_timeout of its own
_USERINFO = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:/*(.*)@")  # greedy: up to the last @
_USERINFO_SHORT = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:/*([^@]*?)@")  # up to the first @
_PASSWORD_KEY = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)  # key=value form
_PASSWORD_QUERY = re.compile(r"[?&]password=([^&#\s]*)", re.IGNORECASE)  # URI query form


def passwords_in(dsn: str) -> set[str]:
    """Every text in ``dsn`` that may be its password, or part of it (never the empty string)."""
    found = []
    for pattern in (_USERINFO, _USERINFO_SHORT):
        match = pattern.match(dsn)
        if match and ":" in match.group(1):
            found.append(match.group(1).partition(":")[2])
    found += [match.group(1) for match in _PASSWORD_QUERY.finditer(dsn)]
    for match in _PASSWORD_KEY.finditer(dsn):
        value = match.group(1)
        found += [value, value.strip("'"), value.strip("'").replace("\\'", "'").replace("\\\\", "\\")]
    return {text for raw in found for text in (raw, unquote(raw)) if text}


def mask(text: str, dsn: str) -> str:
    """``text`` (a libpq message, the DSN itself) with the DSN's password replaced by ``***``."""
    for secret in sorted(passwords_in(dsn), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def one_line(text: str) -> str:
    """libpq's multi-line messages as one line."""
    return " ".join(text.split())


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with ``dsn`` as libpq parses it (password masked), or None when it parses."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "the pgvector backend needs psycopg: pip install 'trapedge[central]'"
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError, with libpq's message
        return (f"not a PostgreSQL connection string ({mask(one_line(str(exc)), dsn)}); "
                "write postgresql://user:password@host:5432/dbname")
    ports = str(params.get("port", "")).split(",")
    if any(port and not (port.isdigit() and 0 < int(port) < 65536) for port in ports):
        return f"the port in {mask(dsn, dsn)} is not a number from 1 to 65535"
    return None


def connection_problem(dsn: str) -> str | None:
    """None when PostgreSQL at ``dsn`` accepts a connection, else one line saying why (password masked)."""
    problem = dsn_problem(dsn)
    if problem is not None:
        return problem
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    timed = dsn if "connect_timeout" in conninfo_to_dict(dsn) else make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        psycopg.connect(timed).close()
    except psycopg.Error as exc:
        return (f"cannot connect to PostgreSQL at {mask(dsn, dsn)}: {mask(one_line(str(exc)), dsn)} "
                "(check gallery.dsn and that the server is running)")
    return None

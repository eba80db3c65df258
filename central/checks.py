"""What ``trapedge central`` needs beyond a config that parses, checked before it runs.

``trapedge central --validate-config`` prints each problem as one line that says what to do (exit
2), and the service refuses to start with the first of them as one line, never a traceback: the
store's folder is writable, the reviewer's hash and session key files are readable and well formed,
the review address is free to listen on, every ``ingest.compact_bundles`` entry is a bundle with a
compact projection, and the pgvector database answers.
"""

from __future__ import annotations

import errno
import socket

from central.config import CentralConfig
from central.store import store_problem


def login_problem(config: CentralConfig) -> str | None:
    """Why the review login cannot be set up from its files (None: it can, or there is no login)."""
    from central.auth import Auth

    login = config.review.login
    if not config.review.enabled or login is None:
        return None
    try:
        Auth.from_config(login)
    except ValueError as exc:
        return str(exc)
    return None


def listen_problem(host: str, port: int, exc: OSError) -> str:
    """One line that says why ``host:port`` cannot be listened on, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return f"review.port: {host}:{port} is already in use by another program: stop it, or set review.port to a free port"
    if exc.errno == errno.EACCES:
        return (f"review.port: this user may not listen on port {port} (below 1024 needs root): set review.port to "
                "1024 or above, behind a reverse proxy")
    return (f"review.host: cannot listen on {host}:{port} ({exc.strerror or exc}): set review.host to an address of "
            "this machine")


def port_problem(host: str, port: int) -> str | None:
    """Why the review UI cannot listen on ``host:port`` (None: it can; the port is released again)."""
    if port == 0:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:  # socket.gaierror (an unknown host name) included
        return listen_problem(host, port, exc)
    return None


def central_problems(config: CentralConfig, *, reach_database: bool = True) -> list[str]:
    """Every problem ``trapedge central`` would meet at start, one line each (empty: ready to run)."""
    problems = []
    if problem := store_problem(config.store.path):
        problems.append(problem)
    if config.review.enabled:
        problems += [p for p in (login_problem(config), port_problem(config.review.host, config.review.port)) if p]
    if config.ingest.compact_bundles:
        from central.compact import load_tables

        try:
            load_tables(config.ingest.compact_bundles)
        except ValueError as exc:
            problems.append(str(exc))
    if reach_database:
        from central.service import StartupError, check_gallery

        try:
            check_gallery(config)
        except StartupError as exc:
            problems.append(str(exc))
    return problems

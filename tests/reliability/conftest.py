"""Reliability scenarios run only under ``make reliability`` (``TRAPEDGE_RELIABILITY=1``).

Tests marked ``reliability`` are deselected in the ordinary ``make test`` run (it only collects
these modules). Every scenario adds one row to the table that is printed and written as JSON when
the session ends.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

import pytest

from .report import Row, markdown, write_json
from .settings import load_settings

ENABLED = os.environ.get("TRAPEDGE_RELIABILITY", "") not in ("", "0")
_ROWS: list[Row] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: long fault scenario, run by `make reliability` only")


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skipped = [item for item in items if item.get_closest_marker("reliability")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if not item.get_closest_marker("reliability")]


@pytest.fixture(scope="session")
def settings():
    """Scenario sizes (see ``settings.py``)."""
    return load_settings()


@pytest.fixture(scope="session")
def table(settings):
    """The rows of this session; printed and written as JSON at its end."""
    yield _ROWS
    if not _ROWS or not ENABLED:
        return
    title = f"trapedge reliability ({'short' if settings.short else 'full'})"
    rows = sorted(_ROWS, key=lambda r: r.scenario)
    print("\n\n" + markdown(rows, title) + "\n")
    meta = {"short": settings.short, "outage_s": settings.outage_s, "kills": settings.kills,
            "fuzz_payloads": settings.fuzz_payloads, "seed": settings.seed, "host": platform.node(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(rows, settings.json_path, meta)
    print(f"written to {settings.json_path}")


@pytest.fixture
def row(table, request):
    """``with row("name") as r:`` — times the block, marks the row FAIL when it raises."""

    @contextmanager
    def scenario(name: str):
        entry = Row(name)
        table.append(entry)
        start = time.monotonic()
        try:
            yield entry
        except pytest.skip.Exception as exc:
            entry.verdict, entry.note = "skipped", str(exc)
            raise
        except BaseException as exc:
            entry.verdict = "FAIL"
            entry.note = (entry.note + "; " if entry.note else "") + f"{type(exc).__name__}: {exc}"
            raise
        finally:
            entry.wall_s = time.monotonic() - start

    return scenario

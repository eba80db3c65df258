"""The attack suite: hostile inputs against the real code paths, each probe tallied.

Every probe test records what it sent and what became of it through the ``tally`` fixture:
attempts, how many were rejected with a reason, crashes (an exception that escaped, a process that
died), restarts that failed, and bytes stored. At the end of the session the table is printed and,
with ``SECURITY_REPORT=path``, written as JSON and Markdown (``make security`` does). A probe passes
only with 0 crashes and 0 failed restarts.

``SECURITY_FULL=1`` (``make security``) runs the long variant: more fuzzed payloads per probe; the
normal suite (and CI) runs the short one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

FULL = os.environ.get("SECURITY_FULL") == "1"


def fuzz_count(short: int, full: int) -> int:
    """How many fuzzed inputs a probe sends: ``short`` in the normal suite, ``full`` in ``make security``."""
    return full if FULL else short


@dataclass
class Probe:
    """What one probe did."""

    name: str
    attempts: int = 0
    rejected: int = 0  # refused with a reason the sender or the operator can read
    crashes: int = 0
    failed_restarts: int = 0
    bytes_stored: int = 0


_PROBES: dict[str, Probe] = {}


class Tally:
    """Records probes; ``record`` adds to the named probe's row."""

    def record(self, name: str, *, attempts: int = 0, rejected: int = 0, crashes: int = 0, failed_restarts: int = 0,
               bytes_stored: int = 0) -> Probe:
        probe = _PROBES.setdefault(name, Probe(name))
        probe.attempts += attempts
        probe.rejected += rejected
        probe.crashes += crashes
        probe.failed_restarts += failed_restarts
        probe.bytes_stored += bytes_stored
        return probe


@pytest.fixture
def tally() -> Tally:
    return Tally()


def _markdown(probes: list[Probe]) -> str:
    lines = ["| probe | attempts | rejected with a reason | crashes | failed restarts | bytes stored |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p.name} | {p.attempts} | {p.rejected} | {p.crashes} | {p.failed_restarts} | {p.bytes_stored} |"
              for p in probes]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _PROBES:
        return
    probes = sorted(_PROBES.values(), key=lambda p: p.name)
    terminalreporter.section("attack suite")
    terminalreporter.write(_markdown(probes))
    out = os.environ.get("SECURITY_REPORT")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps([asdict(p) for p in probes], indent=1) + "\n")
        path.with_suffix(".md").write_text(_markdown(probes))

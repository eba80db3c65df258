"""Scenario sizes from the environment: full by default, short with ``RELIABILITY_SHORT=1``.

Each size can be set on its own (``RELIABILITY_OUTAGE_S=120``); the JSON report goes to
``RELIABILITY_JSON`` (default ``results/reliability/reliability.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    """How long and how large each scenario runs."""

    short: bool
    outage_s: float
    kills: int
    fuzz_payloads: int
    seed: int
    json_path: Path


def _number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def load_settings() -> Settings:
    """Read the ``RELIABILITY_*`` variables."""
    short = os.environ.get("RELIABILITY_SHORT", "") not in ("", "0")
    return Settings(
        short=short,
        outage_s=_number("RELIABILITY_OUTAGE_S", 10 if short else 60),
        kills=int(_number("RELIABILITY_KILLS", 3 if short else 20)),
        fuzz_payloads=int(_number("RELIABILITY_FUZZ", 1000 if short else 10_000)),
        seed=int(_number("RELIABILITY_SEED", 20261121)),
        json_path=Path(os.environ.get("RELIABILITY_JSON") or ROOT / "results" / "reliability" / "reliability.json"),
    )

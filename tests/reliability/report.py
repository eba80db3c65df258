"""The suite's result table: one row per scenario, printed as Markdown and written as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One scenario's outcome: ``figures`` are its counts, ``verdict`` pass, FAIL or skipped."""

    scenario: str
    figures: dict = field(default_factory=dict)
    verdict: str = "pass"
    wall_s: float = 0.0
    note: str = ""


def _cell(figures: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in figures.items())


def markdown(rows: list[Row], title: str) -> str:
    """The rows as a Markdown table."""
    lines = [f"### {title}", "", "| scenario | result | wall s | figures | note |", "|---|---|---|---|---|"]
    for row in rows:
        note = row.note.replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {row.scenario} | {row.verdict} | {row.wall_s:.0f} | {_cell(row.figures)} | {note} |")
    return "\n".join(lines)


def write_json(rows: list[Row], path: Path, meta: dict) -> None:
    """``{"meta": ..., "rows": [...]}`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2, default=str))

"""Counts per class and split: printed as a table, saved as CSV and JSON."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from train.records import Record

UNASSIGNED = "(unassigned)"
UNLABELLED = "(unlabelled)"


@dataclass(frozen=True)
class Summary:
    """Record counts per ``(class, split)``; a multi-labelled record counts under ``a+b``."""

    classes: tuple[str, ...]
    splits: tuple[str, ...]
    counts: dict[tuple[str, str], int]

    def count(self, label: str, split: str | None = None) -> int:
        """Records of ``label`` in ``split`` (all splits when None)."""
        splits = self.splits if split is None else (split,)
        return sum(self.counts.get((label, s), 0) for s in splits)

    def split_total(self, split: str) -> int:
        """Records in ``split``."""
        return sum(self.counts.get((c, split), 0) for c in self.classes)


def summarise(records: Iterable[Record], split_of: Callable[[Record], str] | Mapping | None = None) -> Summary:
    """Count records per class × split.

    Args:
        records: the records (or an Inventory).
        split_of: a function of the record, a mapping from path (``Path`` or ``str``) to split, or
            None (one split, ``all``). Records a mapping does not name count as ``(unassigned)``.
    """
    counts = Counter((_class_of(r), _split(r, split_of)) for r in records)
    classes = tuple(sorted({c for c, _ in counts}))
    splits = tuple(sorted({s for _, s in counts}))
    return Summary(classes, splits, dict(counts))


def _class_of(record: Record) -> str:
    return "+".join(record.labels) if record.labels else UNLABELLED


def _split(record: Record, split_of) -> str:
    if split_of is None:
        return "all"
    if callable(split_of):
        return str(split_of(record))
    value = split_of.get(record.path, split_of.get(str(record.path)))
    return UNASSIGNED if value is None else str(value)


def format_summary(summary: Summary) -> str:
    """A fixed-width text table: one row per class, one column per split, plus totals."""
    header = ["class", *summary.splits, "total"]
    rows = [[c, *(str(summary.counts.get((c, s), 0)) for s in summary.splits), str(summary.count(c))]
            for c in summary.classes]
    totals = [str(summary.split_total(s)) for s in summary.splits]
    rows.append(["total", *totals, str(sum(summary.counts.values()))])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def save_summary(summary: Summary, path: Path | str) -> tuple[Path, Path]:
    """Write ``<path>.csv`` (class, split, count rows) and ``<path>.json``; returns both paths."""
    path = Path(path)
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "split", "count"])
        for (label, split), n in sorted(summary.counts.items()):
            writer.writerow([label, split, n])
    table = {c: {s: summary.counts.get((c, s), 0) for s in summary.splits} for c in summary.classes}
    json_path.write_text(json.dumps({"splits": list(summary.splits), "counts": table}, indent=2), encoding="utf-8")
    return csv_path, json_path

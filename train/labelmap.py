"""Label maps: normalise, rename/merge and drop labels, then resolve multi-labels by priority rules."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from train.records import Record

ANY = "*"


class LabelMapError(ValueError):
    """A label map that cannot be used (names the key or rule)."""


def normalise(label: str, lowercase: bool = True) -> str:
    """Collapse whitespace; lower-case unless told not to."""
    text = " ".join(str(label).split())
    return text.casefold() if lowercase else text


@dataclass(frozen=True)
class Rule:
    """``winner > loser``: a record holding both loses ``loser``; ``*`` matches any other label."""

    winner: str
    loser: str

    @classmethod
    def parse(cls, text: str, lowercase: bool = True) -> Rule:
        """Parse ``"human > empty"``."""
        parts = str(text).split(">")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise LabelMapError(f"priority rule {text!r}: expected 'winner > loser'")
        winner, loser = (normalise(p, lowercase) for p in parts)
        if winner == loser:
            raise LabelMapError(f"priority rule {text!r}: a label cannot beat itself")
        return cls(winner, loser)

    def apply(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        """The labels after this rule."""
        if self.winner == ANY:
            return tuple(x for x in labels if x != self.loser) if len(set(labels) - {self.loser}) else labels
        if self.winner not in labels:
            return labels
        if self.loser == ANY:
            return (self.winner,)
        return tuple(x for x in labels if x != self.loser)


@dataclass(frozen=True)
class Dropped:
    """A record the label map removed, and why (``dropped label``, ``multi-label``, ``unlabelled``)."""

    record: Record
    reason: str


@dataclass
class DropReport:
    """Every record `LabelMap.apply` removed."""

    items: list[Dropped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        """Number of dropped records per reason."""
        return dict(Counter(d.reason for d in self.items))


@dataclass(frozen=True)
class LabelMap:
    """Rename/merge, drop and priority rules, applied in that order after normalisation.

    Attributes:
        rename: source label → target label (several sources may share a target: a merge).
        drop: labels removed from every record; a record left without labels is dropped.
        priority: rules applied in order to multi-labelled records.
        lowercase: normalise case as well as whitespace.
    """

    rename: Mapping[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    priority: tuple[Rule, ...] = ()
    lowercase: bool = True

    @classmethod
    def from_dict(cls, data: Mapping | None) -> LabelMap:
        """Build from ``{"rename": {...}, "drop": [...], "priority": ["human > empty"], "lowercase": true}``."""
        data = dict(data or {})
        unknown = set(data) - {"rename", "drop", "priority", "lowercase"}
        if unknown:
            raise LabelMapError(f"unknown key(s) {sorted(unknown)}; expected rename, drop, priority, lowercase")
        lowercase = bool(data.get("lowercase", True))
        rename = data.get("rename") or {}
        if not isinstance(rename, Mapping):
            raise LabelMapError("rename: expected a mapping of label -> label")
        renamed = {normalise(k, lowercase): normalise(v, lowercase) for k, v in rename.items()}
        drop = frozenset(normalise(x, lowercase) for x in data.get("drop") or [])
        rules = tuple(Rule.parse(r, lowercase) for r in data.get("priority") or [])
        return cls(renamed, drop, rules, lowercase)

    @classmethod
    def load(cls, path: Path | str) -> LabelMap:
        """Read a YAML label map file."""
        try:
            return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
        except (yaml.YAMLError, LabelMapError) as err:
            raise LabelMapError(f"{path}: {err}") from None

    def map_labels(self, labels: Iterable[str]) -> tuple[str, ...]:
        """Normalised, renamed, de-duplicated labels minus dropped ones, after the priority rules."""
        mapped: list[str] = []
        for label in labels:
            name = normalise(label, self.lowercase)
            name = self.rename.get(name, name)
            if name not in self.drop and name not in mapped:
                mapped.append(name)
        result = tuple(mapped)
        for rule in self.priority:
            result = rule.apply(result)
        return result

    def apply(self, records: Iterable[Record], keep_multilabel: bool = False) -> tuple[list[Record], DropReport]:
        """Map every record's labels; return the kept records and a report of the dropped ones."""
        kept, report = [], DropReport()
        for record in records:
            labels = self.map_labels(record.labels)
            reason = _drop_reason(record, labels, keep_multilabel)
            if reason:
                report.items.append(Dropped(record, reason))
            else:
                kept.append(dataclasses.replace(record, labels=labels))
        return kept, report


def _drop_reason(record: Record, labels: tuple[str, ...], keep_multilabel: bool) -> str | None:
    if not labels and record.labels:
        return "dropped label"
    if not labels and record.individual is None:
        return "unlabelled"
    if len(labels) > 1 and not keep_multilabel:
        return "multi-label"
    return None

"""Leak-free dataset splits: whole groups (bursts, locations, individuals, images) per split.

Frames of one burst look alike, so a burst on both sides of a split inflates validation scores;
for re-identification an individual on both sides turns the test into a lookup. Splits here
assign whole groups, stratified by label, seeded, and are saved so that later runs reuse them.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from train.records import Record

GroupBy = Literal["event", "location", "individual", "image"]
GROUP_BY: tuple[str, ...] = ("event", "location", "individual", "image")
DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
FRAME_NUMBER = r"(\d+)\.[^./\\]+$"
"""Trailing frame counter before the extension (``CA-01_0006501.jpg`` -> 6501)."""

CSV_COLUMNS = ("path", "split", "group", "label")


class LeakageError(ValueError):
    """A group (burst, location, individual, image) appears in more than one split."""


class StaleSplitError(ValueError):
    """A saved split no longer matches the records it is applied to.

    Attributes:
        gone: saved paths with no record now.
        new: record paths the saved split lacks.
    """

    def __init__(self, message: str, gone: Sequence[str] = (), new: Sequence[str] = ()):
        super().__init__(message)
        self.gone, self.new = list(gone), list(new)


# ---------------------------------------------------------------- groups and bursts


def assign_bursts(
    records: Sequence[Record],
    gap_seconds: float = 60.0,
    *,
    sequence_from_filename: str | None = None,
    frame_gap: int = 2,
) -> list[str]:
    """Burst id of each record, derived from capture time (or a frame counter in the filename).

    Records of one camera (``location``, else the parent folder) whose times follow each other
    within ``gap_seconds`` form one burst (chained: each frame within the gap of the previous).
    A record without a time whose filename matches ``sequence_from_filename`` (first group, an
    integer) is ordered by that number instead, with ``frame_gap`` as the gap. A record with
    neither is a burst of its own.

    Args:
        records: the records, in any order.
        gap_seconds: largest gap between consecutive frames of one burst, in seconds.
        sequence_from_filename: regex whose first group is a frame counter, e.g. ``FRAME_NUMBER``.
        frame_gap: largest difference of consecutive frame numbers within one burst.

    Returns:
        One id per record, in the order given: ``<camera>@<first frame name>``.
    """
    pattern = re.compile(sequence_from_filename) if sequence_from_filename else None
    streams: dict[tuple[str, str], list[tuple[float, str, int]]] = defaultdict(list)
    ids: list[str] = [""] * len(records)
    for index, record in enumerate(records):
        clock = _clock(record, pattern)
        if clock is None:
            ids[index] = f"{_camera(record)}@{record.path.name}"
        else:
            streams[(_camera(record), clock[0])].append((clock[1], record.path.name, index))
    for (camera, kind), frames in streams.items():
        gap = gap_seconds if kind == "time" else frame_gap
        for members in _chain(sorted(frames), gap):
            for _, _, index in members:
                ids[index] = f"{camera}@{members[0][1]}"
    return ids


def _clock(record: Record, pattern: re.Pattern | None) -> tuple[str, float] | None:
    if record.time is not None:
        return "time", record.time.timestamp()
    match = pattern.search(record.path.name) if pattern else None
    return ("frame", float(match.group(1))) if match else None


def _camera(record: Record) -> str:
    return record.location if record.location is not None else record.path.parent.as_posix()


def _chain(frames: list[tuple[float, str, int]], gap: float) -> list[list[tuple[float, str, int]]]:
    bursts: list[list[tuple[float, str, int]]] = []
    for frame in frames:
        if bursts and frame[0] - bursts[-1][-1][0] <= gap:
            bursts[-1].append(frame)
        else:
            bursts.append([frame])
    return bursts


def with_bursts(records: Sequence[Record], gap_seconds: float = 60.0, **options) -> list[Record]:
    """Copies of ``records`` whose missing ``event`` is filled with ``assign_bursts`` ids."""
    missing = [r for r in records if r.event is None]
    bursts = iter(assign_bursts(missing, gap_seconds, **options))
    return [r if r.event is not None else replace(r, event=next(bursts)) for r in records]


def group_key(record: Record, by: GroupBy) -> str:
    """The group a record belongs to; groups never straddle splits.

    Args:
        record: one record.
        by: ``event`` (burst / capture event), ``location``, ``individual`` or ``image``
            (all boxes of one image together).

    Raises:
        ValueError: unknown ``by``, or the record lacks that field (use ``with_bursts`` to
            derive missing events).
    """
    if by == "image":
        return record.path.as_posix()
    if by not in GROUP_BY:
        raise ValueError(f"unknown split key {by!r}; expected one of {GROUP_BY}")
    value = getattr(record, by)
    if value is None:
        hint = " (derive bursts with with_bursts())" if by == "event" else ""
        raise ValueError(f"{record.path}: no {by} to group by{hint}")
    return str(value)


def _keys(records: Sequence[Record], by: GroupBy, burst_options: Mapping) -> list[str]:
    if by == "event":
        records = with_bursts(records, **burst_options)
    return [group_key(r, by) for r in records]


# ---------------------------------------------------------------- splitting


def split_records(
    records: Sequence[Record],
    by: GroupBy,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    stratify: bool = True,
    **burst_options,
) -> dict[str, list[Record]]:
    """Split records so that no group straddles two splits.

    Groups are shuffled with ``seed`` and assigned greedily, largest first, to the split whose
    share of that label is furthest below its fraction. Each label (with ``stratify``; else the
    whole set) first gets one group in each split, largest split first, as far as its groups go;
    the smallest splits get the smallest groups.

    Args:
        records: the records to split.
        by: grouping key, see ``group_key``.
        fractions: split name -> fraction of records; must sum to 1.
        seed: shuffle seed; the same seed gives the same split.
        stratify: balance each label (the group's most common label) across splits.
        **burst_options: ``gap_seconds``, ``sequence_from_filename``, ``frame_gap`` for
            ``by="event"`` when records lack an event id.

    Returns:
        Split name -> records, every name of ``fractions`` present, records in input order.
    """
    _check_fractions(fractions)
    keys = _keys(records, by, burst_options)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    strata: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        strata[_group_label([records[i] for i in members]) if stratify else ""].append(key)
    rng = random.Random(seed)
    split_of: dict[str, str] = {}
    for label in sorted(strata):
        split_of.update(_assign(sorted(strata[label]), groups, fractions, rng))
    out: dict[str, list[Record]] = {name: [] for name in fractions}
    for record, key in zip(records, keys):
        out[split_of[key]].append(record)
    return out


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def _group_label(records: Iterable[Record]) -> str:
    counts = Counter(r.label if r.label is not None else "|".join(r.labels) for r in records)
    top = max(counts.values())
    return min(label for label, n in counts.items() if n == top)


def _assign(
    keys: list[str], groups: Mapping[str, list[int]], fractions: Mapping[str, float], rng: random.Random
) -> dict[str, str]:
    """Greedy balanced assignment of one stratum's groups (already in a stable order)."""
    rng.shuffle(keys)
    keys.sort(key=lambda k: -len(groups[k]))  # stable: equal sizes keep the seeded order
    total = sum(len(groups[k]) for k in keys)
    taken = {name: 0 for name in fractions}
    split_of: dict[str, str] = {}
    largest_first = [n for n in sorted(fractions, key=lambda n: -fractions[n]) if fractions[n] > 0]
    for name in reversed(largest_first[: len(keys)]):  # one group each; smallest split, smallest group
        key = keys.pop()
        split_of[key], taken[name] = name, taken[name] + len(groups[key])
    for key in keys:
        name = max(fractions, key=lambda n: fractions[n] * total - taken[n])
        split_of[key], taken[name] = name, taken[name] + len(groups[key])
    return split_of


def check_no_leakage(splits: Mapping[str, Sequence[Record]], by: GroupBy, **burst_options) -> None:
    """Raise ``LeakageError`` naming the first group found in more than one split.

    Bursts (``by="event"`` without event ids) are derived over all splits together, so a burst
    cut in two is caught.
    """
    names = [name for name, records in splits.items() for _ in records]
    records = [r for rs in splits.values() for r in rs]
    seen: dict[str, set[str]] = defaultdict(set)
    for name, key in zip(names, _keys(records, by, burst_options)):
        seen[key].add(name)
    for key, where in seen.items():
        if len(where) > 1:
            raise LeakageError(f"{by} {key!r} is in splits {sorted(where)}")


# ---------------------------------------------------------------- re-identification


def split_individuals(
    records: Sequence[Record], fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[Record]]:
    """Split re-ID records by individual: no individual on both sides (labels not stratified)."""
    return split_records(records, "individual", fractions, seed, stratify=False)


def verify_disjoint_individuals(splits: Mapping[str, Sequence[Record]]) -> None:
    """Raise ``LeakageError`` listing every individual found in more than one split."""
    where: dict[str, set[str]] = defaultdict(set)
    for name, records in splits.items():
        for record in records:
            where[group_key(record, "individual")].add(name)
    shared = {ind: sorted(names) for ind, names in sorted(where.items()) if len(names) > 1}
    if shared:
        raise LeakageError(f"individuals in more than one split: {shared}")


def split_from_folders(records: Sequence[Record], root: Path) -> dict[str, list[Record]]:
    """Keep a split given by folders (``root/<split>/...``), after verifying it is individual-disjoint."""
    splits: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        splits[Path(record.path).relative_to(root).parts[0]].append(record)
    verify_disjoint_individuals(splits)
    return dict(splits)


# ---------------------------------------------------------------- saving and reuse


@dataclass(frozen=True)
class SplitRow:
    """One line of a saved split."""

    path: str
    split: str
    group: str
    label: str


@dataclass(frozen=True)
class SavedSplit:
    """A split read back from disk: its rows and the settings that made it."""

    rows: tuple[SplitRow, ...]
    by: str
    seed: int | None
    fractions: dict[str, float]
    counts: dict[str, int]

    def split_of(self) -> dict[str, str]:
        """Path (as saved) -> split name."""
        return {row.path: row.split for row in self.rows}


def sidecar(path: Path) -> Path:
    """The JSON file saved beside a split CSV."""
    return Path(path).with_suffix(".json")


def save_split(
    splits: Mapping[str, Sequence[Record]],
    path: Path,
    *,
    by: GroupBy,
    seed: int | None = None,
    fractions: Mapping[str, float] | None = None,
    root: Path | None = None,
    **burst_options,
) -> None:
    """Write ``path`` (CSV: path,split,group,label) and its JSON sidecar (by, seed, fractions, counts).

    Paths are written relative to ``root`` when given (so the split outlives the data's location).
    """
    names = [name for name, records in splits.items() for _ in records]
    records = [r for rs in splits.values() for r in rs]
    keys = _keys(records, by, burst_options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for name, record, key in zip(names, records, keys):
            writer.writerow([path_key(record.path, root), name, key, "|".join(record.labels)])
    meta = {"by": by, "seed": seed, "fractions": dict(fractions or {}),
            "counts": {name: len(rs) for name, rs in splits.items()}}
    sidecar(path).write_text(json.dumps(meta, indent=2) + "\n")


def load_split(path: Path) -> SavedSplit:
    """Read a split written by ``save_split``."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path}: expected columns {CSV_COLUMNS}, got {reader.fieldnames}")
        rows = tuple(SplitRow(**row) for row in reader)
    meta = json.loads(sidecar(path).read_text())
    return SavedSplit(rows, meta["by"], meta["seed"], meta["fractions"], meta["counts"])


def load_or_make_split(
    records: Sequence[Record],
    path: Path,
    by: GroupBy,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    stratify: bool = True,
    root: Path | None = None,
    fixed_groups: Mapping[str, str] | None = None,
    pinned: Mapping[str, str] | None = None,
    **burst_options,
) -> dict[str, list[Record]]:
    """Reuse the split saved at ``path``, or make one with ``split_records`` and save it.

    The data may grow (a new card, a new source): images the saved split lacks are split without
    moving any saved one, so the held-out images stay held out. A new image whose group (burst,
    camera...) is in the saved split joins it; else one whose group is in ``fixed_groups`` (group →
    split, e.g. the box split of the same sequences) takes that split; the other new groups are
    split among themselves (seeded, stratified). When a source is added beside the first, the
    common ``root`` moves up and the saved paths are found again under it. The saved file is
    rewritten with the new images.

    Args:
        pinned: saved paths (as saved) that are no longer among ``records`` because another split
            now decides them (e.g. box frames the species split holds); each must keep its split.

    Raises:
        StaleSplitError: the saved split names files that are gone (the images it held out
            would change), a pinned file moved split, or it was made with another ``by``.
    """
    path = Path(path)
    if not path.exists():
        splits = split_records(records, by, fractions, seed, stratify, **burst_options)
        save_split(splits, path, by=by, seed=seed, fractions=fractions, root=root, **burst_options)
        return splits
    saved = load_split(path)
    if saved.by != by:
        raise StaleSplitError(f"{path} splits by {saved.by!r}, not {by!r}: delete it to make a new split")
    keys = [path_key(r.path, root) for r in records]
    as_saved = saved.split_of()
    split_of = _found_again(as_saved, set(keys), path, pinned or {})
    new = [i for i, key in enumerate(keys) if key not in split_of]
    if not new and all(key in as_saved for key in keys):  # nothing new, nor a root that moved: nothing to rewrite
        return _assigned(records, keys, split_of, saved.counts)
    groups = _keys(records, by, burst_options)
    group_split = {**(fixed_groups or {}), **{groups[i]: split_of[k] for i, k in enumerate(keys) if k in split_of}}
    fresh = [i for i in new if groups[i] not in group_split]
    saved_fractions = saved.fractions or dict(fractions)
    made = split_records([records[i] for i in fresh], by, saved_fractions, seed, stratify, **burst_options) if fresh else {}
    made_of = {id(r): name for name, rs in made.items() for r in rs}
    split_of.update({keys[i]: made_of[id(records[i])] if id(records[i]) in made_of else group_split[groups[i]]
                     for i in new})
    out = _assigned(records, keys, split_of, saved.counts)
    save_split(out, path, by=by, seed=saved.seed, fractions=saved_fractions, root=root, **burst_options)
    if new:
        counts = Counter(split_of[keys[i]] for i in new)
        print(f"{path.name}: {len(new)} new image(s) split ({', '.join(f'{n} {c}' for n, c in sorted(counts.items()))}); "
              f"the {len(keys) - len(new)} saved ones keep their split")
    return out


def _found_again(split_of: dict[str, str], present: set[str], path: Path, pinned: Mapping[str, str]) -> dict[str, str]:
    """The saved ``path → split``, keyed as ``present`` is (the root may have moved up); saved paths now
    ``pinned`` elsewhere are checked and left out.

    Raises:
        StaleSplitError: saved files gone, or a pinned one in another split.
    """
    moved = [p for p, split in split_of.items() if p in pinned and pinned[p] != split]
    if moved:
        raise StaleSplitError(f"{path}: {len(moved)} of its files are now in another split (e.g. {moved[0]}): "
                              f"train into another folder (--out, or out: in the config) or delete it to split again")
    split_of = {p: split for p, split in split_of.items() if p not in pinned}
    gone = sorted(set(split_of) - present)
    if gone and (prefix := _common_prefix(split_of, present)) is not None:
        split_of, gone = {prefix + p: split for p, split in split_of.items()}, []
    if gone:
        new = sorted(present - set(split_of))
        raise StaleSplitError(
            f"{path} was made for other images ({len(gone)} of its files are gone, {len(new)} new ones are not in "
            f"it, e.g. {gone[0]}): train into another folder (--out, or out: in the config) or delete it to split again",
            gone,
            new,
        )
    return split_of


def _common_prefix(split_of: Mapping[str, str], present: set[str]) -> str | None:
    """The folder path that, put before every saved path, makes each a present one (None: there is none)."""
    first = min(split_of)
    for key in present:
        if key.endswith("/" + first):
            prefix = key[: -len(first)]
            if all(prefix + p in present for p in split_of):
                return prefix
    return None


def _assigned(records: Sequence[Record], keys: list[str], split_of: Mapping[str, str],
              names: Iterable[str]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {name: [] for name in names}
    for record, key in zip(records, keys, strict=True):
        out.setdefault(split_of[key], []).append(record)
    return out


def path_key(path: Path, root: Path | None) -> str:
    """How a saved split names ``path``: relative to ``root`` when it is under it."""
    if root is None:
        return Path(path).as_posix()
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:  # one absolute, one relative (an absolute CSV path, a data_root given relative)
        resolved, base = Path(path).resolve(), Path(root).resolve()
        # an image outside root (an absolute CSV path elsewhere) keeps its absolute path: root / it is it
        return (resolved.relative_to(base) if resolved.is_relative_to(base) else resolved).as_posix()

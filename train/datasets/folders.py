"""Class-per-folder (``root/<label>/*.jpg``) and re-ID folders (``root/<individual>/*.jpg``)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from train.datasets.inventory import IMAGE_EXTENSIONS, DatasetError, Inventory, parse_time
from train.records import Record

#: SpotID crop names: ``0_0_BG-102B-2019-03-01_19-49-36.jpg`` (station BG-102B) or ``0_0_9A-2013-...``.
SPOTID_FILENAME = r"^\d+_\d+_(?P<location>.+)-(?P<time>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})$"
FILENAME_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"


def read_folders(root: Path | str, *, individuals: bool = False, filename_pattern: str | None = None,
                 time_format: str = FILENAME_TIME_FORMAT) -> Inventory:
    """Read ``root/<name>/**/<image>``: ``name`` is the label, or the individual when ``individuals``.

    Args:
        root: the folder holding one sub-folder per class (or per individual).
        individuals: re-ID data: the folder names individuals, records carry no label.
        filename_pattern: regex matched against the file stem; named groups ``location``,
            ``event``, ``time`` (parsed with ``time_format``) fill the record. A stem that does not
            match is kept and reported as ``unparsed``.
        time_format: ``strptime`` format of the ``time`` group.

    Raises:
        DatasetError: ``root`` is not a folder, or a ``time`` group cannot be parsed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "root", "not a folder")
    pattern = re.compile(filename_pattern) if filename_pattern else None
    inventory = Inventory()
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            inventory.report("unlabelled", root, entry.name, "file outside any class folder")
            continue
        for path in sorted(p for p in entry.rglob("*") if p.is_file()):
            _add_file(inventory, root, entry.name, path, individuals, pattern, time_format)
    return inventory


def _add_file(inventory: Inventory, root: Path, name: str, path: Path, individuals: bool,
              pattern: re.Pattern | None, time_format: str) -> None:
    where = str(path.relative_to(root))
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        inventory.report("not_image", root, where, "extension not an image type")
        return
    fields = _parse_name(inventory, root, where, path.stem, pattern, time_format) if pattern else {}
    labels = () if individuals else (name,)
    individual = name if individuals else None
    inventory.add(Record(path, labels, individual=individual, source="folders", **fields), root, where)


def _parse_name(inventory: Inventory, root: Path, where: str, stem: str, pattern: re.Pattern,
                time_format: str) -> dict:
    match = pattern.search(stem)
    if match is None:
        inventory.report("unparsed", root, where, f"name does not match {pattern.pattern!r}")
        return {}
    groups = match.groupdict()
    fields = {key: groups[key] for key in ("location", "event") if groups.get(key)}
    if groups.get("time"):
        try:
            fields["time"] = datetime.strptime(groups["time"], time_format)
        except ValueError:
            fields["time"] = parse_time(groups["time"], root, where)
    return fields

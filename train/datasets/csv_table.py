"""CSV inventories: one path column, one or more label columns, optional event/location/time."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from train.datasets.capture_time import exif_capture_time
from train.datasets.inventory import DatasetError, Inventory, parse_time, text_lines
from train.records import Record


def read_csv(path: Path | str, image_root: Path | str | None = None, *, label_columns: Sequence[str] = ("label",),
             path_column: str = "file", event_column: str | None = None, location_column: str | None = None,
             individual_column: str | None = None, time_column: str | None = None) -> Inventory:
    """Read a labels CSV; rows naming the same image merge into one (multi-labelled) record.

    Args:
        path: the CSV file (UTF-8, or UTF-16 with a byte-order mark; header row).
        image_root: folder relative paths of the path column start from (default: the CSV's folder);
            absolute paths are taken as they are.
        label_columns: every non-empty cell among them is one label of the row.
        path_column: column holding the image path.
        event_column, location_column, individual_column, time_column: optional columns.

    Without a time cell the capture time is the image's EXIF date (``extra["time_source"]``). A path
    that does not exist is a ``missing`` problem, not an error.

    Raises:
        DatasetError: missing file, missing column, empty path cell or bad time (file and line named).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    optional = {"event": event_column, "location": location_column, "individual": individual_column}
    reader = csv.DictReader(text_lines(path))
    rows: dict[Path, dict] = {}
    try:
        _check_columns(path, reader.fieldnames or [], [path_column, *label_columns, time_column, *optional.values()])
        for line, row in enumerate(reader, start=2):
            _merge_row(rows, path, root, line, row, path_column, label_columns, optional, time_column)
    except csv.Error as err:  # a NUL byte, a field larger than csv's limit
        raise DatasetError(path, f"line {reader.line_num}", f"not CSV: {err}") from None
    return _inventory(path, rows)


def _check_columns(path: Path, header: list[str], wanted: list[str | None]) -> None:
    absent = [c for c in wanted if c is not None and c not in header]
    if absent:
        raise DatasetError(path, "line 1", f"no column(s) {absent}; header is {header}")


def _merge_row(rows: dict, path: Path, root: Path, line: int, row: dict, path_column: str,
               label_columns: Sequence[str], optional: dict, time_column: str | None) -> None:
    where = f"line {line}"
    cell = (row.get(path_column) or "").strip()
    if not cell:
        raise DatasetError(path, where, f"empty {path_column!r}")
    image = root / cell  # an absolute cell stays absolute
    labels = [row[c].strip() for c in label_columns if (row.get(c) or "").strip()]
    entry = rows.setdefault(image, {"where": where, "labels": [], "fields": {}})
    entry["labels"] += [label for label in labels if label not in entry["labels"]]
    for key, column in optional.items():
        if column and (row.get(column) or "").strip():
            entry["fields"].setdefault(key, row[column].strip())
    taken = parse_time(row.get(time_column), path, where) if time_column else None
    if taken is not None:
        entry["fields"].setdefault("time", taken)


def _inventory(path: Path, rows: dict) -> Inventory:
    inventory = Inventory()
    for image, entry in rows.items():
        if not entry["labels"] and "individual" not in entry["fields"]:
            inventory.report("unlabelled", path, entry["where"], str(image))
            continue
        fields, extra = entry["fields"], {"time_source": "column"}
        if "time" not in fields:
            fields["time"] = exif_capture_time(image)
            extra = {"time_source": "exif"} if fields["time"] else {}
        record = Record(image, tuple(entry["labels"]), source="csv", extra=extra, **fields)
        inventory.add(record, path, entry["where"])
    return inventory

"""Class-per-folder (``root/<label>/*.jpg``, ``root/<station>/<label>/*.jpg``) and re-ID folders
(``root/<individual>/*.jpg``)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path

from common.files import files_under
from train.datasets.capture_time import exif_capture_time
from train.datasets.inventory import IMAGE_EXTENSIONS, DatasetError, Inventory, Problem, parse_time
from train.records import Record

#: SpotID crop names: ``0_0_BG-102B-2019-03-01_19-49-36.jpg`` (station BG-102B) or ``0_0_9A-2013-...``.
SPOTID_FILENAME = r"^\d+_\d+_(?P<location>.+)-(?P<time>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})$"
FILENAME_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
#: Folder names that read as a station / site / camera rather than a class.
STATION_NAME = re.compile(r"^(?i:station|site|camera|cam|trap|location|loc|plot|grid|deployment)"
                          r"(?:[\s_-]*(?:[A-Z0-9][\w-]*|[a-z]))?$")  # StationA, site_3, cam12, stationa; not Camel
SIDECAR_EXTENSION = ".xmp"


def read_folders(root: Path | str, *, individuals: bool = False, filename_pattern: str | None = None,
                 time_format: str = FILENAME_TIME_FORMAT, class_level: int = 1,
                 location_level: int | None = None) -> Inventory:
    """Read ``root/.../<name>/**/<image>``: ``name`` is the label, or the individual when ``individuals``.

    Args:
        root: the folder holding the class (or individual) folders.
        individuals: re-ID data: the folder names individuals, records carry no label.
        filename_pattern: regex matched against the file stem; named groups ``location``,
            ``event``, ``time`` (parsed with ``time_format``) fill the record. A stem that does not
            match is kept and reported as ``unparsed``.
        time_format: ``strptime`` format of the ``time`` group.
        class_level: which folder below ``root`` names the class: 1 for ``<class>/``, 2 for
            camtrapR's ``<station>/<class>/``, 3 for ``<station>/<camera>/<class>/``.
        location_level: which folder below ``root`` names the station (``Record.location``, for
            splits by location); default 1 when ``class_level`` > 1, else none. A ``location``
            group of ``filename_pattern`` wins.

    Without a time from the file name, the capture time is the EXIF date (``extra["time_source"]``
    says which). With ``class_level`` 1, folders that look like stations are reported as a
    ``layout`` problem naming the option to set; the level is never guessed.

    Raises:
        DatasetError: ``root`` is not a folder, a level is out of range, or a ``time`` group cannot be parsed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "root", "not a folder")
    location_level = _check_levels(root, class_level, location_level)
    try:
        pattern = re.compile(filename_pattern) if filename_pattern else None
    except re.error as err:
        raise DatasetError(root, "filename_pattern", f"{filename_pattern!r} is not a regular expression: {err}") from None
    inventory = Inventory()
    # an XMP sidecar is metadata of its image, not a stray file
    for path in (p for p in files_under(root) if p.suffix.lower() != SIDECAR_EXTENSION):
        parts = path.relative_to(root).parts
        if len(parts) <= class_level:
            inventory.report("unlabelled", root, str(path.relative_to(root)),
                             f"file outside any class folder (class_level {class_level})")
            continue
        location = parts[location_level - 1] if location_level else None
        _add_file(inventory, root, parts[class_level - 1], location, path, individuals, pattern, time_format)
    if class_level == 1 and not individuals:
        hint = station_hint(root)
        if hint:  # first: it explains the class names that follow
            inventory.problems.insert(0, Problem("layout", root, "class_level 1", hint))
    return inventory


def _check_levels(root: Path, class_level: int, location_level: int | None) -> int | None:
    if class_level < 1:
        raise DatasetError(root, "class_level", f"{class_level}: must be 1 or more")
    if location_level is None:
        return 1 if class_level > 1 else None
    if not 1 <= location_level < class_level:
        raise DatasetError(root, "location_level", f"{location_level}: must name a folder above the class "
                                                   f"(1..{class_level - 1})")
    return location_level


def station_hint(root: Path) -> str | None:
    """Why the top folders of ``root`` look like stations rather than classes, or None.

    Either their names read as stations (``StationA``, ``site_3``, ``cam12``), or none of them holds
    an image directly and the same sub-folder names recur under several of them (``A/PBE``, ``B/PBE``).
    """
    tops = sorted(d for d in root.iterdir() if d.is_dir())
    if not tops:
        return None
    named = [d.name for d in tops if STATION_NAME.match(d.name)]
    inner = Counter(s.name for d in tops for s in d.iterdir() if s.is_dir())
    holds_images = any(f.suffix.lower() in IMAGE_EXTENSIONS for d in tops for f in d.iterdir() if f.is_file())
    recurring = sorted(name for name, n in inner.items() if n >= 2)
    if len(named) == len(tops):
        why = f"folder names look like stations ({', '.join(named[:3])})"
    elif len(tops) >= 2 and recurring and not holds_images:
        why = f"the same sub-folders ({', '.join(recurring[:3])}) recur under {len(tops)} top folders"
    else:
        return None
    return f"{why}: if the classes are one level down (Station/Species/), set class_level: 2 (inventory: --class-level 2)"


def _add_file(inventory: Inventory, root: Path, name: str, location: str | None, path: Path, individuals: bool,
              pattern: re.Pattern | None, time_format: str) -> None:
    where = str(path.relative_to(root))
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        inventory.report("not_image", root, where, "extension not an image type")
        return
    fields = fields_from_name(inventory, root, where, path.stem, pattern, time_format) if pattern else {}
    if location is not None:
        fields.setdefault("location", location)
    extra = {"time_source": "file name"} if "time" in fields else _exif_time(path, fields)
    labels = () if individuals else (name,)
    individual = name if individuals else None
    inventory.add(Record(path, labels, individual=individual, source="folders", extra=extra, **fields), root, where)


def _exif_time(path: Path, fields: dict) -> dict:
    """Fill ``fields["time"]`` from EXIF; the record's ``extra`` naming the source when found."""
    taken = exif_capture_time(path)
    if taken is None:
        return {}
    fields["time"] = taken
    return {"time_source": "exif"}


def fields_from_name(inventory: Inventory, root: Path, where: str, stem: str, pattern: re.Pattern,
                     time_format: str) -> dict:
    """``location``, ``event`` and ``time`` from the named groups of ``pattern`` in ``stem``; a stem
    that does not match is reported ``unparsed`` (the record is kept without them)."""
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

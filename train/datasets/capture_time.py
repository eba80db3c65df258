"""Where each record's capture time came from, and the warning when images have none.

Readers tag ``Record.extra["time_source"]``: ``column`` (a time column or field of the annotation
file), ``file name`` (the ``time`` group of a ``filename_pattern``) or ``exif`` (DateTimeOriginal,
else DateTime, read as the edge reads it). Training never uses the file modification time: copying
photos off a card resets it, and frames that share one are merged into a single long burst (the
21 ENA24 frames of 7 species became 2 events that way on the edge). A record without a time is
grouped by the frame number in its file name, or alone, and ``capture_time_warnings`` says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from train.records import Record

TIME_SOURCES = ("exif", "column", "file name", "none")
"""The ``time_source`` values, in report order; ``none``: no capture time."""


def exif_capture_time(path: Path) -> datetime | None:
    """The photo's EXIF DateTimeOriginal (else DateTime), or None: no EXIF date or not an image."""
    from PIL import Image, UnidentifiedImageError

    from edge.capture.decode import exif_time

    try:
        with Image.open(path) as image:
            return exif_time(image)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def time_source(record: Record) -> str:
    """``exif``, ``column``, ``file name`` or ``none`` (see the module docstring)."""
    return record.extra.get("time_source", "none") if record.time is not None else "none"


def time_source_counts(records: Iterable[Record]) -> dict[str, int]:
    """Images (not boxes) per time source, every source of ``TIME_SOURCES`` present."""
    per_image = {r.path: time_source(r) for r in records}
    counts = Counter(per_image.values())
    return {source: counts.get(source, 0) for source in TIME_SOURCES}


def capture_time_warning(name: str, records: Iterable[Record]) -> str | None:
    """One line when images of ``name`` have neither a capture time nor an event id from the source."""
    records = list(records)
    images = {r.path for r in records}
    timeless = {r.path for r in records if r.time is None and r.event is None}
    if not timeless:
        return None
    return (f"{len(timeless)} of {len(images)} images of {name} have no capture time (no EXIF date, time column or "
            "file-name time; file times are not used): bursts come from frame numbers in the file names, else one "
            "image each, so frames of one burst may land in different splits; give times or events (time_column, "
            "event_column, a filename_pattern with a (?P<time>...) group, or event_pattern for YOLO)")


def capture_time_warnings(records: Iterable[Record]) -> list[str]:
    """``capture_time_warning`` per dataset (``extra["dataset"]``, else the reader), as indented lines."""
    by_dataset: dict[str, list[Record]] = {}
    for record in records:
        by_dataset.setdefault(record.extra.get("dataset", record.source), []).append(record)
    lines = (capture_time_warning(name, members) for name, members in by_dataset.items())
    return [f"  warning: {line}" for line in lines if line]

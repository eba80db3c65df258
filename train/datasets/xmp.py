"""Species and individuals from XMP keyword tags (camtrapR-style), embedded or in ``.xmp`` sidecars.

camtrapR, digiKam, Lightroom and Timelapse-style tagging write hierarchical keywords such as
``Species|Leopard Cat`` and ``individual|L23``: in ``digiKam:TagsList`` (``/``-separated),
``lr:hierarchicalSubject`` and ``mediapro:CatalogSets`` (``|``), ``MicrosoftPhoto:LastKeywordXMP``
(``/``) and, from some tools, ``dc:subject`` (``|``). The group names (``Species``, ``individual``)
are options, matched without regard to case.

Packets are untrusted input: at most ``MAX_PACKET`` bytes, and any DTD or entity declaration is
refused before the stdlib parser sees it (no entity expansion, no external fetches).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from common.files import files_under
from train.datasets.folders import FILENAME_TIME_FORMAT, SIDECAR_EXTENSION, STATION_NAME, fields_from_name
from train.datasets.inventory import IMAGE_EXTENSIONS, DatasetError, Inventory, Problem
from train.records import Record

MAX_PACKET = 1 << 20
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
#: XMP keyword properties and the separator of their hierarchy levels.
TAG_FIELDS = {
    "{http://www.digikam.org/ns/1.0/}TagsList": "/",
    "{http://ns.adobe.com/lightroom/1.0/}hierarchicalSubject": "|",
    "{http://ns.iview-multimedia.com/mediapro/1.0/}CatalogSets": "|",
    "{http://ns.microsoft.com/photo/1.0/}LastKeywordXMP": "/",
    "{http://purl.org/dc/elements/1.1/}subject": "|",
}
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.I)
_ROOTS = (b"<x:xmpmeta", b"<x:xapmeta", b"<rdf:RDF")


class XmpError(ValueError):
    """A packet that is not read: too large, declares a DTD or entities, or is not XML."""


def hierarchical_tags(packet: bytes) -> list[tuple[str, ...]]:
    """The packet's hierarchical keywords, each split into its levels, in order, without repeats.

    Flat keywords (no separator, e.g. ``dc:subject`` ``Leopard Cat``) are left out: they name no group.

    Raises:
        XmpError: too large, a DTD / entity declaration, or malformed XML.
    """
    if len(packet) > MAX_PACKET:
        raise XmpError(f"XMP packet of {len(packet)} bytes (over {MAX_PACKET})")
    if _DECLARATION.search(packet):
        raise XmpError("XMP packet declares a DTD or entities: refused")
    starts = [i for i in (packet.find(root) for root in _ROOTS) if i >= 0]
    if not starts:
        return []
    try:
        tree = ET.fromstring(packet[min(starts):].rstrip(b"\x00 \t\r\n"))
    except ET.ParseError as err:
        raise XmpError(f"XMP is not XML: {err}") from None
    tags: list[tuple[str, ...]] = []
    for field, separator in TAG_FIELDS.items():
        for node in tree.iter(field):
            for item in node.iter(f"{RDF}li"):
                levels = tuple(level.strip() for level in (item.text or "").split(separator))
                if len(levels) > 1 and all(levels) and levels not in tags:
                    tags.append(levels)
    return tags


def tag_values(tags: list[tuple[str, ...]], group: str) -> list[str]:
    """The leaf of every tag under ``group`` (``Species``, or a path such as ``Wildlife|Species``)."""
    prefix = tuple(level.strip().casefold() for level in re.split(r"[|/]", group))
    values = []
    for levels in tags:
        if len(levels) > len(prefix) and tuple(v.casefold() for v in levels[:len(prefix)]) == prefix:
            if levels[-1] not in values:
                values.append(levels[-1])
    return values


def xmp_packet(path: Path) -> bytes | None:
    """The XMP of an image: its sidecar (``IMG.JPG.xmp`` or ``IMG.xmp``) when there is one, else the
    packet embedded in the file (JPEG APP1, PNG iTXt, WebP, TIFF), else None."""
    for sidecar in (path.with_name(path.name + SIDECAR_EXTENSION), path.with_suffix(SIDECAR_EXTENSION)):
        if sidecar.is_file():
            if sidecar.stat().st_size > MAX_PACKET:
                raise XmpError(f"sidecar {sidecar.name} over {MAX_PACKET} bytes")
            return sidecar.read_bytes()
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            packet = image.info.get("xmp")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return packet.encode("utf-8") if isinstance(packet, str) else packet


def read_xmp(root: Path | str, *, species_tag: str = "Species", individual_tag: str = "individual",
             location_level: int | None = None, filename_pattern: str | None = None) -> Inventory:
    """Read every image under ``root``, labelled by its XMP ``species_tag`` keywords (several: multi-label).

    Args:
        root: the folder of images (any depth; camtrapR keeps ``<station>/<image>``).
        species_tag, individual_tag: the keyword groups naming the species and the individual.
        location_level: which folder below ``root`` names the station (``Record.location``).
        filename_pattern: regex on the file stem, named groups ``location``, ``event``, ``time``.

    The capture time is the file name's ``time`` group, else the EXIF date. An image with neither a
    species nor an individual tag is ``unlabelled``; one with several individuals ``ambiguous``
    (kept without one); an unreadable packet ``unparsed``.

    Raises:
        DatasetError: ``root`` is not a folder or ``location_level`` is below 1.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "root", "not a folder")
    if location_level is not None and location_level < 1:
        raise DatasetError(root, "location_level", f"{location_level}: must be 1 or more")
    pattern = re.compile(filename_pattern) if filename_pattern else None
    inventory = Inventory()
    for path in (p for p in files_under(root) if p.suffix.lower() != SIDECAR_EXTENSION):
        where = str(path.relative_to(root))
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            inventory.report("not_image", root, where, "extension not an image type")
            continue
        fields = fields_from_name(inventory, root, where, path.stem, pattern, FILENAME_TIME_FORMAT) if pattern else {}
        parts = path.relative_to(root).parts
        if location_level is not None and len(parts) > location_level:
            fields.setdefault("location", parts[location_level - 1])
        _add_image(inventory, root, where, path, fields, species_tag, individual_tag)
    tops = [d.name for d in sorted(root.iterdir()) if d.is_dir()]
    if location_level is None and tops and all(STATION_NAME.match(name) for name in tops):
        inventory.problems.insert(0, Problem("layout", root, "location_level", f"folder names look like stations "
                                             f"({', '.join(tops[:3])}): set location_level: 1 to split by them"))
    return inventory


def _add_image(inventory: Inventory, root: Path, where: str, path: Path, fields: dict, species_tag: str,
               individual_tag: str) -> None:
    from train.datasets.capture_time import exif_capture_time

    try:
        packet = xmp_packet(path)
        tags = hierarchical_tags(packet) if packet else []
    except XmpError as err:
        inventory.report("unparsed", root, where, str(err))
        return
    species, individuals = tag_values(tags, species_tag), tag_values(tags, individual_tag)
    if not species and not individuals:
        inventory.report("unlabelled", root, where, f"no {species_tag!r} or {individual_tag!r} tag in its XMP"
                         if packet else "no XMP")
        return
    if len(individuals) > 1:
        inventory.report("ambiguous", root, where, f"several individuals {individuals}: kept without one")
    extra = {"time_source": "file name"} if "time" in fields else {}
    if "time" not in fields:
        fields["time"] = exif_capture_time(path)
        extra = {"time_source": "exif"} if fields["time"] else {}
    record = Record(path, tuple(species), individual=individuals[0] if len(individuals) == 1 else None,
                    source="xmp", extra=extra, **fields)
    inventory.add(record, root, where)

"""Exports of the review's result: SpotID folders + matches.csv, a Camtrap DP package, MegaDetector JSON.

Every export sees the same individuals: the connected components of confirmed links, each named
by the ground-truth folder most of its images came from (enrolled collections), else
``ind-0001``, ``ind-0002``, ... in order of first appearance. An exported image is one that has
been reviewed or linked; unreviewed, unlinked images are not identified yet and are left out. An
image reviewed without ever being compared was skipped: Camtrap DP exports it with no individual.

Devices choose many of the strings exported (device id, label, event id, source), so none is
trusted: a CSV cell that a spreadsheet would run as a formula is prefixed with ``'`` (OWASP's
rule), and file names and paths are reduced to safe relative ones (no ``..``, no absolute path).

The Camtrap DP package (``central.camtrapdp``) takes its locations, scientific names and project
metadata from the ``exports`` section of the central config.

``trapedge central export --config central.yaml --out DIR [--format spotid camtrapdp megadetector]``
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from central.config import ExportsConfig
from central.graph import build
from central.store import CentralStore, StoreError

MATCHES_COLUMNS = ["image", "matched_image", "verdict", "cosine", "individual", "decided_at"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?")


def csv_cell(value):
    """A CSV cell no spreadsheet runs: text starting with = + - @ tab or CR gets a leading ``'``.

    Numbers (and text that is exactly a number, such as a negative cosine) are left as they are.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not NUMBER.fullmatch(value):
        return "'" + value
    return value


def relative_path(*parts: str) -> str:
    """``parts`` joined as a safe relative POSIX path: no empty, ``.`` or ``..`` level, no root, no drive,
    no backslash or control character (each such character becomes ``_``)."""
    levels = [re.sub(r"[\x00-\x1f\x7f:]", "_", level) for part in parts for level in part.replace("\\", "/").split("/")]
    return "/".join(level for level in levels if level not in ("", ".", "..")) or "unnamed"


@dataclass(frozen=True)
class IdentifiedImage:
    """One exported image and the individual it belongs to."""

    sighting_id: str
    individual: str
    file_name: str
    skipped: bool = False  # reviewed, never compared, not declared new, no known identity: not an individual


def identified(store: CentralStore) -> list[IdentifiedImage]:
    """Reviewed or linked images with their individual's export name, in arrival order. An image the
    researcher declared a new individual is one; one only paged past (never compared) is ``skipped``."""
    decisions = store.decisions()
    individuals, _ = build(decisions)
    compared = {i for d in decisions for i in (d.anchor_id, d.candidate_id)} | store.declared_new()
    with store.lock:
        reviewed = {r[0] for r in store.conn.execute("SELECT id FROM sightings WHERE reviewed = 1")}
    sightings = [s for s in store.sightings() if s.id in reviewed or s.id in individuals.links]
    roots = [individuals.find(s.id) for s in sightings]
    hints: dict[str, Counter] = {}
    for s, root in zip(sightings, roots):
        hints.setdefault(root, Counter())[s.individual] += s.individual is not None
    names: dict[str, str] = {}
    for root in roots:
        best = hints[root].most_common(1)
        names.setdefault(root, best[0][0] if best and best[0][1] else f"ind-{len(names) + 1:04d}")
    taken: dict[str, set[str]] = {}  # per individual: two images never share a file name
    return [IdentifiedImage(s.id, names[root], _unique(_file_name(s), taken.setdefault(names[root], set())),
                            s.id not in compared and s.individual is None)
            for s, root in zip(sightings, roots)]


def _file_name(sighting) -> str:
    base = (sighting.name or sighting.id).replace("/", "__")
    return _safe(base if base.lower().endswith((".jpg", ".jpeg")) else f"{base}.jpg")


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... before its suffix when another took it (compared as a
    case-insensitive file system would); the one returned is taken."""
    stem, dot, suffix = name.rpartition(".") if "." in name.strip(".") else (name, "", "")
    candidate, n = name, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem}-{n}{dot}{suffix}"
    taken.add(candidate.casefold())
    return candidate


def export_spotid(store: CentralStore, out: Path) -> Path:
    """``out/<individual>/<image>.jpg`` (the crops) and ``out/matches.csv`` (every verdict)."""
    out = Path(out)
    images = identified(store)
    by_id = {i.sighting_id: i for i in images}
    taken: set[str] = set()  # two individuals never share a folder ("Spot 1" and "Spot_1", "豹一" and "豹二")
    folders = {name: _unique(_safe(name), taken) for name in dict.fromkeys(i.individual for i in images)}
    for image in images:
        sighting = store.sighting(image.sighting_id)
        if sighting.crop_jpeg is not None:
            folder = out / folders[image.individual]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / image.file_name).write_bytes(sighting.crop_jpeg)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "matches.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MATCHES_COLUMNS)
        for d in store.decisions():
            name = lambda i: by_id[i].file_name if i in by_id else i  # noqa: E731
            individual = by_id[d.anchor_id].individual if d.anchor_id in by_id else ""
            row = [name(d.anchor_id), name(d.candidate_id), d.verdict, "" if d.cosine is None else f"{d.cosine:.4f}",
                   individual, d.at]
            writer.writerow([csv_cell(cell) for cell in row])
    return out


def _safe(name: str) -> str:
    """One safe file or folder name on Linux, macOS and Windows: any script kept (a name in Chinese stays
    itself; it became ``__``), separators, control and reserved characters replaced, at most 150 bytes,
    never ``.`` or ``..``."""
    safe = name.encode("utf-8", "replace")[:150].decode("utf-8", "ignore")
    safe = re.sub(r'[\x00-\x1f\x7f<>:"/\\|?*]', "_", safe).strip(" .")
    return safe or "unnamed"


def export_camtrapdp(store: CentralStore, out: Path, settings: ExportsConfig | None = None) -> Path:
    """A Camtrap DP 1.0 package in ``out`` (``central.camtrapdp``); returns its ``datapackage.json``."""
    from central.camtrapdp import export_package  # it builds on identified() and csv_cell() above

    return export_package(store, out, settings or ExportsConfig())


def megadetector_batch(store: CentralStore) -> dict:
    """A MegaDetector batch-output dict (format 1.4): one image per identified crop, its box and individual."""
    images = []
    for image in identified(store):
        s = store.sighting(image.sighting_id)
        detection = {"category": "1", "conf": round(float(s.meta.get("confidence", 1.0)), 4),
                     "bbox": [round(float(v), 4) for v in s.meta.get("bbox", [0.0, 0.0, 1.0, 1.0])],
                     "individual_id": image.individual}
        file = relative_path(s.name) if s.name else relative_path(s.device, str(s.meta.get("source", s.id)))
        images.append({"file": file, "detections": [detection]})
    return {"info": {"format_version": "1.4", "detector": "trapedge edge detector",
                     "detection_completion_time": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")},
            "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": images}


def export_megadetector(store: CentralStore, out: Path, settings: ExportsConfig | None = None) -> Path:
    """``out/megadetector.json``."""
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / "megadetector.json"
    path.write_text(json.dumps(megadetector_batch(store), indent=1))
    return path


EXPORTERS = {"spotid": lambda st, out, settings: export_spotid(st, out / "spotid"),
             "camtrapdp": export_camtrapdp, "megadetector": export_megadetector}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trapedge central export", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="central.yaml (its store is read)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", nargs="+", choices=sorted(EXPORTERS), default=sorted(EXPORTERS))
    args = parser.parse_args(argv)
    from central.config import CentralConfig
    from common.config_loader import ConfigError, load_config

    try:
        config = load_config(args.config, CentralConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from central.camtrapdp import CamtrapExportError

    path = config.store.path
    if not path.is_file():  # a mistyped path made an empty store and overwrote the exports with nothing
        print(f"{args.config}: store.path {path} is not a file: nothing to export (check the path)", file=sys.stderr)
        return 2
    try:
        store = CentralStore(path)
    except StoreError as exc:  # a folder, another program's file, an edge store, a newer trapedge's
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    status = 0
    for name in args.format:
        try:
            print(f"{name}: {EXPORTERS[name](store, args.out, config.exports)}")
        except CamtrapExportError as exc:  # the other formats are still written
            print(f"{name}: not written: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())

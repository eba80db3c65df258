"""``trapedge inventory``: what training would read from a folder or a training config, without training.

Per dataset: its format, images, classes with counts, individuals, stations, where capture times
come from, and the problems met (the same lines training prints). Nothing is decoded beyond the
image headers (EXIF dates, XMP tags), so it runs in seconds on a laptop before a long training run.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from common.files import files_under
from train.config import BoxSource, SpeciesSource, TrainingConfig, box_inventory, load_training_config, species_inventory
from train.datasets import DatasetError, Inventory, time_source_counts
from train.datasets.capture_time import capture_time_warning
from train.datasets.inventory import IMAGE_EXTENSIONS, problem_lines, read_json

SPECIES_FORMATS = ("csv", "folders", "xmp", "coco", "megadetector", "camtrap_dp")
BOX_ONLY_FORMATS = ("voc", "yolo")
LISTED = 40  # classes listed one per line before "… and N more"
LISTED_GROUPS = 12  # individuals or stations listed
XMP_SAMPLE = 10  # images looked at when telling an XMP-tagged folder from a class-folder tree


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Show what training would read, without training: for each dataset its format, image "
                          "count, classes with counts, individuals, stations, where capture times come from (EXIF, "
                          "a column, the file name, or none), and the problems found. Give a folder or file (its "
                          "format is detected and printed; --format overrides), or --config with a training YAML.")
    parser.add_argument("path", nargs="?", type=Path, metavar="DIR",
                        help="dataset folder or annotation file (CSV, COCO / MegaDetector JSON, Camtrap DP folder, "
                             "class folders, XMP-tagged photos, VOC, YOLO)")
    parser.add_argument("--config", type=Path, help="training YAML: every species, re-ID and box source in it")
    parser.add_argument("--format", choices=SPECIES_FORMATS + BOX_ONLY_FORMATS, help="the DIR's format (default: detected)")
    parser.add_argument("--boxes", action="store_true", help="read DIR as detector box data (megadetector, coco, "
                                                             "camtrap_dp)")
    parser.add_argument("--class-level", type=int, default=1, help="folders: folder level naming the class (2 for "
                                                                   "camtrapR Station/Species/)")
    parser.add_argument("--location-level", type=int, help="folders / xmp: folder level naming the station")
    parser.add_argument("--species-tag", default="Species", help="xmp: keyword group of the species (default Species)")
    parser.add_argument("--individual-tag", default="individual", help="xmp: keyword group of the individual")
    parser.add_argument("--path-column", default="file", help="CSV: image path column (default file)")
    parser.add_argument("--label-columns", nargs="+", default=["label"], help="CSV: label column(s) (default label)")
    parser.add_argument("--time-column", help="CSV: capture time column")
    parser.add_argument("--limit", type=int, default=20, help="problem lines shown per dataset (default 20)")


def run(args: argparse.Namespace) -> int:
    if (args.path is None) == (args.config is None):
        print("inventory: give a DIR or --config TRAIN.yaml (not both)", file=sys.stderr)
        return 2
    try:
        readers = _config_readers(load_training_config(args.config)) if args.config else _dir_readers(args)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"inventory: {exc}", file=sys.stderr)
        return 2
    readable, failures = 0, []
    for heading, read in readers:
        try:
            name, inventory = read()
        except (DatasetError, FileNotFoundError) as exc:
            failures.append(str(exc))
            if len(readers) > 1:  # the others may still be read; alone, the one line below says it
                print(f"{heading}\n  cannot be read: {exc}\n")
            continue
        readable += bool(len(inventory))
        print("\n".join(describe(heading, name, inventory, args.limit)) + "\n")
    if not readable:
        print(f"inventory: nothing readable{': ' + failures[0] if failures else ' (no images with a label)'}",
              file=sys.stderr)
        return 2
    return 0


Reader = tuple[str, Callable[[], tuple[str, Inventory]]]


def _config_readers(config: TrainingConfig) -> list[Reader]:
    """One reader per species, re-ID and box source of the config, each headed by its role and format."""
    from train.datasets import SPOTID_FILENAME, read_folders

    def reid(source) -> Callable[[], tuple[str, Inventory]]:
        pattern = SPOTID_FILENAME if source.filename_pattern == "spotid" else source.filename_pattern
        return lambda: (source.name or str(source.path),
                        read_folders(config.resolve(source.path), individuals=True, filename_pattern=pattern))

    readers: list[Reader] = []
    readers += [(f"species  {s.name or s.path}  ({s.format})", lambda s=s: species_inventory(config, s))
                for s in config.species]
    readers += [(f"re-ID    {s.name or s.path}  (folders per individual)", reid(s))
                for s in [*config.reid_train, *config.reid_eval]]
    readers += [(f"boxes    {s.name or s.path}  ({s.format})", lambda s=s: box_inventory(config, s))
                for s in config.boxes]
    return readers


def _dir_readers(args: argparse.Namespace) -> list[Reader]:
    """The one reader of a DIR: its format given or detected (and the heading says which)."""
    path = args.path.resolve()
    if not path.exists():
        raise FileNotFoundError(f"{args.path}: not found")
    fmt, why = (args.format, "given") if args.format else detect_format(path)
    config = TrainingConfig(data_root=path.parent)
    try:
        if args.boxes or fmt in BOX_ONLY_FORMATS:
            boxes = BoxSource(format=fmt, path=path)
            return [(f"boxes    {args.path}  ({fmt}, {why})", lambda: box_inventory(config, boxes))]
        source = SpeciesSource(format=fmt, path=path, class_level=args.class_level, location_level=args.location_level,
                               species_tag=args.species_tag, individual_tag=args.individual_tag,
                               path_column=args.path_column, label_columns=args.label_columns,
                               time_column=args.time_column, name=str(args.path))
    except ValidationError as exc:  # an option out of range: named as typed, not as pydantic's field
        problem = exc.errors(include_url=False)[0]
        raise ValueError(f"--{str(problem['loc'][0]).replace('_', '-')}: {problem['msg']}") from None
    return [(f"species  {args.path}  ({fmt}, {why})", lambda: species_inventory(config, source))]


def detect_format(path: Path) -> tuple[str, str]:
    """The format of a dataset file or folder, and what gave it away.

    Raises:
        DatasetError: a JSON file that is neither COCO Camera Traps nor MegaDetector output.
    """
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = read_json(path)
            if "annotations" in data:
                return "coco", "detected: JSON with annotations"
            if "detection_categories" in data:
                return "megadetector", "detected: JSON with detection_categories"
            raise DatasetError(path, "top level", "neither COCO (annotations) nor MegaDetector (detection_categories)")
        return "csv", "detected: a file; --format for another"
    if (path / "datapackage.json").is_file():
        return "camtrap_dp", "detected: datapackage.json"
    if (path / "Annotations").is_dir():
        return "voc", "detected: Annotations/"
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "yolo", "detected: images/ + labels/"
    tagged = _xmp_tagged(path)
    if tagged:
        return "xmp", f"detected: XMP species tags in {tagged}; --format folders reads folder names instead"
    return "folders", "detected: no annotation file; --format for another"


def _xmp_tagged(root: Path) -> str | None:
    """``"k of n sampled images"`` when some of the first images carry a ``Species|...`` XMP keyword."""
    from train.datasets.xmp import XmpError, hierarchical_tags, tag_values, xmp_packet

    sample = []
    for path in files_under(root):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            sample.append(path)
            if len(sample) == XMP_SAMPLE:
                break
    tagged = 0
    for path in sample:
        try:
            packet = xmp_packet(path)
            tagged += bool(packet and tag_values(hierarchical_tags(packet), "Species"))
        except XmpError:
            continue
    return f"{tagged} of {len(sample)} sampled images" if tagged else None


def describe(heading: str, name: str, inventory: Inventory, limit: int = 20) -> list[str]:
    """The inventory of one dataset as aligned text lines."""
    records = list(inventory)
    images = {r.path for r in records}
    boxes = sum(r.bbox is not None for r in records)
    lines = [heading, _row("images", f"{len(images)}" + (f"  ({boxes} boxes)" if boxes else ""))]
    classes = Counter("+".join(r.labels) for r in records if r.labels)
    lines += _listing("classes", classes, LISTED) if classes or not records else [_row("classes", "none (individuals)")]
    individuals = Counter(r.individual for r in records if r.individual)
    lines += _listing("individuals", individuals, LISTED_GROUPS) if individuals else [_row("individuals", "none")]
    stations = Counter(r.location for r in records if r.location)
    lines += _listing("stations", stations, LISTED_GROUPS) if stations else [_row("stations", "none (no location)")]
    events = {r.event for r in records if r.event}
    if events:
        lines.append(_row("events", f"{len(events)} given by the source"))
    times = time_source_counts(records)
    lines.append(_row("capture time", ", ".join(f"{source} {n}" for source, n in times.items())))
    warning = capture_time_warning(name, records) if records and classes else None  # re-ID: split by individual
    if warning:
        lines.append(f"  warning: {warning}")
    lines.append(_row("problems", _problem_counts(inventory)))
    lines += problem_lines(inventory.problems, limit=limit)
    return lines


def _row(label: str, value: str) -> str:
    return f"  {label:<14}{value}"


def _listing(label: str, counts: Counter, limit: int) -> list[str]:
    """``label  N`` then one ``name  count`` line each, most first (ties by name), at most ``limit``."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    width = max((len(str(key)) for key, _ in ranked[:limit]), default=0)
    lines = [_row(label, str(len(counts)))]
    lines += [f"    {key:<{width}}  {n:>6}" for key, n in ranked[:limit]]
    if len(ranked) > limit:
        lines.append(f"    … and {len(ranked) - limit} more")
    return lines


def _problem_counts(inventory: Inventory) -> str:
    counts = inventory.problem_counts()
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) if counts else "none"

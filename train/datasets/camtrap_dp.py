"""Camtrap DP 1.0 packages: ``datapackage.json`` + deployments, media and observations CSVs."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from train.datasets.inventory import DatasetError, Inventory, check_bbox, parse_time, read_json, text_lines
from train.records import Record

#: observationType → label for the types that carry no scientificName.
TYPE_LABELS = {"blank": "empty", "human": "human", "vehicle": "vehicle"}
#: observationTypes that name no class: reported, not read.
UNCLASSIFIED = {"unknown", "unclassified"}
BBOX_COLUMNS = ("bboxX", "bboxY", "bboxWidth", "bboxHeight")
#: observationTypes a detector box can be of (``human`` → person, ``vehicle`` → vehicle).
BOX_TYPES = ("animal", "human", "vehicle")


def read_camtrap_dp(package_dir: Path | str) -> Inventory:
    """Read a Camtrap DP package into records.

    Media-level observations with a box give one record per box; those without a box and
    event-level observations (matched to the deployment's media inside ``eventStart``..``eventEnd``)
    merge into one image-level record per media file. ``location`` is the deployment's
    ``locationID`` (the ``deploymentID`` when absent), ``event`` the ``eventID``. Remote (URL) and
    non-image media, and unclassified observations, are reported.

    Raises:
        DatasetError: missing package file or column, unknown media/deployment id, bad box or time.
    """
    package_dir = Path(package_dir)
    tables = _tables(package_dir)
    locations = {row["deploymentID"]: row.get("locationID") or row["deploymentID"] for _, row in tables["deployments"]}
    media = {row["mediaID"]: (line, row) for line, row in tables["media"]}
    obs_file = package_dir / _resource_paths(package_dir)["observations"]
    image_level: dict[str, tuple[list[str], dict]] = {}
    inventory = Inventory()
    for line, obs in tables["observations"]:
        where = f"line {line} ({obs.get('observationID', '?')})"
        label = _label(obs)
        if label is None:
            inventory.report("unlabelled", obs_file, where, f"observationType {obs.get('observationType')!r}")
            continue
        if obs.get("deploymentID") not in locations:
            raise DatasetError(obs_file, where, f"unknown deploymentID {obs.get('deploymentID')!r}")
        if not obs.get("mediaID"):
            _event_level(inventory, obs_file, where, obs, label, tables["media"], image_level)
        elif obs["mediaID"] not in media:
            raise DatasetError(obs_file, where, f"unknown mediaID {obs['mediaID']!r}")
        elif _has_box(obs):
            box = check_bbox(tuple(float(obs[k]) for k in BBOX_COLUMNS), obs_file, where)
            _emit(inventory, package_dir, media[obs["mediaID"]], [label], obs, locations, box)
        else:
            _collect(image_level, obs["mediaID"], label, obs)
    for media_id, (labels, obs) in image_level.items():
        _emit(inventory, package_dir, media[media_id], labels, obs, locations, None)
    return inventory


def _resource_paths(package_dir: Path) -> dict[str, str]:
    descriptor = package_dir / "datapackage.json"
    if not descriptor.is_file():
        raise DatasetError(descriptor, "file", "not found: not a Camtrap DP package")
    resources = read_json(descriptor).get("resources", [])
    if not isinstance(resources, list):
        raise DatasetError(descriptor, "resources", "not a list of resources")
    paths = {r["name"]: r["path"] for r in resources
             if isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("path"), str)}
    return {name: paths.get(name, f"{name}.csv") for name in ("deployments", "media", "observations")}


def _tables(package_dir: Path) -> dict[str, list[tuple[int, dict]]]:
    needed = {"deployments": ["deploymentID"], "media": ["mediaID", "deploymentID", "timestamp", "filePath"],
              "observations": ["deploymentID", "mediaID", "eventID", "observationType", "scientificName"]}
    tables = {}
    for name, relative in _resource_paths(package_dir).items():
        path = package_dir / relative
        if not path.is_file():
            raise DatasetError(path, "file", f"{name} table not found")
        reader = csv.DictReader(text_lines(path))
        try:
            absent = [c for c in needed[name] if c not in (reader.fieldnames or [])]
            if absent:
                raise DatasetError(path, "line 1", f"no column(s) {absent}")
            tables[name] = list(enumerate(reader, start=2))
        except csv.Error as err:  # a NUL byte, a field larger than csv's limit
            raise DatasetError(path, f"line {reader.line_num}", f"not CSV: {err}") from None
    return tables


def _label(obs: dict) -> str | None:
    kind = (obs.get("observationType") or "").strip()
    if kind in UNCLASSIFIED:
        return None
    if kind == "animal":
        return (obs.get("scientificName") or "").strip() or None
    return (obs.get("scientificName") or "").strip() or TYPE_LABELS.get(kind) or kind or None


def _has_box(obs: dict) -> bool:
    return all((obs.get(k) or "").strip() for k in BBOX_COLUMNS)


def _collect(image_level: dict, media_id: str, label: str, obs: dict) -> None:
    labels, _ = image_level.setdefault(media_id, ([], obs))
    if label not in labels:
        labels.append(label)


def _event_level(inventory: Inventory, obs_file: Path, where: str, obs: dict, label: str, media_rows: list,
                 image_level: dict) -> None:
    start = parse_time(obs.get("eventStart"), obs_file, where)
    end = parse_time(obs.get("eventEnd"), obs_file, where)
    matched = [row["mediaID"] for _, row in media_rows
               if row["deploymentID"] == obs["deploymentID"] and _within(row["timestamp"], start, end)]
    if not matched:
        inventory.report("unmatched", obs_file, where, f"event {obs.get('eventID')!r}: no media in {start}..{end}")
    for media_id in matched:
        _collect(image_level, media_id, label, obs)


def _within(timestamp: str, start: datetime | None, end: datetime | None) -> bool:
    moment = parse_time(timestamp, Path("media.csv"), "timestamp")
    return start is not None and end is not None and moment is not None and start <= moment <= end


def _emit(inventory: Inventory, package_dir: Path, media_entry: tuple[int, dict], labels: list[str], obs: dict,
          locations: dict, box) -> None:
    line, media = media_entry
    media_file, where = package_dir / "media.csv", f"line {line} ({media['mediaID']})"
    file_path = media["filePath"].strip()
    if "://" in file_path:
        inventory.report("remote", media_file, where, file_path)
        return
    if not (media.get("fileMediatype") or "image/").startswith("image/"):
        inventory.report("not_image", media_file, where, f"{file_path} ({media['fileMediatype']})")
        return
    taken = parse_time(media.get("timestamp"), media_file, where)
    extra = {"observation": obs.get("observationID"), "deployment": media["deploymentID"]}
    record = Record(package_dir / file_path, tuple(labels), bbox=box, individual=obs.get("individualID") or None,
                    location=locations.get(media["deploymentID"]), event=obs.get("eventID") or None,
                    time=taken, source="camtrap_dp", extra={**extra, "time_source": "column"} if taken else extra)
    inventory.add(record, media_file, where)


def read_camtrap_dp_boxes(package_dir: Path | str, *, empty_label: str = "empty") -> Inventory:
    """Read a Camtrap DP package as detector data: one record per media-level box.

    Labels: ``human`` and ``vehicle`` observations are ``human`` / ``vehicle`` (whatever their
    ``scientificName``), animals their ``scientificName`` (``animal`` when blank), so each maps to its
    detector class. A media file whose observations are all ``blank`` is one ``empty_label``
    record. A media file with an unclassified observation (``unlabelled``), or an animal, human or
    vehicle observation without a box whose label has no box in that file (``unboxed``), is left
    out whole: its unboxed object would teach the detector that it is background (an unboxed
    observation of a boxed label is taken as the same animal, classified twice). Event-level
    observations carry no boxes and are reported ``unboxed``.

    Raises:
        DatasetError: as ``read_camtrap_dp``.
    """
    package_dir = Path(package_dir)
    tables = _tables(package_dir)
    locations = {row["deploymentID"]: row.get("locationID") or row["deploymentID"] for _, row in tables["deployments"]}
    media = {row["mediaID"]: (line, row) for line, row in tables["media"]}
    obs_file = package_dir / _resource_paths(package_dir)["observations"]
    per_media: dict[str, list[tuple[str, dict]]] = {}
    inventory = Inventory()
    for line, obs in tables["observations"]:
        where = f"line {line} ({obs.get('observationID', '?')})"
        if not obs.get("mediaID"):
            inventory.report("unboxed", obs_file, where, "event-level observation: no box, not read")
        elif obs["mediaID"] not in media:
            raise DatasetError(obs_file, where, f"unknown mediaID {obs['mediaID']!r}")
        else:
            per_media.setdefault(obs["mediaID"], []).append((where, obs))
    for media_id, observations in per_media.items():
        _emit_boxes(inventory, package_dir, obs_file, media[media_id], observations, locations, empty_label)
    return inventory


def _emit_boxes(inventory: Inventory, package_dir: Path, obs_file: Path, media_entry: tuple[int, dict],
                observations: list[tuple[str, dict]], locations: dict, empty_label: str) -> None:
    boxes, unboxed = [], []
    for where, obs in observations:
        kind = (obs.get("observationType") or "").strip()
        if kind == "blank":
            continue
        if kind not in BOX_TYPES:
            inventory.report("unlabelled", obs_file, where, f"observationType {kind!r}: its media is left out")
            return
        label = ((obs.get("scientificName") or "").strip() or "animal") if kind == "animal" else kind
        if _has_box(obs):
            boxes.append((label, check_bbox(tuple(float(obs[k]) for k in BBOX_COLUMNS), obs_file, where), obs))
        else:
            unboxed.append((where, label))
    boxed_labels = {label for label, _, _ in boxes}
    for where, label in unboxed:
        if label not in boxed_labels:
            inventory.report("unboxed", obs_file, where, f"{label} without a box: its media is left out")
            return
    for label, box, obs in boxes:
        _emit(inventory, package_dir, media_entry, [label], obs, locations, box)
    if not boxes and not unboxed:
        _emit(inventory, package_dir, media_entry, [empty_label], observations[0][1], locations, None)

"""A Camtrap DP 1.0 data package of the review's result: deployments, media and observations.

One deployment per device (its location from ``exports.deployments``, its start and end the first
and last exported frame), one media row per frame, one observation per exported crop. Times are
the frames' capture times (EXIF or file name, as the device read them) with their UTC offset; a
time without an offset (enrolled collections carry none) is taken as UTC. ``scientificName``
comes from ``exports.scientific_names``; a label without one is exported ``unclassified`` with the
label kept in ``observationTags``. An image the reviewer skipped (reviewed, never compared) is an
observation without ``individualID``.
"""

from __future__ import annotations

import csv
import json
import mimetypes
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from central.config import ExportsConfig
from central.exports import IdentifiedImage, csv_cell, identified, relative_path
from central.ingest import Sighting, instant
from central.store import CentralStore

VERSION_URL = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/"
PROFILE = VERSION_URL + "camtrap-dp-profile.json"
RESOURCES = ("deployments", "media", "observations")
DEPLOYMENT_COLUMNS = [
    "deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
    "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay", "cameraHeight",
    "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance", "timestampIssues", "baitUse", "featureType",
    "habitat", "deploymentGroups", "deploymentTags", "deploymentComments",
]
MEDIA_COLUMNS = ["mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
                 "fileMediatype", "exifData", "favorite", "mediaComments"]
OBSERVATION_COLUMNS = [
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior", "individualID",
    "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth",
    "bboxHeight", "classificationMethod", "classifiedBy", "classificationTimestamp", "classificationProbability",
    "observationTags", "observationComments",
]
MEDIA_IDS = uuid.UUID("7c1f0a4e-2b8d-4f5e-9a61-3d2c8b7e4f10")


class CamtrapExportError(ValueError):
    """The package cannot be made valid (a device without a location, nothing to export)."""


@dataclass(frozen=True)
class ExportedImage:
    """One exported crop: its sighting, individual and the frame (media) it came from."""

    sighting: Sighting
    image: IdentifiedImage
    media_id: str
    timestamp: str


def camtrap_time(frame_time: str) -> str:
    """``YYYY-MM-DDThh:mm:ss±hh:mm`` (seconds, offset kept; no offset: UTC)."""
    return instant(frame_time).replace(microsecond=0).isoformat()


def media_path(device: str, source: str) -> str:
    """A relative path Camtrap DP accepts: no leading ``.``, ``/`` or ``~``, no ``..`` anywhere."""
    path = re.sub(r"\.{2,}", "_", relative_path(device, source))
    return re.sub(r"^[./~]+", "_", path)


def exported_images(store: CentralStore) -> list[ExportedImage]:
    """The identified crops, each with its frame's media id and capture time."""
    result = []
    for image in identified(store):
        s = store.sighting(image.sighting_id)
        media_id = str(uuid.uuid5(MEDIA_IDS, f"{s.device}/{_frame(s)}"))
        result.append(ExportedImage(s, image, media_id, camtrap_time(s.frame_time)))
    return result


def _frame(s: Sighting) -> str:
    """The frame a crop came from: an enrolled image's file name, else ``<capture source>/<capture time>``
    (devices send no file name, so the media path names the frame by where and when it was taken)."""
    return s.name or f"{s.meta.get('source') or 'frame'}/{s.frame_time}"


def observation_rows(images: list[ExportedImage], settings: ExportsConfig) -> list[dict]:
    """Observation rows, one per exported crop, in the 1.0 column order."""
    return [_observation(e, settings) for e in images]


def _observation(e: ExportedImage, settings: ExportsConfig) -> dict:
    s, label = e.sighting, e.sighting.label
    name = settings.scientific_names.get(label) if label else None
    x, y, w, h = s.meta.get("bbox") or ["", "", "", ""]
    return {**dict.fromkeys(OBSERVATION_COLUMNS, ""),
            "observationID": s.id, "deploymentID": s.device, "mediaID": e.media_id, "eventID": s.event_id,
            "eventStart": e.timestamp, "eventEnd": e.timestamp, "observationLevel": "media",
            "observationType": "animal" if name else "unclassified", "scientificName": name or "", "count": 1,
            "individualID": "" if e.image.skipped else e.image.individual, "bboxX": x, "bboxY": y, "bboxWidth": w,
            "bboxHeight": h, "classificationMethod": "human", "classifiedBy": "trapedge central review",
            "observationTags": f"label:{label}" if label and not name else ""}


def media_rows(images: list[ExportedImage], settings: ExportsConfig) -> list[dict]:
    """One media row per frame (several crops of one frame share it)."""
    rows: dict[str, dict] = {}
    for e in images:
        path = media_path(e.sighting.device, _frame(e.sighting))
        rows.setdefault(e.media_id, {
            **dict.fromkeys(MEDIA_COLUMNS, ""), "mediaID": e.media_id, "deploymentID": e.sighting.device,
            "captureMethod": settings.capture_method, "timestamp": e.timestamp, "filePath": path,
            "filePublic": "false", "fileName": path.rsplit("/", 1)[-1],
            # frames are still images; the edge reads JPEG, PNG, TIFF... (JPEG when the name says nothing)
            "fileMediatype": _image_type(path)})
    return list(rows.values())


def _image_type(path: str) -> str:
    guessed = mimetypes.guess_type(path)[0]
    return guessed if guessed and guessed.startswith("image/") else "image/jpeg"


def deployment_rows(images: list[ExportedImage], settings: ExportsConfig) -> list[dict]:
    """One deployment per device, from its first to its last exported frame.

    Raises:
        CamtrapExportError: a device has no ``exports.deployments`` entry (Camtrap DP requires a location).
    """
    times: dict[str, list[str]] = {}
    for e in images:
        times.setdefault(e.sighting.device, []).append(e.timestamp)
    missing = sorted(set(times) - set(settings.deployments))
    if missing:
        raise CamtrapExportError(f"Camtrap DP needs a location for every device: add exports.deployments entries "
                                 f"(latitude, longitude) for {', '.join(map(repr, missing))}")
    rows = []
    for device, stamps in times.items():
        site = settings.deployments[device]
        ordered = sorted(stamps, key=datetime.fromisoformat)
        rows.append({**dict.fromkeys(DEPLOYMENT_COLUMNS, ""), "deploymentID": device,
                     "locationName": site.location_name or "", "latitude": site.latitude, "longitude": site.longitude,
                     "coordinateUncertainty": site.coordinate_uncertainty or "", "deploymentStart": ordered[0],
                     "deploymentEnd": ordered[-1], "cameraID": device})
    return rows


def descriptor(deployments: list[dict], observations: list[dict], settings: ExportsConfig) -> dict:
    """``datapackage.json``: the 1.0 profile, the required metadata and the three resources."""
    names = sorted({row["scientificName"] for row in observations if row["scientificName"]})
    moments = [datetime.fromisoformat(row[key]) for row in deployments for key in ("deploymentStart", "deploymentEnd")]
    return {
        "profile": PROFILE,
        "name": "trapedge-review",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "title": f"{settings.project_title}: reviewed sightings",
        "contributors": [{"title": name, "role": "contributor"} for name in settings.contributors],
        "project": {"title": settings.project_title, "samplingDesign": settings.sampling_design,
                    "captureMethod": [settings.capture_method], "individualAnimals": True,
                    "observationLevel": ["media"]},
        "spatial": spatial(deployments),
        "temporal": {"start": min(moments).date().isoformat(), "end": max(moments).date().isoformat()},
        "taxonomic": [{"scientificName": name} for name in names],
        "resources": [{"name": name, "path": f"{name}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8", "schema": f"{VERSION_URL}{name}-table-schema.json"}
                      for name in RESOURCES],
    }


def spatial(deployments: list[dict]) -> dict:
    """GeoJSON of the deployments: their point, or the box around them."""
    lons = [row["longitude"] for row in deployments]
    lats = [row["latitude"] for row in deployments]
    if min(lons) == max(lons) and min(lats) == max(lats):
        return {"type": "Point", "coordinates": [lons[0], lats[0]]}
    west, east, south, north = min(lons), max(lons), min(lats), max(lats)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """``rows`` under a header of ``columns``, every cell made inert for spreadsheets."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)


def export_package(store: CentralStore, out: Path, settings: ExportsConfig) -> Path:
    """``out/datapackage.json`` and its ``deployments.csv``, ``media.csv`` and ``observations.csv``.

    Raises:
        CamtrapExportError: nothing to export, or a device without a location; nothing is written then.
    """
    images = exported_images(store)
    if not images:
        raise CamtrapExportError("no reviewed or linked images to export: a Camtrap DP package needs one")
    deployments = deployment_rows(images, settings)
    observations = observation_rows(images, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "deployments.csv", DEPLOYMENT_COLUMNS, deployments)
    write_csv(out / "media.csv", MEDIA_COLUMNS, media_rows(images, settings))
    write_csv(out / "observations.csv", OBSERVATION_COLUMNS, observations)
    path = out / "datapackage.json"
    path.write_text(json.dumps(descriptor(deployments, observations, settings), indent=2, ensure_ascii=False))
    return path

"""Exports that standard tools accept: the Camtrap DP 1.0 package validated by frictionless, MegaDetector
batch output validated against its schema and MegaDetector's extra checks. No network: every URL the
validation fetches is answered from the copies in tests/data/camtrap_dp_1.0 (see its README)."""

import csv
import io
import json
import shutil
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from urllib3 import HTTPResponse

from central import camtrapdp, exports
from central.config import DeploymentSite, ExportsConfig
from central.ingest import parse, sighting_of
from central.review import decide
from central.store import CentralStore
from common.megadetector import batch_problems
from edge.wire.messages import Box, EmbeddingMessage, Picture
from trapedge.cli import main

frictionless = pytest.importorskip("frictionless")

VENDORED = Path(__file__).parent / "data" / "camtrap_dp_1.0"
PREFIX = "trapedge"
SCIENTIFIC = {"leopard": "Panthera pardus"}
SITES = {"trap-01": DeploymentSite(latitude=-24.99, longitude=31.59, location_name="Sabi Sand"),
         "trap-02": DeploymentSite(latitude=-25.01, longitude=31.62)}
SETTINGS = ExportsConfig(project_title="Leopard ID test", scientific_names=SCIENTIFIC, deployments=SITES)


# Two fixes to the vendored files as served (see tests/data/camtrap_dp_1.0/README.md): the 1.0 profile's
# malformed JSON pointer "#$defs/version", which current jsonschema refuses (fixed upstream after 1.0), and the
# datapackage-py copy of the v1 Data Package profile, older than the published one that lets a resource's
# schema be a URL (Camtrap DP requires a URL there).
SERVED_FIXES = {
    camtrapdp.PROFILE: [(b'"#$defs/version"', b'"#/$defs/version"')],
    "https://frictionlessdata.io/schemas/data-package.json": [
        (b'"description": "A schema for this resource.",\n            "type": "object"',
         b'"description": "A schema for this resource.",\n            "type": ["string", "object"]')],
}


def served_urls() -> dict[str, Path]:
    geojson = Path(frictionless.__file__).parent / "assets" / "profiles" / "geojson.json"
    return {camtrapdp.PROFILE: VENDORED / "camtrap-dp-profile.json",
            **{f"{camtrapdp.VERSION_URL}{n}-table-schema.json": VENDORED / f"{n}-table-schema.json"
               for n in camtrapdp.RESOURCES},
            "https://frictionlessdata.io/schemas/data-package.json": VENDORED / "data-package.json",
            "http://json.schemastore.org/geojson.json": geojson}


class VendoredFiles(requests.adapters.BaseAdapter):
    """Answers the known schema URLs from local files and refuses every other request."""

    def __init__(self, urls: dict[str, Path]):
        super().__init__()
        self.urls, self.asked = urls, []

    def send(self, request, **kwargs):
        self.asked.append(request.url)
        if request.url not in self.urls:
            raise requests.ConnectionError(f"no network in tests: {request.url}")
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url, request
        body = self.urls[request.url].read_bytes()
        for old, new in SERVED_FIXES.get(request.url, []):
            assert old in body, f"{request.url}: the vendored copy changed, review SERVED_FIXES"
            body = body.replace(old, new)
        response.raw = HTTPResponse(body=io.BytesIO(body), preload_content=False)
        return response

    def close(self):
        pass


def validate_package(datapackage: Path):
    """frictionless's report on the package (profile JSON Schema, table schemas, foreign keys), offline."""
    adapter = VendoredFiles(served_urls())
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    with frictionless.system.use_context(http_session=session):
        report = frictionless.validate(str(datapackage))
    assert camtrapdp.PROFILE in adapter.asked  # the Camtrap DP profile itself was checked
    return report


def errors_of(report) -> list:
    return report.flatten(["type", "note"])


# --- a central store filled the way devices fill it ----------------------------------------------

def crop_of(path: Path) -> Picture:
    image = Image.open(path).convert("RGB")
    image.thumbnail((96, 96))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return Picture(buffer.getvalue(), *image.size)


def arrive(store: CentralStore, crop: Picture, *, device: str, label: str, frame_time: datetime,
           bbox=(0.1, 0.2, 0.3, 0.4), seed: int = 0) -> str:
    payload = EmbeddingMessage(
        device=device, event_id=f"ev-{frame_time:%H%M}", source_id="sd", frame_time=frame_time,
        box=Box(bbox, 0.9, label, 0.8, "classifier"), vector=np.random.default_rng(seed).normal(size=16),
        model="m", model_version="1", crop=crop).to_json()
    message = parse(f"{PREFIX}/{device}/embedding", json.dumps(payload).encode(), PREFIX)
    assert not hasattr(message, "reason"), message
    store.add_message(message, store.claim_id(sighting_of(message)))
    return payload["id"]


@pytest.fixture
def review(tmp_path, data):
    """Six real leopard crops from two traps: two linked, one rejected then new, a second box of the
    same frame, a label without a scientific name, and one skipped."""
    folder = data / "reid" / "leopard_spotid" / "crops" / "BRL17_Left"
    crops = [crop_of(p) for p in sorted(folder.glob("*.jpg"))[:6]]
    sast, utc = timezone(timedelta(hours=2)), timezone.utc
    store = CentralStore(tmp_path / "central.db")
    first = datetime(2026, 5, 1, 6, 12, 30, 250000, tzinfo=sast)
    ids = {
        "a": arrive(store, crops[0], device="trap-01", label="leopard", frame_time=first, seed=1),
        "a2": arrive(store, crops[1], device="trap-01", label="leopard", frame_time=first, bbox=(0.6, 0.5, 0.2, 0.3),
                     seed=2),
        "b": arrive(store, crops[2], device="trap-01", label="leopard", frame_time=first + timedelta(days=1), seed=3),
        "c": arrive(store, crops[3], device="trap-02", label="serval", frame_time=datetime(2026, 5, 3, 1, tzinfo=utc),
                    seed=4),
        "skip": arrive(store, crops[4], device="trap-02", label="leopard",
                       frame_time=datetime(2026, 5, 4, 2, tzinfo=utc), seed=5),
        "unseen": arrive(store, crops[5], device="trap-02", label="leopard",
                         frame_time=datetime(2026, 5, 5, 2, tzinfo=utc), seed=6),
    }
    decide(store, ids["b"], ids["a"], "match")
    decide(store, ids["a2"], ids["a"], "no_match")
    store.mark_reviewed(ids["a2"])
    decide(store, ids["c"], ids["a"], "no_match")
    store.mark_reviewed(ids["c"])
    store.mark_reviewed(ids["skip"])  # "Next anchor" without a verdict: skipped
    yield store, ids
    store.close()


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- Camtrap DP ----------------------------------------------------------------------------------

def test_camtrapdp_package_validates_with_frictionless(review, tmp_path):
    store, ids = review
    datapackage = exports.export_camtrapdp(store, tmp_path / "dp", SETTINGS)
    report = validate_package(datapackage)
    assert report.valid, errors_of(report)
    assert {task.name: task.stats["rows"] for task in report.tasks} == {"deployments": 2, "media": 4, "observations": 5}


def test_camtrapdp_rows_follow_the_review(review, tmp_path):
    store, ids = review
    out = exports.export_camtrapdp(store, tmp_path / "dp", SETTINGS).parent
    observations = {row["observationID"]: row for row in read_csv(out / "observations.csv")}
    assert set(observations) == {ids[k] for k in ids if k != "unseen"}  # never reviewed nor linked: not exported
    individual = {key: observations[ids[key]]["individualID"] for key in ("a", "a2", "b", "c", "skip")}
    assert individual["a"] == individual["b"] != ""
    assert len({individual["a"], individual["a2"], individual["c"]}) == 3
    assert individual["skip"] == ""  # skipped in review: an observation, not an individual
    assert observations[ids["a"]]["scientificName"] == "Panthera pardus"
    assert observations[ids["a"]]["observationType"] == "animal"
    serval = observations[ids["c"]]
    assert (serval["scientificName"], serval["observationType"], serval["observationTags"]) == ("", "unclassified",
                                                                                             "label:serval")
    assert observations[ids["a"]]["eventStart"] == "2026-05-01T06:12:30+02:00"  # the frame's time, its offset kept
    assert observations[ids["c"]]["eventEnd"] == "2026-05-03T01:00:00+00:00"
    assert observations[ids["a"]]["mediaID"] == observations[ids["a2"]]["mediaID"]  # two boxes, one frame
    deployments = {row["deploymentID"]: row for row in read_csv(out / "deployments.csv")}
    assert (deployments["trap-01"]["deploymentStart"], deployments["trap-01"]["deploymentEnd"]) == (
        "2026-05-01T06:12:30+02:00", "2026-05-02T06:12:30+02:00")
    assert float(deployments["trap-01"]["latitude"]) == -24.99
    package = json.loads((out / "datapackage.json").read_text())
    assert package["taxonomic"] == [{"scientificName": "Panthera pardus"}]
    assert package["temporal"] == {"start": "2026-05-01", "end": "2026-05-04"}
    assert package["spatial"]["type"] == "Polygon"


def drop_column(path: Path, column: str) -> None:
    rows = read_csv(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [c for c in rows[0] if c != column])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k != column} for row in rows)


def edit_descriptor(path: Path, change) -> None:
    descriptor = json.loads(path.read_text())
    change(descriptor)
    path.write_text(json.dumps(descriptor))


@pytest.mark.parametrize("breakage, expected_error", [
    (lambda dp: drop_column(dp / "deployments.csv", "latitude"), "missing-label"),
    (lambda dp: drop_column(dp / "media.csv", "filePublic"), "missing-label"),
    (lambda dp: edit_descriptor(dp / "datapackage.json", lambda d: d.pop("taxonomic")), "package-error"),
    (lambda dp: edit_descriptor(dp / "datapackage.json", lambda d: d["project"].update(captureMethod=["camera"])),
     "package-error"),
    (lambda dp: (dp / "observations.csv").write_text((dp / "observations.csv").read_text().replace(",media,", ",frame,")),
     "constraint-error"),
])
def test_a_broken_package_fails_validation(review, tmp_path, breakage, expected_error):
    store, _ = review
    out = exports.export_camtrapdp(store, tmp_path / "dp", SETTINGS).parent
    breakage(out)
    report = validate_package(out / "datapackage.json")
    assert not report.valid
    assert expected_error in {error[0] for error in errors_of(report)}, errors_of(report)


@pytest.mark.parametrize("settings, expectation", [
    (SETTINGS, does_not_raise()),
    (ExportsConfig(deployments={"trap-01": SITES["trap-01"]}), pytest.raises(camtrapdp.CamtrapExportError, match="trap-02")),
])
def test_every_exported_device_needs_a_location(review, tmp_path, settings, expectation):
    with expectation:
        exports.export_camtrapdp(review[0], tmp_path / "dp", settings)


@pytest.mark.parametrize("frame_time, expected", [
    ("2026-05-01T06:12:30.999+02:00", "2026-05-01T06:12:30+02:00"),
    ("2026-05-01T06:12:30Z", "2026-05-01T06:12:30+00:00"),
    ("1970-01-01T00:00:00", "1970-01-01T00:00:00+00:00"),  # enrolled collections: no offset, taken as UTC
])
def test_camtrap_times_carry_an_offset(frame_time, expected):
    assert camtrapdp.camtrap_time(frame_time) == expected


@pytest.mark.parametrize("device, source, expected", [
    ("trap-01", "sd/2026-05-01T06:12:30+02:00", "trap-01/sd/2026-05-01T06_12_30+02_00"),
    ("~cam", "../x..y/.z", "_cam/x_y/.z"),
])
def test_media_paths_fit_the_camtrap_pattern(device, source, expected):
    assert camtrapdp.media_path(device, source) == expected


# --- MegaDetector --------------------------------------------------------------------------------

def test_central_megadetector_batch_is_valid(review):
    store, _ = review
    document = json.loads(json.dumps(exports.megadetector_batch(store)))  # as written to disk
    assert batch_problems(document) == []
    assert len(document["images"]) == 5


@pytest.fixture(scope="module")
def detect_output(data, bundle_dir, tmp_path_factory) -> dict:
    """``trapedge detect`` on real frames plus an unreadable one (a failure entry)."""
    folder = tmp_path_factory.mktemp("incoming")
    shutil.copy(data / "frames" / "autofocus_gallery" / "coyote1.jpg", folder / "coyote.jpg")
    shutil.copy(data / "frames" / "ena24_small" / "8831.jpg", folder / "bear.jpg")
    (folder / "zero.jpg").write_bytes(b"")
    out = folder / "results.json"
    assert main(["detect", str(folder), "--bundle", str(bundle_dir), "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_edge_detect_output_is_valid(detect_output):
    assert batch_problems(detect_output) == []
    assert any(image.get("failure") for image in detect_output["images"])
    assert any(d.get("classifications") for image in detect_output["images"] for d in image["detections"] or [])


def _set(path: str, value):
    def change(document):
        *parents, last = path.split("/")
        node = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return change


@pytest.mark.parametrize("change, problem", [
    (_set("images/0/detections/0/category", "99"), "not in detection_categories"),
    (_set("images/0/detections/0/bbox", [0.8, 0.1, 0.5, 0.2]), "outside the image"),
    (_set("images/0/detections/0/bbox", [0.1, 0.1, 1.5, 0.2]), "greater than the maximum"),
    (_set("images/0/detections/0/conf", 1), "not a float"),
    (_set("images/0/detections/0/classifications/0/0", "999"), "not in classification_categories"),
    (_set("info/format_version", 1.6), "is not valid under any of the given schemas"),
    (_set("images/0/failure", "could not read"), "is not of type 'null'"),
    (lambda d: d.pop("detection_categories"), "'detection_categories' is a required property"),
])
def test_a_broken_megadetector_document_fails(detect_output, change, problem):
    document = json.loads(json.dumps(detect_output))
    first = next(i for i, image in enumerate(document["images"]) if image["detections"] and
                 image["detections"][0].get("classifications"))
    document["images"].insert(0, document["images"].pop(first))
    change(document)
    problems = batch_problems(document)
    assert any(problem in p for p in problems), problems


def test_an_image_declared_a_new_individual_is_exported_as_one_until_undone(review, tmp_path):
    store, ids = review
    store.finish(ids["skip"])  # "New individual" on the review page: no candidate was this animal
    rows = {row["observationID"]: row for row in read_csv(exports.export_camtrapdp(store, tmp_path / "dp", SETTINGS)
                                                              .parent / "observations.csv")}
    others = {rows[ids[key]]["individualID"] for key in ("a", "a2", "c")}
    assert rows[ids["skip"]]["individualID"] not in others | {""}
    store.undo()
    rows = {row["observationID"]: row for row in read_csv(exports.export_camtrapdp(store, tmp_path / "dp2", SETTINGS)
                                                              .parent / "observations.csv")}
    assert rows[ids["skip"]]["individualID"] == ""


@pytest.mark.parametrize("store, said", [
    ("typo/central.db", "is not a file: nothing to export (check the path)"),  # made an empty store, then
    (".", "is not a file: nothing to export"),  # overwrote the exports with nothing (exit 0)
    ("junk.db", "junk.db is not a SQLite database: move it aside"),  # was a sqlite3 traceback
])
def test_export_from_a_store_path_that_is_wrong_writes_nothing_and_says_why(tmp_path, capsys, store, said):
    (tmp_path / "junk.db").write_text("notes, not a database\n")
    (tmp_path / "central.yaml").write_text(f"store: {{path: {tmp_path / store}}}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "megadetector.json").write_text('{"images": ["an earlier export"]}')
    assert main(["central", "export", "--config", str(tmp_path / "central.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err
    assert not (tmp_path / "typo").exists()
    assert (tmp_path / "out" / "megadetector.json").read_text() == '{"images": ["an earlier export"]}'

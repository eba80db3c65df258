"""Dataset readers, label map and summary, checked against the real files in ../shared/data."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timezone
from pathlib import Path

import pytest

from train.datasets import (
    SPOTID_FILENAME,
    DatasetError,
    format_summary,
    read_camtrap_dp,
    read_class_names,
    read_coco_camera_traps,
    read_csv,
    read_folders,
    read_megadetector,
    read_voc,
    read_yolo,
    save_summary,
    summarise,
)
from train.labelmap import LabelMap, LabelMapError
from train.records import Record


def _csv_rows(path: Path) -> list[list[str]]:
    """The CSV's data rows, read with the plain csv module (the independent expectation)."""
    with path.open(newline="") as handle:
        return list(csv.reader(handle))[1:]


# --- class / re-ID folders -------------------------------------------------------------------------------

def test_leopard_crops_as_individuals_with_station_and_time(data):
    root = data / "reid/leopard_spotid/crops"
    inventory = read_folders(root, individuals=True, filename_pattern=SPOTID_FILENAME)
    expected = {d: len(os.listdir(root / d)) for d in os.listdir(root)}
    assert Counter(r.individual for r in inventory) == expected
    assert inventory.problems == [] and all(r.labels == () for r in inventory)
    record = next(r for r in inventory if r.path.name == "0_0_BG-102B-2019-03-01_19-49-36.jpg")
    assert (record.individual, record.location) == ("BGL09_right", "BG-102B")
    assert record.time == datetime(2019, 3, 1, 19, 49, 36)
    short = next(r for r in inventory if r.path.name == "0_0_9A-2013-12-06_19-58-55.jpg")
    assert short.location == "9A"


def test_class_folders_report_strays_and_unparsed_names(data, tmp_path):
    source = sorted((data / "frames/animl_samples").glob("*.jpg"))
    (tmp_path / "fox").mkdir()
    (tmp_path / "fox/a.jpg").symlink_to(source[0].resolve())
    (tmp_path / "fox/notes.txt").write_text("x")
    (tmp_path / "stray.jpg").symlink_to(source[1].resolve())
    inventory = read_folders(tmp_path, filename_pattern=r"(?P<location>\d+)")
    assert [(r.path.name, r.labels, r.location) for r in inventory] == [("a.jpg", ("fox",), None)]
    assert sorted(p.kind for p in inventory.problems) == ["not_image", "unlabelled", "unparsed"]


def test_folders_root_must_exist(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        read_folders(tmp_path / "nope")


def test_class_folder_linked_in_is_read_and_a_link_loop_is_walked_once(data, tmp_path):
    # a class kept elsewhere (a NAS) and linked in was dropped without a word; a link to a parent loops
    source = sorted((data / "frames/animl_samples").glob("*.jpg"))
    elsewhere = tmp_path / "nas/deer"
    elsewhere.mkdir(parents=True)
    (elsewhere / "d.jpg").symlink_to(source[0].resolve())
    root = tmp_path / "photos"
    (root / "fox").mkdir(parents=True)
    (root / "fox/f.jpg").symlink_to(source[1].resolve())
    (root / "deer").symlink_to(elsewhere, target_is_directory=True)
    (root / "fox/again").symlink_to(root, target_is_directory=True)
    inventory = read_folders(root)
    assert [(r.path.relative_to(root).as_posix(), r.labels) for r in inventory] == [
        ("deer/d.jpg", ("deer",)), ("fox/f.jpg", ("fox",))]


# --- CSV ------------------------------------------------------------------------------------------------

def test_mlwic_csv_matches_the_file(data):
    path = data / "species/mlwic_ca01/labels.csv"
    inventory = read_csv(path, label_columns=["label"], path_column="file")
    assert {(r.path.name, r.label) for r in inventory} == {(Path(f).name, lab) for f, lab in _csv_rows(path)}
    assert len(inventory) == 1307 and inventory.missing == []


def test_ena24_csv(data):
    path = data / "frames/ena24_small/labels.csv"
    inventory = read_csv(path, path_column="filepath")
    assert Counter(r.label for r in inventory) == Counter(lab for _, lab in _csv_rows(path))
    assert all(r.path.parent == path.parent for r in inventory)


def test_multilabel_csv_with_events_merges_rows_and_reports_missing(data, tmp_path):
    images = data / "frames/ena24_small"
    path = tmp_path / "labels.csv"
    path.write_text("path,species,other,burst,cam\n"
                    "2480.jpg,opossum,,b1,c1\n"
                    "2595.jpg,opossum,human,b1,c1\n"
                    "2480.jpg,skunk,,b1,c1\n"
                    "gone.jpg,fox,,b2,c2\n"
                    "596.jpg,,,b3,c2\n")
    inventory = read_csv(path, images, label_columns=["species", "other"], path_column="path",
                         event_column="burst", location_column="cam")
    got = {r.path.name: (r.labels, r.event, r.location) for r in inventory}
    assert got == {"2480.jpg": (("opossum", "skunk"), "b1", "c1"), "2595.jpg": (("opossum", "human"), "b1", "c1")}
    assert [(p.kind, p.entry) for p in inventory.problems] == [("missing", "line 5"), ("unlabelled", "line 6")]


@pytest.mark.parametrize("text, kwargs, expectation", [
    ("file,label\na.jpg,x\n", {}, does_not_raise()),
    ("file,label\na.jpg,x\n", {"label_columns": ["species"]},
     pytest.raises(DatasetError, match=r"bad\.csv: line 1: no column")),
    ("file,label\na.jpg,x\n,y\n", {}, pytest.raises(DatasetError, match=r"bad\.csv: line 3: empty 'file'")),
    ("file,label,when\na.jpg,x,yesterday\n", {"time_column": "when"},
     pytest.raises(DatasetError, match="line 2: bad date")),
])
def test_csv_errors_name_file_and_line(tmp_path, text, kwargs, expectation):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with expectation:
        inventory = read_csv(path, **kwargs)
        assert [p.kind for p in inventory.problems] == ["missing"]


# --- COCO Camera Traps ----------------------------------------------------------------------------------

def test_ena24_coco(data):
    folder = data / "frames/ena24_small"
    inventory = read_coco_camera_traps(folder / "coco_annotations.json")
    expected = {f: lab for f, lab in _csv_rows(folder / "labels.csv")}
    assert {r.path.name: r.label for r in inventory} == expected
    first = next(r for r in inventory if r.path.name == "2480.jpg")
    assert first.bbox == pytest.approx((1 / 1920, 11 / 1080, 111 / 1920, 10 / 1080))


def _coco_ct(tmp_path: Path, data: Path, **changes) -> Path:
    doc = {
        "images": [
            {"id": "a", "file_name": "2480.jpg", "width": 1920, "height": 1080, "seq_id": "s1", "location": 7,
             "datetime": "2019-06-01 10:00:00"},
            {"id": "b", "file_name": "2595.jpg", "width": 1920, "height": 1080, "seq_id": "s1", "location": 7},
            {"id": "c", "file_name": "596.jpg", "width": 1920, "height": 1080, "seq_id": "s2", "location": 8},
            {"id": "d", "file_name": "missing.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": "a", "category_id": 1, "bbox": [192, 108, 960, 540]},
            {"id": 2, "image_id": "a", "category_id": 1, "bbox": [0, 0, 192, 108]},
            {"id": 3, "image_id": "b", "category_id": 0},
            {"id": 4, "image_id": "b", "category_id": 2},
            {"id": 5, "image_id": "d", "category_id": 0},
        ],
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "opossum"}, {"id": 2, "name": "human"}],
    }
    for key, value in changes.items():
        doc[key] = value
    path = tmp_path / "cct.json"
    path.write_text(json.dumps(doc, indent=1))
    for image in ("2480.jpg", "2595.jpg", "596.jpg"):
        (tmp_path / image).symlink_to((data / "frames/ena24_small" / image).resolve())
    return path


def test_coco_camera_traps_fields(data, tmp_path):
    inventory = read_coco_camera_traps(_coco_ct(tmp_path, data))
    got = [(r.path.name, r.labels, r.bbox, r.event, r.location) for r in inventory]
    assert got == [
        ("2480.jpg", ("opossum",), pytest.approx((0.1, 0.1, 0.5, 0.5)), "s1", "7"),
        ("2480.jpg", ("opossum",), pytest.approx((0.0, 0.0, 0.1, 0.1)), "s1", "7"),
        ("2595.jpg", ("empty", "human"), None, "s1", "7"),
    ]
    assert inventory[0].time == datetime(2019, 6, 1, 10)
    assert [(p.kind, p.entry) for p in inventory.problems] == [("unannotated", "images[2]"), ("missing", "images[3]")]


@pytest.mark.parametrize("annotations, message", [
    ([{"id": 1, "image_id": "zz", "category_id": 1}], r"annotations\[0\]: unknown image_id"),
    ([{"id": 1, "image_id": "a", "category_id": 9}], r"annotations\[0\]: unknown category_id"),
    ([{"id": 1, "image_id": "a", "category_id": 1, "bbox": [1800, 0, 400, 10]}], r"annotations\[0\]: box"),
])
def test_coco_errors_name_the_entry(data, tmp_path, annotations, message):
    with pytest.raises(DatasetError, match=message):
        read_coco_camera_traps(_coco_ct(tmp_path, data, annotations=annotations))


@pytest.mark.parametrize("section, entry, message", [
    ("images", {"id": "a", "file_name": "596.jpg", "width": 1920, "height": 1080},
     r"images\[4\]: id 'a' is already images\[0\]'s"),
    ("categories", {"id": 1, "name": "raccoon"}, r"categories\[3\]: id 1 is already categories\[1\]'s"),
])
def test_coco_repeated_id_is_refused(data, tmp_path, section, entry, message):
    # the second entry took the first's annotations (or name) without a word: opossum boxes on 596.jpg
    path = _coco_ct(tmp_path, data)
    doc = json.loads(path.read_text())
    doc[section].append(entry)
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=message):
        read_coco_camera_traps(path)


def test_coco_not_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n "images": [\n oops')
    with pytest.raises(DatasetError, match=r"broken\.json: line 3"):
        read_coco_camera_traps(path)


# --- MegaDetector ---------------------------------------------------------------------------------------

def test_ena24_megadetector_top_classification(data):
    folder = data / "frames/ena24_small"
    inventory = read_megadetector(folder / "md_annotations.json", threshold=0.8)
    expected = {f: lab.lower().replace(" ", "_") for f, lab in _csv_rows(folder / "labels.csv")}
    assert {r.path.name: r.label for r in inventory} == expected
    assert all(r.bbox is not None and r.extra["conf"] >= 0.8 for r in inventory)


def test_megadetector_threshold_failures_and_category_labels(data, tmp_path):
    doc = {"detection_categories": {"1": "animal", "2": "person"}, "images": [
        {"file": "2480.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.3, 0.4]},
                                            {"category": "2", "conf": 0.6, "bbox": [0.5, 0.5, 0.1, 0.1]},
                                            {"category": "1", "conf": 0.1, "bbox": [0, 0, 0.1, 0.1]}]},
        {"file": "2595.jpg", "detections": []},
        {"file": "596.jpg", "failure": "Failure image access"},
    ]}
    path = tmp_path / "md.json"
    path.write_text(json.dumps(doc))
    inventory = read_megadetector(path, data / "frames/ena24_small", threshold=0.5, category_labels={"person": "human"})
    assert [(r.path.name, r.label, r.bbox) for r in inventory] == [
        ("2480.jpg", "animal", (0.1, 0.2, 0.3, 0.4)),
        ("2480.jpg", "human", (0.5, 0.5, 0.1, 0.1)),
        ("2595.jpg", "empty", None),
    ]
    assert [(p.kind, p.entry) for p in inventory.problems] == [("failure", "images[2]")]
    with pytest.raises(DatasetError, match="threshold"):
        read_megadetector(path, threshold=1.5)


# --- Pascal VOC -----------------------------------------------------------------------------------------

def test_wbia_voc(data):
    root = data / "boxes/wbia_voc"
    inventory = read_voc(root)
    names = Counter()
    for xml in (root / "Annotations").glob("*.xml"):
        found = re.findall(r"<name>(.*?)</name>", xml.read_text())
        names.update(found or ["empty"])
    assert Counter(r.label for r in inventory) == names
    text = (root / "Annotations/2014_000003.xml").read_text()
    w, h = (float(re.search(f"<{k}>(.*?)</{k}>", text).group(1)) for k in ("width", "height"))
    x0, y0, x1, y1 = (float(re.search(f"<{k}>(.*?)</{k}>", text).group(1)) for k in ("xmin", "ymin", "xmax", "ymax"))
    giraffe = next(r for r in inventory if r.label == "giraffe")
    assert giraffe.bbox == pytest.approx((x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h))
    assert inventory.problems == []


def test_voc_bad_xml_names_file_and_line(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/x.xml").write_text("<annotation>\n<filename>x.jpg</filename>\n<size>\n</annotation>")
    with pytest.raises(DatasetError, match=r"x\.xml: line 4"):
        read_voc(tmp_path)


# --- YOLO -----------------------------------------------------------------------------------------------

def _yolo_truth(root: Path) -> tuple[list[str], Counter, int, int, int]:
    """Class names, boxes per class name (a line repeated in its file counted once), empty label files,
    repeated lines and label files without an image, read with plain string splitting (the
    independent expectation)."""
    names = (root / "classes.txt").read_text().split()
    boxes, empty, repeated, orphans = Counter(), 0, 0, 0
    for label_file in (root / "labels").rglob("*.txt"):
        rows = [line.split() for line in label_file.read_text().splitlines() if line.strip()]
        if not (root / "images" / label_file.relative_to(root / "labels")).with_suffix(".JPG").is_file():
            orphans += 1
            continue
        empty += not rows
        distinct = {tuple(float(v) for v in row) for row in rows}
        repeated += len(rows) - len(distinct)
        boxes.update(names[int(row[0])] for row in distinct)
    return names, boxes, empty, repeated, orphans


def test_missouri_camtraps_yolo(data):
    root = data / "boxes/missouri_camtraps"
    inventory = read_yolo(root, empty_files="unlabelled", event_pattern=r"^(SEQ\d+)_")
    names, boxes, empty, repeated, orphans = _yolo_truth(root)
    assert Counter(r.label for r in inventory) == boxes and sum(boxes.values()) > 700
    assert repeated > 100  # the source repeats some boxes two or three times: each animal is kept once
    assert inventory.problem_counts() == {"unlabelled": empty, "duplicate": repeated, "missing": orphans}
    record = inventory[0]
    cls, cx, cy, w, h = (root / "labels" / record.path.parent.name / (record.path.stem + ".txt")).read_text().split()[:5]
    assert record.label == names[int(cls)] and record.source == "yolo"
    assert record.bbox == pytest.approx((float(cx) - float(w) / 2, float(cy) - float(h) / 2, float(w), float(h)))
    assert record.event == record.path.name.split("_")[0] and record.event.startswith("SEQ")
    assert len({r.event for r in inventory}) >= 60  # 4 sequences per species: what a leak-free split needs


def _yolo_dataset(data: Path, tmp: Path, label_text: str | None, classes: str = "classes.txt") -> Path:
    """A one-image YOLO dataset made of a real Missouri frame, with the given label file (None: none)."""
    source = data / "boxes/missouri_camtraps"
    image = next((source / "images" / "Agouti").glob("*.JPG"))
    (tmp / "images" / "a").mkdir(parents=True)
    (tmp / "labels" / "a").mkdir(parents=True)
    (tmp / "images" / "a" / image.name).write_bytes(image.read_bytes())
    if classes == "classes.txt":
        (tmp / "classes.txt").write_text("agouti\nperson\n")
    else:
        (tmp / "data.yaml").write_text("names: {0: agouti, 1: person}\n")
    if label_text is not None:
        (tmp / "labels" / "a" / (image.stem + ".txt")).write_text(label_text)
    return tmp


@pytest.mark.parametrize(
    ("label_text", "kwargs", "expected", "expectation"),
    [
        ("1 0.5 0.5 0.2 0.4\n", {}, [("person", (0.4, 0.3, 0.2, 0.4))], does_not_raise()),
        ("0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.2 0.2", {"classes": "data.yaml"},
         [("agouti", (0.4, 0.3, 0.2, 0.4)), ("person", (0.0, 0.0, 0.2, 0.2))], does_not_raise()),
        ("", {}, [("empty", None)], does_not_raise()),
        ("", {"empty_files": "unlabelled"}, [], does_not_raise()),
        (None, {}, [], does_not_raise()),
        ("0 0.5 0.5 0.2\n", {}, None, pytest.raises(DatasetError, match=r"\.txt: line 1: expected 'class cx cy w h'")),
        ("0 0.5 0.5 0.2 0.4\n2 0.5 0.5 0.2 0.4\n", {}, None,
         pytest.raises(DatasetError, match=r"line 2: class 2 is not in the 2 class names")),
        ("0 0.95 0.5 0.2 0.4\n", {}, None, pytest.raises(DatasetError, match="not a normalised")),
        ("a 0.5 0.5 0.2 0.4\n", {}, None, pytest.raises(DatasetError, match="not numbers")),
        # NaN passed every bound of the box check, and IoU against it is NaN
        ("0 nan 0.5 0.2 0.4\n", {}, None, pytest.raises(DatasetError, match=r"line 1: box \[nan, .* not a normalised")),
    ],
)
def test_yolo_lines(data, tmp_path, label_text, kwargs, expected, expectation):
    root = _yolo_dataset(data, tmp_path, label_text, kwargs.pop("classes", "classes.txt"))
    with expectation:
        inventory = read_yolo(root, **kwargs)
        got = [(r.label, r.bbox) for r in inventory]
        assert [label for label, _ in got] == [label for label, _ in expected]
        for (_, box), (_, want) in zip(got, expected):
            assert box == (None if want is None else pytest.approx(want))
        kinds = inventory.problem_counts()
        assert kinds == ({"unannotated": 1} if label_text is None else
                         {"unlabelled": 1} if kwargs.get("empty_files") == "unlabelled" else {})


def test_a_repeated_yolo_line_is_one_box_and_reported(data, tmp_path):
    root = _yolo_dataset(data, tmp_path, "0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4")
    inventory = read_yolo(root)
    assert [r.label for r in inventory] == ["agouti", "person"]  # same place, other class: another object
    assert [(p.kind, p.entry) for p in inventory.problems] == [("duplicate", "line 3"), ("duplicate", "line 4")]


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_text("names: [agouti, person\n"), r"data\.yaml: line \d: not YAML"),
    (lambda p: p.write_text("- agouti\n- person\n"), r"data\.yaml: names: a list of class names"),
    # a gap shifted every later name onto the wrong id; mixed key types were a TypeError
    (lambda p: p.write_text("names: {0: deer, 2: fox}\n"), r"names: index: name for each class id 0 to 1"),
    (lambda p: p.write_text("names: {0: cat, dog: 1}\n"), r"names: index: name for each class id 0 to 1"),
    (lambda p: p.write_text('names: {"0": agouti, "1": person}\n'), None),  # quoted ids are ids
])
def test_a_yolo_data_yaml_that_does_not_say_names_is_one_line(tmp_path, write, message):
    """A broken or list-shaped data.yaml was a YAML or Attribute error traceback."""
    (tmp_path / "images").mkdir()
    write(tmp_path / "data.yaml")
    if message is None:
        assert read_class_names(tmp_path) == ["agouti", "person"]
        return
    with pytest.raises(DatasetError, match=message):
        read_yolo(tmp_path)


@pytest.mark.parametrize("encoded, expectation", [
    (lambda text: text.encode("utf-8-sig"), does_not_raise()),
    (lambda text: text.encode("utf-16"), does_not_raise()),  # Excel's 'Unicode Text'
    (lambda text: text.encode("utf-32"), does_not_raise()),
    (lambda text: text.replace("\n", "\r").encode(), does_not_raise()),  # an old Mac spreadsheet's line ends
    (lambda text: text.encode("cp1252"),
     pytest.raises(DatasetError, match=r"labels\.csv: line 2: not UTF-8 text \(byte 0xe9\): save it as UTF-8")),
    (lambda text: text.encode("utf-16-le"),  # read as UTF-8 it was a header of 'f\x00i\x00l\x00e\x00'
     pytest.raises(DatasetError, match=r"line 1: a NUL character: UTF-16 or UTF-32 text without a byte-order mark")),
])
def test_a_csv_is_read_in_the_encodings_a_spreadsheet_announces_and_refused_in_one_line_otherwise(
        tmp_path, encoded, expectation):
    """A CSV in a Windows code page (accented species names) was a UnicodeDecodeError traceback."""
    (tmp_path / "labels.csv").write_bytes(encoded("file,label\na.jpg,Cerf élaphe\n"))
    with expectation:
        inventory = read_csv(tmp_path / "labels.csv")
        assert [(p.kind, p.detail) for p in inventory.problems] == [("missing", str(tmp_path / "a.jpg"))]


def test_camtrap_dp_descriptor_of_the_wrong_shape_is_one_line(tmp_path):
    (tmp_path / "datapackage.json").write_text('[{"resources": []}]')
    with pytest.raises(DatasetError, match=r"datapackage\.json: top level: not a JSON object"):
        read_camtrap_dp(tmp_path)
    (tmp_path / "datapackage.json").write_text('{"resources": {"media": "media.csv"}}')
    with pytest.raises(DatasetError, match=r"datapackage\.json: resources: not a list"):
        read_camtrap_dp(tmp_path)
    (tmp_path / "datapackage.json").write_text('{"resources": [{"name": ["media"], "path": "m.csv"}]}')
    with pytest.raises(DatasetError, match=r"deployments\.csv: file: deployments table not found"):
        read_camtrap_dp(tmp_path)  # a name that is no string was a TypeError


def test_yolo_needs_class_names(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="classes.txt: not found"):
        read_yolo(tmp_path)


def test_yolo_box_source_in_the_training_config(data, tmp_path):
    from train.config import TrainingConfig, read_boxes

    config = TrainingConfig.model_validate({
        "data_root": str(data), "species": [], "boxes": [{
            "format": "yolo", "path": "boxes/missouri_camtraps", "empty_files": "unlabelled",
            "event_pattern": "^(SEQ\\d+)_"}]})
    # without a name, the source is named after the folder (per-source reports)
    records = read_boxes(config)
    assert records and all(r.source == "missouri_camtraps" and r.event for r in records)


# --- Camtrap DP -----------------------------------------------------------------------------------------

def test_camtrap_dp_fixture_reports_every_unusable_media(data):
    inventory = read_camtrap_dp(data / "formats/camtrap_dp_small")
    assert len(inventory) == 0  # the package ships no image files
    assert sorted((p.kind, p.entry) for p in inventory.problems) == [
        ("missing", "line 2 (m1)"), ("missing", "line 2 (m1)"), ("missing", "line 3 (m2)"), ("missing", "line 4 (m3)"),
        ("not_image", "line 6 (m5)"), ("remote", "line 5 (m4)"), ("unmatched", "line 7 (obs6)")]


def test_camtrap_dp_with_images(data, tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    for name in os.listdir(data / "formats/camtrap_dp_small"):
        (package / name).write_bytes((data / "formats/camtrap_dp_small" / name).read_bytes())
    stand_ins = {"small_cat.jpg": "2480.jpg", "wild_dog_jackal.jpg": "4383.jpg", "chimpanzee_bonobo.jpeg": "49.jpg"}
    for name, real in stand_ins.items():
        (package / name).symlink_to((data / "frames/ena24_small" / real).resolve())
    inventory = read_camtrap_dp(package)
    got = sorted(((r.path.name, r.labels, r.bbox, r.location, r.event) for r in inventory), key=str)
    assert got == sorted([
        ("small_cat.jpg", ("Felis catus",), (0.1, 0.2, 0.3, 0.4), "loc1", "evt1"),
        ("small_cat.jpg", ("Felis catus",), None, "loc1", "evt7"),
        ("wild_dog_jackal.jpg", ("Canis aureus",), (0.05, 0.15, 0.25, 0.35), "loc1", "evt2"),
        ("chimpanzee_bonobo.jpeg", ("Pan",), (0.2, 0.25, 0.4, 0.5), "loc2", "evt3"),
    ], key=str)
    assert inventory[0].time == datetime(2020, 5, 30, 4, 57, 37, tzinfo=timezone.utc)
    assert sorted(p.kind for p in inventory.problems) == ["not_image", "remote", "unmatched"]


def test_camtrap_dp_unknown_media_id(data, tmp_path):
    for name in os.listdir(data / "formats/camtrap_dp_small"):
        (tmp_path / name).write_bytes((data / "formats/camtrap_dp_small" / name).read_bytes())
    obs = tmp_path / "observations.csv"
    obs.write_text(obs.read_text().replace(",dep1,m2,", ",dep1,m99,"))
    with pytest.raises(DatasetError, match=r"observations\.csv: line 3 \(obs2\): unknown mediaID"):
        read_camtrap_dp(tmp_path)


# --- label map ------------------------------------------------------------------------------------------

MAP = {"rename": {"Virginia Opossum": "opossum", "Human": "person", "Bobcat": "cat", "Mountain  lion": "cat"},
       "drop": ["Vehicle"], "priority": ["person > empty", "* > empty"]}


@pytest.mark.parametrize("labels, keep_multilabel, expected, reason", [
    (("Virginia Opossum",), False, ("opossum",), None),
    ((" virginia   OPOSSUM ",), False, ("opossum",), None),
    (("Bobcat", "Mountain lion"), False, ("cat",), None),
    (("Human", "Empty"), False, ("person",), None),
    (("Elk", "Empty"), False, ("elk",), None),
    (("Empty",), False, ("empty",), None),
    (("Elk", "Cattle"), False, None, "multi-label"),
    (("Elk", "Cattle", "Empty"), True, ("elk", "cattle"), None),
    (("Vehicle",), False, None, "dropped label"),
    (("Vehicle", "Human"), False, ("person",), None),
    ((), False, None, "unlabelled"),
])
def test_labelmap_table(labels, keep_multilabel, expected, reason):
    record = Record(Path("x.jpg"), labels)
    kept, report = LabelMap.from_dict(MAP).apply([record], keep_multilabel=keep_multilabel)
    assert [r.labels for r in kept] == ([expected] if expected else [])
    assert [d.reason for d in report.items] == ([reason] if reason else [])


@pytest.mark.parametrize("rules, labels, expected", [
    (["human > *"], ("elk", "human", "empty"), ("human",)),
    (["human > empty"], ("elk", "empty"), ("elk", "empty")),
    (["* > empty"], ("empty",), ("empty",)),
])
def test_priority_rules(rules, labels, expected):
    assert LabelMap.from_dict({"priority": rules}).map_labels(labels) == expected


@pytest.mark.parametrize("mapping, expectation", [
    ({"priority": ["human empty"]}, pytest.raises(LabelMapError, match="human empty")),
    ({"priority": ["empty > Empty"]}, pytest.raises(LabelMapError, match="cannot beat itself")),
    ({"renames": {}}, pytest.raises(LabelMapError, match="renames")),
    ({"rename": ["a"]}, pytest.raises(LabelMapError, match="rename")),
    ({}, does_not_raise()),
])
def test_labelmap_validation(mapping, expectation):
    with expectation:
        LabelMap.from_dict(mapping)


def test_labelmap_yaml_on_mlwic(data, tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("rename:\n  Human: person\n  Bobcat: cat\n  Mountain lion: cat\ndrop: [Vehicle]\n")
    kept, report = LabelMap.load(path).apply(read_csv(data / "species/mlwic_ca01/labels.csv"))
    raw = Counter(lab for _, lab in _csv_rows(data / "species/mlwic_ca01/labels.csv"))
    counts = Counter(r.label for r in kept)
    assert counts["cat"] == raw["Bobcat"] + raw["Mountain lion"]
    assert counts["person"] == raw["Human"]
    assert report.counts() == {"dropped label": raw["Vehicle"]}
    assert len(kept) + len(report) == sum(raw.values())


# --- summary --------------------------------------------------------------------------------------------

def test_summary_counts_per_class_and_split(data, tmp_path):
    path = data / "species/mlwic_ca01/labels.csv"
    rows = _csv_rows(path)
    split = {str(path.parent / f): ("val" if i % 5 == 0 else "train") for i, (f, _) in enumerate(rows)}
    expected = Counter((lab, "val" if i % 5 == 0 else "train") for i, (_, lab) in enumerate(rows))
    summary = summarise(read_csv(path), split)
    assert summary.counts == dict(expected)
    assert summary.split_total("val") == len(range(0, len(rows), 5))
    text = format_summary(summary)
    assert re.search(r"^Elk\s+(\d+)\s+(\d+)\s+161$", text, re.M)
    assert text.splitlines()[-1].split() == ["total", str(expected_total(expected, "train")),
                                             str(expected_total(expected, "val")), str(len(rows))]
    csv_path, json_path = save_summary(summary, tmp_path / "out/summary")
    saved = {(c, s): int(n) for c, s, n in _csv_rows(csv_path)}
    assert saved == dict(expected)
    assert json.loads(json_path.read_text())["counts"]["Empty"] == {
        "train": expected[("Empty", "train")], "val": expected[("Empty", "val")]}


def expected_total(counts: Counter, split: str) -> int:
    return sum(n for (_, s), n in counts.items() if s == split)


def test_summary_callable_and_unassigned(data):
    records = list(read_voc(data / "boxes/wbia_voc"))
    by_function = summarise(records, lambda r: "empty" if r.bbox is None else "boxed")
    assert by_function.count("empty", "empty") == 1 and by_function.split_total("boxed") == len(records) - 1
    partial = summarise(records, {records[0].path: "train"})
    assert partial.split_total("(unassigned)") == sum(r.path != records[0].path for r in records)
    multi = summarise([Record(Path("a"), ("x", "y")), Record(Path("b"), ())])
    assert multi.counts == {("x+y", "all"): 1, ("(unlabelled)", "all"): 1}


def test_data_problems_read_as_lines_and_say_how_many_more(tmp_path):
    from train.datasets.inventory import Problem, problem_lines

    problems = [Problem("missing", tmp_path / "labels.csv", f"line {i}", f"images/{i}.jpg") for i in range(25)]
    assert str(problems[0]) == "labels.csv line 0: missing: images/0.jpg"
    lines = problem_lines(problems, all_in=tmp_path / "run" / "data_problems.txt")
    assert len(lines) == 21 and lines[-1] == f"  … and 5 more (all of them: {tmp_path / 'run' / 'data_problems.txt'})"
    assert len((tmp_path / "run" / "data_problems.txt").read_text().splitlines()) == 25

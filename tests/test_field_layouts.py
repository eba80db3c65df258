"""Field layouts: camtrapR folder trees (class level, stations), XMP species / individual tags, CSVs with
absolute paths, Camtrap DP boxes, capture-time sources and `trapedge inventory`.

Tiny synthetic JPEGs (with hand-written XMP packets) in tmp_path for exact cases; the camtrapR sample
tree in ../shared/data checked against its exiftool-extracted label table.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from contextlib import nullcontext as does_not_raise
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from train.config import BoxSource, SpeciesSource, TrainingConfig, read_boxes, read_species
from train.datasets import (
    capture_time_warnings,
    read_camtrap_dp_boxes,
    read_csv,
    read_folders,
    read_xmp,
    time_source_counts,
)
from train.datasets.capture_time import capture_time_warning
from train.datasets.xmp import MAX_PACKET, XmpError, hierarchical_tags, tag_values
from train.splits import load_or_make_split, split_records

CAMTRAPR = "formats/camtrapR_thumbnails/inst/pictures"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def jpeg(path: Path, taken: str | None = None, xmp: bytes | None = None) -> Path:
    """An 8x8 JPEG, with an EXIF DateTimeOriginal and an APP1 XMP packet when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if taken:
        exif.get_ifd(0x8769)[36867] = taken
    Image.new("RGB", (8, 8), (90, 120, 60)).save(path, "JPEG", exif=exif.tobytes())
    if xmp is not None:
        data = path.read_bytes()
        body = XMP_HEADER + xmp
        segment = b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
        path.write_bytes(data[:2] + segment + data[2:])  # right after SOI, as exiv2 / digiKam write it
    return path


def packet(*, tags_list=(), hierarchical=(), subject=()) -> bytes:
    """An XMP packet in digiKam's layout with the given keyword bags."""
    def bag(tag: str, kind: str, items) -> str:
        return f"<{tag}><rdf:{kind}>" + "".join(f"<rdf:li>{i}</rdf:li>" for i in items) + f"</rdf:{kind}></{tag}>"

    fields = "".join(bag(tag, kind, items) for tag, kind, items in (
        ("digiKam:TagsList", "Seq", tags_list), ("lr:hierarchicalSubject", "Bag", hierarchical),
        ("dc:subject", "Bag", subject)) if items)
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:digiKam="http://www.digikam.org/ns/1.0/" '
            'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f"{fields}</rdf:Description></rdf:RDF></x:xmpmeta>"
            '<?xpacket end="w"?>').encode()


# --- folders: the class level of camtrapR trees ----------------------------------------------------------

@pytest.fixture
def station_tree(tmp_path: Path) -> Path:
    """``Station/Species/`` with 5 photos at two stations."""
    root = tmp_path / "tree"
    for i, rel in enumerate(["StationA/Bobcat/1.jpg", "StationA/Bobcat/2.jpg", "StationA/Fox/3.jpg",
                             "StationB/Bobcat/4.jpg", "StationB/Deer/5.jpg"]):
        jpeg(root / rel, f"2024:05:0{i + 1} 10:00:00")
    return root


def test_class_level_2_reads_species_and_stations(station_tree):
    inventory = read_folders(station_tree, class_level=2)
    got = sorted((r.path.name, r.labels, r.location) for r in inventory)
    assert got == [("1.jpg", ("Bobcat",), "StationA"), ("2.jpg", ("Bobcat",), "StationA"),
                   ("3.jpg", ("Fox",), "StationA"), ("4.jpg", ("Bobcat",), "StationB"),
                   ("5.jpg", ("Deer",), "StationB")]
    assert inventory.problems == []
    splits = split_records(list(inventory), by="location", fractions={"train": 0.5, "test": 0.5}, stratify=False)
    assert all(len({r.location for r in records}) == 1 for records in splits.values())  # a station stays whole


def test_class_level_1_on_a_station_tree_hints_instead_of_guessing(station_tree):
    inventory = read_folders(station_tree)
    assert Counter(r.label for r in inventory) == {"StationA": 3, "StationB": 2}  # read as told
    assert inventory.problems[0].kind == "layout" and "set class_level: 2" in inventory.problems[0].detail


def test_recurring_sub_folders_hint_even_when_names_do_not_say_station(tmp_path):
    for rel in ["north/fox/1.jpg", "south/fox/2.jpg", "south/deer/3.jpg"]:
        jpeg(tmp_path / rel)
    hint = [p for p in read_folders(tmp_path).problems if p.kind == "layout"]
    assert len(hint) == 1 and "fox" in hint[0].detail
    species_folders = tmp_path / "flat"
    for rel in ["fox/1.jpg", "deer/2.jpg"]:
        jpeg(species_folders / rel)
    assert [p for p in read_folders(species_folders).problems if p.kind == "layout"] == []


def test_station_camera_species_layout(tmp_path):
    for rel in ["S1/CamA/Bobcat/1.jpg", "S1/CamB/Fox/2.jpg", "S2/CamA/Fox/3.jpg", "S2/loose.jpg"]:
        jpeg(tmp_path / rel)
    inventory = read_folders(tmp_path, class_level=3)
    assert sorted((r.label, r.location) for r in inventory) == [("Bobcat", "S1"), ("Fox", "S1"), ("Fox", "S2")]
    assert [(p.kind, p.entry) for p in inventory.problems] == [("unlabelled", "S2/loose.jpg")]
    by_camera = read_folders(tmp_path, class_level=3, location_level=2)
    assert sorted(r.location for r in by_camera) == ["CamA", "CamA", "CamB"]


@pytest.mark.parametrize("options, expectation", [
    ({"format": "folders", "path": "x", "class_level": 2}, does_not_raise()),
    ({"format": "folders", "path": "x", "class_level": 2, "location_level": 2}, pytest.raises(ValidationError)),
    ({"format": "folders", "path": "x", "class_level": 0}, pytest.raises(ValidationError)),
    ({"format": "xmp", "path": "x", "location_level": 1, "species_tag": "Art"}, does_not_raise()),
    ({"format": "csv", "path": "x", "time_column": "when", "individual_column": "id"}, does_not_raise()),
])
def test_species_source_options(options, expectation):
    with expectation:
        SpeciesSource.model_validate(options)


def test_camtrapr_species_dir_with_class_level_2(data):
    root = data / CAMTRAPR / "sample_images_species_dir"
    inventory = read_folders(root, class_level=2)
    expected = Counter()  # independent: walk the tree with os.walk
    for folder, _, files in os.walk(root):
        parts = Path(folder).relative_to(root).parts
        if len(parts) == 2:  # <station>/<species>
            expected[(parts[1], parts[0])] += sum(f.upper().endswith(".JPG") for f in files)
    assert Counter((r.label, r.location) for r in inventory) == +expected
    assert {r.location for r in inventory} == {"StationA", "StationB", "StationC"}
    assert [p.kind for p in inventory.problems] == ["not_image"]  # the .mp4 clip
    assert time_source_counts(inventory)["exif"] == len(inventory)


# --- XMP species and individual tags ------------------------------------------------------------------

@pytest.mark.parametrize("xmp, species, individual", [
    (packet(tags_list=["Species/Bobcat", "Individual/L23"]), ("Bobcat",), "L23"),
    (packet(hierarchical=["Species|Leopard Cat", "individual|2"], subject=["Leopard Cat", "2"]),
     ("Leopard Cat",), "2"),
    (packet(subject=["species|Fox"]), ("Fox",), None),
    (packet(tags_list=["Species/Mammal/Fox", "Species/Bobcat"], hierarchical=["Species|Bobcat"]), ("Fox", "Bobcat"),
     None),
])
def test_xmp_tags_give_species_and_individual(tmp_path, xmp, species, individual):
    jpeg(tmp_path / "StationA" / "a.jpg", "2024:05:01 10:00:00", xmp)
    inventory = read_xmp(tmp_path, location_level=1)
    assert [(r.labels, r.individual, r.location) for r in inventory] == [(species, individual, "StationA")]
    assert inventory[0].time == datetime(2024, 5, 1, 10) and inventory[0].extra["time_source"] == "exif"


def test_xmp_group_names_are_options_and_sidecars_win(tmp_path):
    image = jpeg(tmp_path / "IMG_1.JPG", xmp=packet(tags_list=["Art/Fuchs"]))
    assert [r.labels for r in read_xmp(tmp_path, species_tag="Art")] == [("Fuchs",)]
    (tmp_path / "IMG_1.JPG.xmp").write_bytes(packet(hierarchical=["Art|Dachs", "ID|D7"]))
    got = read_xmp(tmp_path, species_tag="Art", individual_tag="ID")
    assert [(r.labels, r.individual) for r in got] == [(("Dachs",), "D7")] and got.problems == []
    (tmp_path / "IMG_1.JPG.xmp").unlink()
    (image.with_suffix(".xmp")).write_bytes(packet(hierarchical=["Art|Marder"]))  # Lightroom's IMG_1.xmp
    assert [r.labels for r in read_xmp(tmp_path, species_tag="Art")] == [("Marder",)]


def test_xmp_problems(tmp_path):
    jpeg(tmp_path / "untagged.jpg", xmp=packet(subject=["Leopard Cat"]))  # flat keywords name no group
    jpeg(tmp_path / "bare.jpg")
    jpeg(tmp_path / "two.jpg", xmp=packet(hierarchical=["Species|Fox", "individual|F1", "individual|F2"]))
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&a;</x:xmpmeta>'
    jpeg(tmp_path / "entity.jpg", xmp=evil)
    (tmp_path / "notes.txt").write_text("x")
    inventory = read_xmp(tmp_path)
    assert [(r.path.name, r.labels, r.individual) for r in inventory] == [("two.jpg", ("Fox",), None)]
    assert sorted((p.kind, p.entry) for p in inventory.problems) == [
        ("ambiguous", "two.jpg"), ("not_image", "notes.txt"), ("unlabelled", "bare.jpg"),
        ("unlabelled", "untagged.jpg"), ("unparsed", "entity.jpg")]


@pytest.mark.parametrize("raw, expectation", [
    (packet(hierarchical=["Species|Fox"]), does_not_raise()),
    (b"<!DOCTYPE x SYSTEM 'file:///etc/passwd'>" + packet(), pytest.raises(XmpError, match="DTD")),
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b" " * MAX_PACKET + b"</x:xmpmeta>",
     pytest.raises(XmpError, match="bytes")),
    (b"<x:xmpmeta><unclosed></x:xmpmeta>", pytest.raises(XmpError, match="not XML")),
    (b"no xmp here", does_not_raise()),
])
def test_xmp_packets_are_bounded_and_refuse_declarations(raw, expectation):
    with expectation:
        tags = hierarchical_tags(raw)
        assert tag_values(tags, "species") in (["Fox"], [])


def test_camtrapr_xmp_tags_match_exiftool(data):
    root = data / "formats/camtrapR_thumbnails"
    with (root / "_labels_extracted_from_xmp.csv").open(newline="") as handle:
        table = {row["path"]: row for row in csv.DictReader(handle)}
    for tree in ("sample_images_species_tag", "sample_images_indiv_tag"):
        inventory = read_xmp(root / "inst/pictures" / tree, location_level=1)
        got = {f"{tree}/{r.path.relative_to(root / 'inst/pictures' / tree).as_posix()}": r for r in inventory}
        expected = {k: v for k, v in table.items() if k.startswith(tree + "/")}
        assert set(got) == set(expected) and inventory.problems == []
        for key, record in got.items():
            assert record.labels == (expected[key]["xmp_species"],)
            assert record.individual == (expected[key]["xmp_individual"] or None)
    stations = {r.location for r in read_xmp(root / "inst/pictures/sample_images_species_tag", location_level=1)}
    assert stations == {"StationA", "StationB", "StationC"}


def test_xmp_source_in_the_training_config(data):
    config = TrainingConfig.model_validate({"data_root": str(data), "species": [
        {"format": "xmp", "path": f"{CAMTRAPR}/sample_images_species_tag", "location_level": 1, "name": "borneo"}]})
    records, problems = read_species(config)
    assert Counter(r.label for r in records)["Leopard Cat"] == 26 and problems == []
    assert capture_time_warnings(records) == []  # every thumbnail has its EXIF date


# --- CSV with absolute image paths --------------------------------------------------------------------

def test_csv_absolute_paths_read_split_and_reload(tmp_path):
    photos = tmp_path / "elsewhere"
    absolute, relative = jpeg(photos / "a.jpg"), jpeg(tmp_path / "table" / "img" / "b.jpg")
    table = tmp_path / "table" / "labels.csv"
    table.write_text(f"file,label\n{absolute},fox\nimg/b.jpg,deer\n{photos / 'gone.jpg'},fox\n")
    inventory = read_csv(table)
    assert sorted((r.path, r.label) for r in inventory) == [(absolute, "fox"), (relative, "deer")]
    assert [(p.kind, p.entry, p.detail) for p in inventory.problems] == [("missing", "line 4", str(photos / "gone.jpg"))]
    split_file = tmp_path / "out" / "species.csv"
    made = load_or_make_split(list(inventory), split_file, by="image", root=table.parent)
    again = load_or_make_split(list(inventory), split_file, by="image", root=table.parent)
    assert made == again
    saved = {row["path"] for row in csv.DictReader(split_file.open())}
    assert saved == {absolute.as_posix(), "img/b.jpg"}  # outside the root: kept absolute


def test_csv_time_column_in_the_config(tmp_path):
    jpeg(tmp_path / "a.jpg", "2020:01:01 00:00:00")
    jpeg(tmp_path / "b.jpg")
    (tmp_path / "labels.csv").write_text("file,label,when,who\na.jpg,fox,2024-06-01T03:14:15,F1\nb.jpg,fox,,\n")
    config = TrainingConfig.model_validate({"data_root": str(tmp_path), "species": [
        {"format": "csv", "path": "labels.csv", "time_column": "when", "individual_column": "who"}]})
    records, _ = read_species(config)
    by_name = {r.path.name: r for r in records}
    assert by_name["a.jpg"].time == datetime(2024, 6, 1, 3, 14, 15)  # the column wins over EXIF
    assert by_name["a.jpg"].individual == "F1"
    assert time_source_counts(records) == {"exif": 0, "column": 1, "file name": 0, "none": 1}


# --- Camtrap DP as a box source -----------------------------------------------------------------------

@pytest.fixture
def box_package(data, tmp_path) -> Path:
    """The shared Camtrap DP fixture plus human, vehicle, blank and half-boxed media, with stand-in images."""
    package = tmp_path / "pkg"
    shutil.copytree(data / "formats/camtrap_dp_small", package)
    media = package / "media.csv"
    media.write_text(media.read_text() + "".join(
        f"{m},dep1,activityDetection,2020-05-30T05:00:0{i}Z,{m}.jpg,true,{m}.jpg,image/jpeg,,,\n"
        for i, m in enumerate(["m6", "m7", "m8", "m9"])))
    obs = package / "observations.csv"
    blank = ",,,,,,,,,,,,,,,,,,,,"
    obs.write_text(obs.read_text()
                   + "obs8,dep1,m6,evt8,,,media,human,,Homo sapiens,1,,,,,,,,0.1,0.1,0.2,0.5,human,,,,,\n"
                   + "obs9,dep1,m6,evt8,,,media,vehicle,,,1,,,,,,,,0.5,0.5,0.4,0.3,human,,,,,\n"
                   + f"obs10,dep1,m7,evt9,,,media,blank{blank[:-12]}\n"
                   + "obs11,dep1,m8,evt10,,,media,animal,,Sus scrofa,1,,,,,,,,0.1,0.1,0.2,0.2,human,,,,,\n"
                   + "obs12,dep1,m8,evt10,,,media,animal,,Vulpes vulpes,1,,,,,,,,,,,,human,,,,,\n"
                   + "obs13,dep1,m9,evt11,,,media,unknown,,,1,,,,,,,,0.1,0.1,0.2,0.2,human,,,,,\n")
    for name in ("small_cat.jpg", "wild_dog_jackal.jpg", "chimpanzee_bonobo.jpeg", "m6.jpg", "m7.jpg", "m8.jpg",
                 "m9.jpg"):
        jpeg(package / name)
    return package


def test_camtrap_dp_boxes(box_package):
    from train.detector_data import detector_class

    inventory = read_camtrap_dp_boxes(box_package)
    got = sorted((r.path.name, r.labels, r.bbox, r.location) for r in inventory)
    assert got == [
        ("chimpanzee_bonobo.jpeg", ("Pan",), (0.2, 0.25, 0.4, 0.5), "loc2"),
        ("m6.jpg", ("human",), (0.1, 0.1, 0.2, 0.5), "loc1"),
        ("m6.jpg", ("vehicle",), (0.5, 0.5, 0.4, 0.3), "loc1"),
        ("m7.jpg", ("empty",), None, "loc1"),
        ("small_cat.jpg", ("Felis catus",), (0.1, 0.2, 0.3, 0.4), "loc1"),  # obs7 (unboxed cat) is the same cat
        ("wild_dog_jackal.jpg", ("Canis aureus",), (0.05, 0.15, 0.25, 0.35), "loc1"),
    ]
    classes = ["animal", "person", "vehicle"]
    assert [detector_class(r.label, classes) for r in sorted(inventory, key=lambda r: r.path.name)][:4] == [0, 1, 2, None]
    assert sorted((p.kind, p.entry) for p in inventory.problems) == [
        ("not_image", "line 6 (m5)"), ("remote", "line 5 (m4)"), ("unboxed", "line 13 (obs12)"),
        ("unboxed", "line 7 (obs6)"), ("unlabelled", "line 14 (obs13)")]


def test_camtrap_dp_box_source_in_the_training_config(box_package):
    config = TrainingConfig.model_validate({"data_root": str(box_package.parent), "species": [],
                                            "boxes": [{"format": "camtrap_dp", "path": "pkg"}]})
    records = read_boxes(config)
    assert len(records) == 6 and {r.source for r in records} == {"pkg"}
    assert BoxSource(format="camtrap_dp", path=Path("x")).format == "camtrap_dp"


# --- capture time: where it comes from, and the warning ---------------------------------------------------

def test_file_times_are_never_capture_times(tmp_path):
    jpeg(tmp_path / "fox" / "IMG_0001.jpg", "2024:05:01 10:00:00")
    for name in ("IMG_0002.jpg", "IMG_0003.jpg"):
        os.utime(jpeg(tmp_path / "fox" / name), (1_700_000_000, 1_700_000_000))
    jpeg(tmp_path / "deer" / "2024-05-02_09-00-00.jpg")
    inventory = read_folders(tmp_path, filename_pattern=r"^(?P<time>\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)$")
    by_name = {r.path.name: r for r in inventory}
    assert by_name["IMG_0002.jpg"].time is None
    assert by_name["2024-05-02_09-00-00.jpg"].time == datetime(2024, 5, 2, 9)
    assert time_source_counts(inventory) == {"exif": 1, "column": 0, "file name": 1, "none": 2}
    warning = capture_time_warning("trail", inventory)
    assert warning.startswith("2 of 4 images of trail have no capture time") and "file times are not used" in warning


def test_one_warning_line_per_dataset_and_training_prints_it(tmp_path, monkeypatch, capsys):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        jpeg(tmp_path / "a" / "fox" / name)
    jpeg(tmp_path / "b" / "deer" / "1.jpg", "2024:05:01 10:00:00")
    (tmp_path / "c.csv").write_text("file,label,burst\na/fox/1.jpg,fox,e1\n")  # an event id needs no time
    config = TrainingConfig.model_validate({"data_root": str(tmp_path), "out": str(tmp_path / "run"), "species": [
        {"format": "folders", "path": "a", "name": "site A"}, {"format": "folders", "path": "b"},
        {"format": "csv", "path": "c.csv", "event_column": "burst"}]})
    records, _ = read_species(config)
    lines = capture_time_warnings(records)
    assert len(lines) == 1 and "3 of 3 images of site A have no capture time" in lines[0]

    import train.cli

    class Stop(Exception):
        pass

    def stop(*_, **__):
        raise Stop

    monkeypatch.setattr(train.cli, "load_or_make_split", stop)
    with pytest.raises(Stop):
        train.cli.species_step(config, tmp_path, quick=True)
    assert lines[0] in capsys.readouterr().out.splitlines()


# --- trapedge inventory -------------------------------------------------------------------------------

def test_inventory_of_a_station_tree(station_tree, capsys):
    from trapedge.cli import main

    assert main(["inventory", str(station_tree), "--class-level", "2"]) == 0
    out = capsys.readouterr().out
    assert "(folders, detected" in out
    lines = out.splitlines()
    classes = lines.index("  classes       3")
    assert [line.split() for line in lines[classes + 1:classes + 4]] == [["Bobcat", "3"], ["Deer", "1"], ["Fox", "1"]]
    assert "  stations      2" in lines and "  capture time  exif 5, column 0, file name 0, none 0" in lines
    assert main(["inventory", str(station_tree)]) == 0
    assert "set class_level: 2" in capsys.readouterr().out


def test_inventory_of_a_config_and_of_nothing(tmp_path, capsys):
    from trapedge.cli import main

    jpeg(tmp_path / "data" / "fox" / "1.jpg")
    (tmp_path / "train.yaml").write_text("data_root: data\nspecies:\n  - format: folders\n    path: .\n"
                                         "  - format: csv\n    path: missing.csv\n")
    assert main(["inventory", "--config", str(tmp_path / "train.yaml")]) == 0
    out = capsys.readouterr().out
    assert "cannot be read: species source" in out and "1 of 1 images of . have no capture time" in out
    (tmp_path / "empty").mkdir()
    assert main(["inventory", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("inventory: nothing readable")


def test_inventory_detects_xmp_on_real_camtrapr_photos(data, capsys):
    from trapedge.cli import main

    assert main(["inventory", str(data / CAMTRAPR / "sample_images_indiv_tag"), "--location-level", "1"]) == 0
    out = capsys.readouterr().out
    assert "(xmp, detected: XMP species tags" in out and "  individuals   3" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["inventory", "--help"])
    assert exit_info.value.code == 0 and "without training" in capsys.readouterr().out


def test_inventory_rejects_a_dataset_error_in_one_line(tmp_path, capsys):
    from trapedge.cli import main

    (tmp_path / "labels.csv").write_text("path,species\na.jpg,fox\n")
    assert main(["inventory", str(tmp_path / "labels.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 1: no column(s) ['file', 'label']; header is ['path', 'species']" in err

"""`trapedge evaluate`: the camera's own pipeline scored against a reference."""

import json
import shutil
from contextlib import nullcontext as does_not_raise
from pathlib import Path

import numpy as np
import pytest

from train.evaluate import (
    Annotated,
    annotated,
    box_figures,
    image_confusion,
    image_species,
    match,
    pr_curves,
    size_of,
    species_figures,
)
from trapedge.cli import main


def _image(boxes, labels, scores=None, image_label=None) -> Annotated:
    return Annotated(Path("x.jpg"), [tuple(b) for b in boxes], list(labels), list(scores or [1.0] * len(labels)),
                     image_label)


@pytest.mark.parametrize(
    ("reference", "camera", "scores", "expected"),
    [
        ([[0, 0, 0.2, 0.2]], [[0, 0, 0.2, 0.2]], [0.9], {0: 0}),
        ([[0, 0, 0.2, 0.2]], [[0.1, 0, 0.2, 0.2]], [0.9], {}),  # IoU 1/3
        ([[0, 0, 0.2, 0.2]], [[0.05, 0, 0.2, 0.2]], [0.9], {0: 0}),  # IoU 0.6
        # two camera boxes on one reference box: the higher score takes it, the other is unmatched
        ([[0, 0, 0.2, 0.2]], [[0, 0, 0.2, 0.2], [0.01, 0, 0.2, 0.2]], [0.5, 0.9], {0: 1}),
        # each camera box takes the reference box it overlaps most
        ([[0, 0, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.2, 0.2], [0, 0, 0.2, 0.2]], [0.9, 0.8], {1: 0, 0: 1}),
        ([], [[0, 0, 0.2, 0.2]], [0.9], {}),
    ],
)
def test_match_is_one_to_one_best_score_first(reference, camera, scores, expected):
    assert match(_image(reference, ["fox"] * len(reference)), _image(camera, ["fox"] * len(camera), scores)) == expected


@pytest.mark.parametrize(("box", "size"), [([0, 0, 0.05, 0.1], "small"), ([0, 0, 0.1, 0.1], "medium"),
                                           ([0, 0, 0.5, 0.5], "large")])
def test_size_buckets(box, size):
    assert size_of(box) == size


def test_box_figures_count_people_labelled_as_animals():
    reference = _image([[0, 0, 0.3, 0.3], [0.5, 0.5, 0.3, 0.3], [0.0, 0.6, 0.05, 0.05]], ["person", "fox", "fox"])
    camera = _image([[0, 0, 0.3, 0.3], [0.5, 0.5, 0.3, 0.3], [0.9, 0.0, 0.05, 0.05]], ["dog", "fox", "fox"])
    figures = box_figures([(reference, camera)])
    assert figures["people_labelled_animal"] == 1
    person, animal = figures["recall"]["person"]["all"], figures["recall"]["animal"]["all"]
    assert (person["boxes"], person["found"], person["right_category"]) == (1, 1.0, 0.0)
    assert (animal["boxes"], animal["found"]) == (2, 0.5)
    assert figures["recall"]["animal"]["small"] == {"boxes": 1, "found": 0.0, "right_category": 0.0}
    assert figures["precision"]["animal"] == {"value": round(2 / 3, 4), "boxes": 3}


def test_image_classes_and_species():
    pairs = [(_image([], [], image_label="empty"), _image([], [])),
             (_image([], [], image_label="Human"), _image([[0, 0, 0.1, 0.1]], ["dog"])),
             (_image([], [], image_label="fox"), _image([[0, 0, 0.1, 0.1], [0, 0, 0.2, 0.2]], ["fox", "person"]))]
    confusion = image_confusion(pairs)
    assert confusion.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    # the camera's image label is its frame prediction (as in its MegaDetector output), compared by
    # category for people, vehicles and empties however they are spelt
    assert image_species(_image([[0, 0, 0.1, 0.1]], ["dog"], image_label="dog")) == "dog"
    assert image_species(_image([[0, 0, 0.1, 0.1]], ["Human"], image_label="Human")) == "person"
    assert image_species(_image([], [], image_label="Empty")) == "empty"
    assert image_species(_image([], [])) == "empty"


def test_an_image_with_several_labels_is_what_its_most_sensitive_label_says():
    """A CSV row per animal (Elk and human on one image) made a record without a label, counted empty."""
    from train.records import Record

    images = annotated([Record(Path("a.jpg"), ("Elk", "human")), Record(Path("b.jpg"), ("Elk", "Bobcat")),
                        Record(Path("c.jpg"), ("Empty",))])
    assert [(i.image_label, i.image_class) for i in images] == [("human", "person"), ("Elk", "animal"),
                                                                 ("Empty", "empty")]


def test_a_reference_that_says_only_animal_names_no_species_to_score():
    """MegaDetector's reference says 'animal': scored against the camera's species it gave top-1 0.333."""
    pairs = [(_image([[0, 0, 0.1, 0.1]], ["animal"]), _image([[0, 0, 0.1, 0.1]], ["fox"], image_label="fox")),
             (_image([], [], image_label="empty"), _image([], []))]
    figures = species_figures(pairs, ["fox", "animal"])
    assert figures["n"] == 1 and figures["labels"] == ["empty"]
    assert species_figures(pairs[:1], ["fox", "animal"]) is None


def test_the_cameras_own_megadetector_output_scores_perfectly(data, bundle_dir, tmp_path):
    """`detect` and `evaluate` run the one pipeline: scored against detect's own output, every box is
    found with its category, every camera box is right, and image classes agree."""
    folder = tmp_path / "frames"
    shutil.copytree(data / "frames" / "ena24_small", folder, ignore=shutil.ignore_patterns("*.json", "*.csv"))
    md = tmp_path / "md.json"
    assert main(["detect", str(folder), "--bundle", str(bundle_dir), "--output", str(md)]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(folder), "--reference", str(md), "--bundle", str(bundle_dir), "--out", str(out)]) == 0
    figures = json.loads((out / "evaluation.json").read_text())
    animal = figures["boxes"]["recall"]["animal"]["all"]
    assert animal["boxes"] >= 15 and animal["found"] == animal["right_category"] == 1.0
    assert figures["boxes"]["precision"]["animal"]["value"] == 1.0
    confusion = np.asarray(figures["image_classes"]["confusion"])
    assert np.trace(confusion) == confusion.sum() == figures["images"]
    assert (out / "image_classes.png").stat().st_size > 1000 and "## Boxes" in (out / "evaluation.md").read_text()


def test_a_reference_box_given_twice_counts_once_and_is_said(data, bundle_dir, tmp_path, capsys):
    """Missouri's labels repeat some boxes: one animal must not count as two misses (or finds)."""
    source = data / "boxes/missouri_camtraps"
    label = next(p for p in sorted((source / "labels" / "Red_Deer").glob("*.txt")) if p.read_text().strip())
    image = source / "images" / "Red_Deer" / (label.stem + ".JPG")
    root = tmp_path / "ref"
    (root / "images" / "a").mkdir(parents=True)
    (root / "labels" / "a").mkdir(parents=True)
    shutil.copy(source / "classes.txt", root)
    shutil.copy(image, root / "images" / "a")
    line = label.read_text().splitlines()[0]
    (root / "labels" / "a" / label.name).write_text(f"{line}\n{line}\n")
    out = tmp_path / "eval"
    assert main(["evaluate", str(root / "images"), "--reference", str(root), "--bundle", str(bundle_dir),
                 "--out", str(out)]) == 0
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["boxes"]["recall"]["animal"]["all"]["boxes"] == 1
    assert figures["reference"]["problems"] == {"duplicate": 1}
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said == "reference entries not scored as given: 1 duplicate (repeated, counted once)"
    assert "1 duplicate (repeated, counted once)." in (out / "evaluation.md").read_text()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["evaluate", "{tmp}/nowhere", "--reference", "{tmp}/ref.csv"], 2, "is not a folder"),
        (["evaluate", "{tmp}", "--reference", "{tmp}/missing.json"], 2, "missing.json: file: not found"),
        (["evaluate", "{tmp}", "--reference", "{tmp}/ref.csv"], 2, "names no image that exists"),
        (["evaluate", "{tmp}", "--reference", "{tmp}/cp.csv"], 2, "cp.csv: line 2: not UTF-8 text (byte 0xe9)"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, bundle_dir, capsys, argv, code, message):
    (tmp_path / "ref.csv").write_text("file,label\ngone.jpg,fox\n")
    (tmp_path / "cp.csv").write_bytes("file,label\ngone.jpg,Cerf élaphe\n".encode("cp1252"))
    args = [a.format(tmp=tmp_path) for a in argv] + ["--bundle", str(bundle_dir), "--out", str(tmp_path / "o")]
    with does_not_raise():
        assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_pr_curves_count_a_box_right_only_with_its_category():
    reference = _image([[0, 0, 0.3, 0.3], [0.5, 0.5, 0.3, 0.3]], ["fox", "person"])
    # best score first: a right animal box, then an "animal" on the person, then a stray box
    camera = _image([[0, 0, 0.3, 0.3], [0.5, 0.5, 0.3, 0.3], [0.9, 0.9, 0.05, 0.05]], ["fox", "dog", "fox"],
                    [0.9, 0.8, 0.3])
    curves = pr_curves([(reference, camera)])
    assert curves["animal"] == {"score": [0.9, 0.8, 0.3], "precision": [1.0, 0.5, 0.3333], "recall": [1.0, 1.0, 1.0]}
    assert curves["person"] == {"score": [], "precision": [], "recall": []}


def test_an_image_the_camera_cannot_read_is_named_with_its_reason(data, bundle_dir, tmp_path, capsys):
    """Only a count of failed images was printed; which and why were in evaluation.json alone. A reference of
    one species (scikit-learn warned 'a single label was found') in UTF-16, as a spreadsheet saves it."""
    import warnings

    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(data / "frames" / "autofocus_gallery" / "coyote1.jpg", folder / "a.jpg")
    (folder / "b.jpg").write_text("not a photo\n")
    (tmp_path / "ref.csv").write_bytes("file,label,note\na.jpg,fox,renard élancé\nb.jpg,fox,\n".encode("utf-16"))
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(["evaluate", str(folder), "--reference", str(tmp_path / "ref.csv"), "--bundle", str(bundle_dir),
                     "--out", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    reason = "image unreadable: not a readable image (UnidentifiedImageError)"
    assert said[0].startswith("2 images (1 failed)") and said[1] == f"  failed: {folder / 'b.jpg'}: {reason}"
    assert f"- {folder / 'b.jpg'}: {reason}" in (out / "evaluation.md").read_text()
    assert json.loads((out / "evaluation.json").read_text())["species"]["n"] == 1  # the fox, read from UTF-16


@pytest.mark.parametrize("name, text, extra, said", [
    ("coco.json", '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": [{"name": "fox"}]}',
     [], "coco.json: categories[0]: no id"),
    ("md.json", '{"images": [{"file": "a.jpg", "detections": [{"category": "1", "conf": "high", "bbox": [0, 0, 1, 1]}]}],'
                ' "detection_categories": {"1": "animal"}}',
     [], "md.json: file: not a MegaDetector file the readers understand (ValueError"),
    ("yolo", None, ["--event-pattern", "("], "event_pattern: '(' is not a regular expression"),
    ("yolo", None, ["--event-pattern", r"^SEQ\d+_"], "has no group: put ( ) around the sequence"),
])
def test_a_reference_of_the_wrong_shape_is_one_line(tmp_path, bundle_dir, capsys, name, text, extra, said):
    """Each was a KeyError, ValueError, re.error or IndexError traceback."""
    (tmp_path / "a.jpg").write_bytes(b"")
    reference = tmp_path / name
    if text is None:
        (reference / "labels").mkdir(parents=True)
        (reference / "classes.txt").write_text("animal\n")
        (reference / "labels" / "SEQ1_a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (reference / "images").mkdir()
        (reference / "images" / "SEQ1_a.jpg").write_bytes(b"")
    else:
        reference.write_text(text)
    assert main(["evaluate", str(tmp_path), "--reference", str(reference), *extra, "--bundle", str(bundle_dir),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err

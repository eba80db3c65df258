import numpy as np

from train.report import write_report


def test_report_has_sections_and_plots(tmp_path):
    classifier = {"top1": 0.8, "macro_f1": 0.7, "n": 10, "labels": ["cat", "empty"],
                  "confusion": np.array([[4, 1], [1, 4]]),
                  "per_class": {"cat": {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5},
                                "empty": {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5}}}
    roc = {"fpr": [0, 0.2, 1], "tpr": [0, 0.9, 1], "auc": 0.85}
    reid = {"lion val": {"baseline": {"rank1": 0.3, "rank5": 0.6, "mAP": 0.2, "queries": 140},
                         "trained": {"rank1": 0.5, "rank5": 0.8, "mAP": 0.4, "queries": 140}}}
    path = write_report(tmp_path, classifier=classifier, roc=roc, reid=reid, notes=["quick profile"])
    text = path.read_text()
    assert "top-1 **0.800**" in text and "| cat | 0.800 |" in text and "AUC 0.850" in text
    assert "| lion val | trained | 0.500 |" in text and "- quick profile" in text
    for png in ("confusion.png", "roc_empty.png", "reid.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_the_training_report_leads_with_the_camera_and_a_new_export_replaces_it(tmp_path):
    from export.model_card import add_camera_section

    report = tmp_path / "report" / "report.md"
    report.parent.mkdir()
    report.write_text("# trapedge training report\n\nintro\n\n## Species classifier alone\n")
    figures = {"images": 3, "boxes": None, "image_classes": {"confusion": [[1, 0, 0, 0]] * 4, "empty_kept_out": 1.0,
                                                             "animal_found": 0.5}, "species": {"top1": 0.5, "macro_f1": 0.25}}
    add_camera_section(report, {"species:x": figures}, "bundles/a")
    add_camera_section(report, {"species:x": {**figures, "species": {"top1": 0.75, "macro_f1": 0.5}}}, "bundles/b")
    text = report.read_text()
    assert text.startswith("# trapedge training report\n\n<!-- camera")
    assert text.count("## What the camera does") == 1 and "`bundles/b`" in text and "0.750 / 0.500" in text
    assert text.index("## What the camera does") < text.index("intro") < text.index("## Species classifier alone")


def test_the_camera_table_counts_people_labelled_animal_and_animals_called_person():
    from export.model_card import camera_section

    figures = {"images": 126, "boxes": {"recall": {}, "people_labelled_animal": 0},
               "image_classes": {"confusion": [[0, 0, 0, 0], [13, 96, 17, 0], [0, 1, 6, 0], [0, 0, 0, 0]],
                                 "empty_kept_out": None, "animal_found": 0.897}}
    header, _, row = camera_section({"boxes:x": figures})[-3:]
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]))
    assert cells["person frames called person"] == "6/7"
    assert cells["animal frames called person"] == "17/126"
    assert cells["people labelled animal"] == "0" and cells["animal frames non-empty"] == "0.897"

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

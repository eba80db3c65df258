"""The label combiner: each box's one label, decided once from the detector class and the classifier."""

import numpy as np
import pytest

from edge.analysis.labels import LabelSpace, combine_labels
from edge.runtime.detections import Detections

THREE_CLASS = LabelSpace(("animal", "person", "vehicle"), ("fox", "person", "other"))
ONE_CLASS = LabelSpace(("animal",), ("fox", "person", "other"))
NO_CLASSIFIER = LabelSpace(("animal", "person", "vehicle"), ())


def _boxes(class_ids, confidence, probs=None) -> Detections:
    n = len(class_ids)
    data = {} if probs is None else {"species_probs": np.array(probs, np.float32).reshape(n, -1)}
    return Detections(np.tile([0, 0, 10, 10], (n, 1)), confidence, class_ids, data)


@pytest.mark.parametrize(
    ("space", "class_id", "confidence", "probs", "expected"),
    [
        # detector class other than animal: the detector decides, whatever the classifier says
        (THREE_CLASS, 1, 0.8, [0.9, 0.05, 0.05], ("person", 0.8, "detector")),
        (THREE_CLASS, 2, 0.6, [0.9, 0.05, 0.05], ("vehicle", 0.6, "detector")),
        # an animal box: the classifier names it
        (THREE_CLASS, 0, 0.7, [0.2, 0.1, 0.7], ("other", 0.7, "classifier")),
        # a single-class detector's animal box that the classifier calls a person is a person
        (ONE_CLASS, 0, 0.9, [0.1, 0.8, 0.1], ("person", 0.8, "classifier")),
        # without a classifier the detector's class name is the label
        (NO_CLASSIFIER, 0, 0.5, None, ("animal", 0.5, "detector")),
        (NO_CLASSIFIER, 1, 0.4, None, ("person", 0.4, "detector")),
    ],
)
def test_one_label_per_box(space, class_id, confidence, probs, expected):
    det = combine_labels(_boxes([class_id], [confidence], None if probs is None else [probs]), space)
    label, score, source = expected
    assert det.labels() == [label]
    assert det.data["label_score"][0] == pytest.approx(score)
    assert det.data["label_source"].tolist() == [source]
    vote = det.data["label_probs"][0]
    assert space.labels[int(vote.argmax())] == label, "the vote never disagrees with the label"
    assert vote.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (THREE_CLASS, ["fox", "person", "other", "vehicle"]),
        (ONE_CLASS, ["fox", "person", "other"]),
        (NO_CLASSIFIER, ["animal", "person", "vehicle"]),
        (LabelSpace((), ()), ["animal"]),
    ],
)
def test_label_space(space, expected):
    assert space.labels == expected


def test_no_boxes_get_empty_columns():
    det = combine_labels(Detections.empty(), THREE_CLASS)
    assert det.labels() == [] and det.data["label_probs"].shape == (0, 4)


def test_detections_without_a_decided_label_say_so():
    with pytest.raises(KeyError, match="Analyzer"):
        _boxes([0], [0.5]).labels()

"""The label combiner: each box's one label, decided once from the detector class and the classifier."""

import numpy as np
import pytest

from edge.analysis.config import DetectionConfig
from edge.analysis.labels import LabelSpace, combine_labels, frame_prediction, names_animal
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


@pytest.mark.parametrize(
    ("labels", "sources", "confidence", "expected"),
    [
        ([], [], [], ("blank", None, "blank")),
        # the animal box the detector is surest of, with its label's score and source
        (["fox", "dog"], ["classifier", "classifier"], [0.5, 0.9], ("dog", 0.6, "classifier")),
        # a person anywhere makes the frame a person frame, however the label is spelt
        (["fox", "Human"], ["classifier", "classifier"], [0.9, 0.3], ("Human", 0.6, "classifier")),
        (["fox", "vehicle"], ["classifier", "detector"], [0.9, 0.3], ("vehicle", 0.6, "detector")),
        (["elk"], ["whole_frame"], [0.95], ("elk", 0.6, "whole_frame")),
    ],
)
def test_frame_prediction(labels, sources, confidence, expected):
    n = len(labels)
    det = Detections(np.zeros((n, 4), np.float32), np.array(confidence, np.float32), np.zeros(n, np.int64))
    det = det.with_data(label=np.array(labels, dtype=object).reshape(n), label_score=np.full(n, 0.6, np.float32),
                        label_source=np.array(sources, dtype=object).reshape(n))
    label, score, source = frame_prediction(det)
    assert (label, None if score is None else round(score, 4), source) == expected


@pytest.mark.parametrize(("label", "animal"), [("fox", True), ("Human", False), ("people", False), ("Empty", False),
                                               ("Vehicle", False), ("other", False), ("OTHER", False)])
def test_names_animal_reads_any_spelling_of_people_vehicles_and_empties(label, animal):
    assert names_animal(label, frozenset({"person", "vehicle", "other", "empty"})) is animal


TAXONOMY = {"Bobcat": ["felidae", "carnivora"], "Mountain lion": ["felidae", "carnivora"],
            "Fox": ["Canidae", "carnivora"], "Canidae": ["carnivora"], "Elk": ["cervidae", "artiodactyla"]}
ROLLUP = LabelSpace.of(("animal", "person", "vehicle"), ("Bobcat", "Canidae", "Elk", "Empty", "Fox", "Mountain lion"),
                       TAXONOMY, 0.5)


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        # a confident species stays
        ([0.7, 0.0, 0.1, 0.1, 0.0, 0.1], ("Bobcat", 0.7, "classifier")),
        # two cats, neither sure: the family
        ([0.45, 0.05, 0.05, 0.1, 0.05, 0.3], ("felidae", 0.75, "rollup")),
        # a fox unsure against Canidae: the label that is also its family
        ([0.1, 0.3, 0.05, 0.1, 0.35, 0.1], ("Canidae", 0.65, "rollup")),
        # cats and dogs: the order
        ([0.3, 0.2, 0.1, 0.1, 0.2, 0.1], ("carnivora", 0.8, "rollup")),
        # nothing in common but being animals
        ([0.15, 0.0, 0.35, 0.2, 0.0, 0.3], ("animal", 0.8, "rollup")),
        # the best class is no animal: no roll-up
        ([0.1, 0.1, 0.1, 0.4, 0.2, 0.1], ("Empty", 0.4, "classifier")),
    ],
)
def test_taxonomic_roll_up(probs, expected):
    det = combine_labels(_boxes([0], [0.9], [probs]), ROLLUP)
    label, score, source = det.labels()[0], float(det.data["label_score"][0]), det.data["label_source"][0]
    assert (label, round(score, 4), source) == expected
    vote = det.data["label_probs"][0]
    assert ROLLUP.labels[int(np.argmax(vote))] == label and vote.sum() == pytest.approx(1.0)


def test_without_rollup_the_space_is_unchanged():
    assert LabelSpace.of(("animal",), ("fox", "dog"), {"fox": ["canidae"]}).labels == ["fox", "dog", "canidae"]
    assert LabelSpace.of(("animal",), ("fox", "dog")).roll_up(np.array([0.4, 0.4], np.float32)) is None


def test_an_event_rolls_up_by_the_same_rule():
    """A burst of unsure cats is a felidae event, as each box would be."""
    from datetime import datetime, timezone

    from edge.events.bursts import BurstConfig, BurstState, aggregate_burst

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    state = BurstState("e", "cam", now, now, frames=2, crops=2,
                       probs_sum={"Bobcat": 0.8, "Mountain lion": 0.6, "Elk": 0.6})
    assert aggregate_burst(state, BurstConfig()).label == "Bobcat"
    event = aggregate_burst(state, BurstConfig(), space=ROLLUP)
    assert (event.label, event.score) == ("felidae", 0.7)


@pytest.mark.parametrize(
    ("class_id", "probs", "context", "expected"),
    [
        # the whole frame's vote is averaged into an animal box's: an unsure crop the frame is sure of
        (0, [0.4, 0.1, 0.5], [0.9, 0.05, 0.05], ("fox", 0.65, "ensemble")),
        # a crop the classifier calls a person stays one whatever the frame says
        (0, [0.1, 0.8, 0.1], [0.9, 0.05, 0.05], ("person", 0.8, "classifier")),
        # the detector's person decides, as without context
        (1, [0.9, 0.05, 0.05], [0.9, 0.05, 0.05], ("person", 0.7, "detector")),
    ],
)
def test_the_whole_frame_votes_with_each_animal_box(class_id, probs, context, expected):
    det = combine_labels(_boxes([class_id], [0.7], [probs]), THREE_CLASS, np.array(context, np.float32))
    label, score, source = expected
    assert (det.labels(), det.data["label_source"].tolist()) == ([label], [source])
    assert det.data["label_score"][0] == pytest.approx(score)
    assert THREE_CLASS.labels[int(det.data["label_probs"][0].argmax())] == label


@pytest.mark.parametrize(("confidence", "expected"), [(0.9, ("animal", "rollup")), (0.35, ("animal", "rollup")),
                                                     (0.27, ("Empty", "classifier"))])
def test_a_box_the_detector_is_sure_of_is_never_empty(confidence, expected):
    """At the default ``detection.sure_box`` (0.3, chosen on val with the fine-tuned detectors)."""
    space = LabelSpace.of(("animal", "person", "vehicle"), ("Elk", "Empty"), {"Elk": ["cervidae"]}, 0.3,
                          sure_box=DetectionConfig().sure_box)
    det = combine_labels(_boxes([0], [confidence], [[0.2, 0.8]]), space)
    assert (det.labels()[0], det.data["label_source"][0]) == expected
    assert space.labels[int(det.data["label_probs"][0].argmax())] == expected[0]
    assert det.data["label_probs"][0].sum() == pytest.approx(1.0)


MLWIC_LIKE = LabelSpace.of(("animal", "person", "vehicle"), ("Elk", "Bobcat", "Human", "Vehicle", "Empty"),
                           {"Elk": ["cervidae"], "Bobcat": ["felidae"]}, 0.3, sure_box=0.5, overrule_min_score=0.7)


@pytest.mark.parametrize(("probs", "expected"), [
    # an animal of a species the classifier never learnt: its best guess is Human, but not by much
    ([0.25, 0.2, 0.35, 0.1, 0.1], ("animal", 0.9, "rollup")),
    # a person the classifier splits between Human and Vehicle (0.96 together): a person
    ([0.02, 0.01, 0.75, 0.21, 0.01], ("Human", 0.75, "classifier")),
    # a vehicle, just enough together
    ([0.1, 0.08, 0.32, 0.4, 0.1], ("Vehicle", 0.4, "classifier")),
    # an animal the classifier names: rule 8 has nothing to say
    ([0.6, 0.1, 0.2, 0.05, 0.05], ("Elk", 0.6, "classifier")),
])
def test_the_classifier_needs_a_majority_to_turn_an_animal_box_into_a_person(probs, expected):
    det = combine_labels(_boxes([0], [0.9], [probs]), MLWIC_LIKE)
    label, score, source = expected
    assert (det.labels()[0], det.data["label_source"][0]) == (label, source)
    assert det.data["label_score"][0] == pytest.approx(score)
    vote = det.data["label_probs"][0]
    assert MLWIC_LIKE.labels[int(vote.argmax())] == label and vote.sum() == pytest.approx(1.0)
    if label == "animal":  # no person or vehicle mass left to vote for a person event
        assert vote[[MLWIC_LIKE.index("Human"), MLWIC_LIKE.index("Vehicle")]].sum() == 0


def test_an_unsure_person_stays_private():
    from edge.analysis.labels import confident_animals

    det = combine_labels(_boxes([0], [0.9], [[0.25, 0.2, 0.35, 0.1, 0.1]]), MLWIC_LIKE)
    assert not confident_animals(det, frozenset(), 0.5)[0]  # blurred, never embedded


def test_without_the_rule_the_best_class_decides():
    space = LabelSpace.of(("animal",), ("Elk", "Human"), None, 0.3, overrule_min_score=None)
    det = combine_labels(_boxes([0], [0.9], [[0.45, 0.55]]), space)
    assert det.labels()[0] == "Human"

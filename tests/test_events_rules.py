"""Bursts and watch-list rules: pure functions of labelled detections and config."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge.analysis.labels import LabelSpace, combine_labels
from edge.events.bursts import BurstConfig, BurstState, Event, add_frame, aggregate_burst, event_id, joins, voters
from edge.events.rules import RulesConfig, WatchRule, decide_alert, thresholds_for
from edge.runtime.detections import Detections

LABELS = ["cat", "rat", "other"]
SPACE = LabelSpace(("animal", "person", "vehicle"), tuple(LABELS))
T0 = datetime(2026, 5, 1, 21, 0, 0, tzinfo=timezone(timedelta(hours=-8)))


def _labelled(probs, class_ids=None) -> Detections:
    """Boxes with the classifier's ``probs`` (one row per box) and their final labels."""
    probs = np.array(probs, np.float32).reshape(-1, 3)
    ids = np.zeros(len(probs), np.int64) if class_ids is None else np.array(class_ids)
    det = Detections(np.zeros((len(probs), 4)), np.full(len(probs), 0.9), ids, {"species_probs": probs})
    return combine_labels(det, SPACE)


def _burst(*frames):
    state = BurstState("e1", "sd", T0, T0)
    for i, probs in enumerate(frames):
        state = add_frame(state, T0 + timedelta(seconds=i), _labelled(probs), SPACE.labels)
    return state


def test_aggregate_is_mean_over_confident_crops():
    state = _burst([[0.8, 0.1, 0.1]], [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], [])
    event = aggregate_burst(state, BurstConfig(top_k=2))
    assert event.frames == 3 and event.start == T0 and event.end == T0 + timedelta(seconds=2)
    assert event.label == "cat" and event.score == pytest.approx((0.8 + 0.6 + 0.2) / 3, abs=1e-4)
    assert list(event.probs) == ["cat", "rat"]
    assert event.counts == {"cat": 1, "rat": 1}


def test_counts_take_the_busiest_frame():
    state = _burst([[0.9, 0.05, 0.05]], [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    assert aggregate_burst(state, BurstConfig()).counts == {"cat": 2, "rat": 1}


def test_empty_burst_has_no_label():
    event = aggregate_burst(_burst([], []), BurstConfig())
    assert event.label is None and event.score == 0.0 and event.frames == 2


def test_voters_are_the_confident_boxes():
    det = combine_labels(Detections(np.zeros((2, 4)), [0.9, 0.1], [0, 0], {"species_probs": np.eye(2, 3)}), SPACE)
    assert voters(det, BurstConfig(min_crop_confidence=0.5)).labels() == ["cat"]


def test_a_person_box_votes_person_whatever_the_classifier_says():
    """The reproduction: a detector ``person`` whose crop the classifier calls ``cat`` at 0.9."""
    state = add_frame(BurstState("e1", "sd", T0, T0), T0, _labelled([[0.9, 0.05, 0.05]], class_ids=[1]), SPACE.labels)
    event = aggregate_burst(state, BurstConfig())
    assert (event.label, event.score, event.counts) == ("person", 1.0, {"person": 1})
    assert "cat" not in event.probs
    assert decide_alert(event, RulesConfig(watch=[WatchRule(label="cat", threshold=0.1)]), None, False) is None


@pytest.mark.parametrize(("seconds", "expected"), [(0, True), (10, True), (10.5, False), (-3, True)])
def test_gap_joins(seconds, expected):
    state = BurstState("e", "sd", T0, T0)
    assert joins(state, T0 + timedelta(seconds=seconds), BurstConfig(gap_seconds=10)) is expected
    assert joins(None, T0, BurstConfig()) is False


def test_event_id_is_stable_and_distinct():
    assert event_id("cam1", "sd", "a.jpg") == "57224a84-7f45-5070-816a-04bb1dabdab8"  # uuid5 in trapedge's namespace
    assert len({event_id("cam1", "sd", "a.jpg"), event_id("cam2", "sd", "a.jpg"), event_id("cam1", "sd", "b.jpg")}) == 3


RULES = RulesConfig(watch=[WatchRule(label="cat", threshold=0.6), WatchRule(label="rat", threshold=0.3, min_count=2)],
                    sites={"north": {"cat": 0.4}, "south": {"cat": None}})


def _event(probs, counts):
    return Event("e", "sd", T0, T0, 1, max(probs, key=probs.get), max(probs.values()), probs, counts)


@pytest.mark.parametrize(
    ("probs", "counts", "site", "alerted", "expected"),
    [
        ({"cat": 0.7}, {"cat": 1}, None, False, "cat"),
        ({"cat": 0.5}, {"cat": 1}, None, False, None),
        ({"cat": 0.5}, {"cat": 1}, "north", False, "cat"),
        ({"cat": 0.9}, {"cat": 1}, "south", False, None),
        ({"cat": 0.9}, {"cat": 1}, None, True, None),
        ({"rat": 0.5}, {"rat": 1}, None, False, None),
        ({"rat": 0.5}, {"rat": 2}, None, False, "rat"),
        ({"cat": 0.65, "rat": 0.9}, {"cat": 1, "rat": 3}, None, False, "rat"),
        ({"other": 0.99}, {"other": 1}, None, False, None),
    ],
)
def test_decide_alert(probs, counts, site, alerted, expected):
    decision = decide_alert(_event(probs, counts), RULES, site, alerted)
    assert (decision.label if decision else None) == expected


def test_site_thresholds():
    assert thresholds_for(RULES, "north") == {"cat": (0.4, 1), "rat": (0.3, 2)}
    assert thresholds_for(RULES, "south") == {"rat": (0.3, 2)}


def test_an_event_says_why_it_did_or_did_not_alert():
    from datetime import datetime, timezone

    from edge.events.bursts import Event
    from edge.events.rules import RulesConfig, WatchRule, alert_reason

    t = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def event(probs, counts):
        return Event("e", "sd", t, t, 2, max(probs, key=probs.get), max(probs.values()), probs, counts, True)

    rules = RulesConfig(watch=[WatchRule(label="fox", threshold=0.5), WatchRule(label="cat", threshold=0.6, min_count=2)])
    assert alert_reason(event({"fox": 0.37}, {"fox": 1}), rules, None, False) == "fox 0.37 < threshold 0.50"
    assert alert_reason(event({"fox": 0.8}, {"fox": 1}), rules, None, True) == "fox 0.80 >= threshold 0.50"
    # alerted while the burst was open; later frames pulled the mean below the threshold: said, not hidden
    assert alert_reason(event({"fox": 0.37}, {"fox": 1}), rules, None, True) == (
        "alerted mid-burst (the burst so far met fox's threshold 0.50); the whole burst ends at fox 0.37")
    assert alert_reason(event({"cat": 0.9}, {"cat": 1}), rules, None, False) == "cat: 1 crops in one frame < min_count 2"
    assert alert_reason(event({"bear": 0.9}, {"bear": 1}), rules, None, False).startswith("no watch-listed label")
    assert alert_reason(event({"bear": 0.9}, {"bear": 1}), RulesConfig(), None, False) == "no watch-list"

"""The review's history in the central store: undo of each step, skip to the back, paging, migration 3 -> 4.

The sightings are the SpotID leopard crops; the expectations are written out by hand (queue order,
what each undo restores), never read back from the code under test.
"""

import numpy as np
import pytest

from central import browse, review
from central.ingest import Sighting
from central.store import MIGRATIONS, CentralStore
from common.sqlite import apply_migrations, connect


@pytest.fixture
def ids(leopard_store, leopard_sightings):
    return [s.id for s in leopard_sightings]


def test_undo_restores_each_kind_of_step(leopard_store, ids):
    store = leopard_store
    a, b, c = ids[:3]
    review.decide(store, a, b, "no_match")
    review.decide(store, a, b, "match")  # a changed verdict: undo must give back the "no_match"
    store.skip(c)
    store.finish(ids[3])
    assert store.queue(limit=2) == [b, ids[4]] and store.queue(limit=100)[-1] == c  # a matched, c at the back
    assert [(d.candidate_id, d.verdict) for d in store.decisions()] == [(b, "match")]

    assert review.undo(store) == {"action": "done", "anchor": ids[3], "candidate": None}
    assert store.queue(limit=3) == [b, ids[3], ids[4]]
    assert review.undo(store)["action"] == "skip"
    assert store.queue(limit=3) == [ids[1], c, ids[3]]
    assert review.undo(store) == {"action": "match", "anchor": a, "candidate": b}
    assert [(d.candidate_id, d.verdict) for d in store.decisions()] == [(b, "no_match")]
    assert store.queue(limit=1) == [a]  # the match had ended the anchor; undone, it is back
    assert review.undo(store)["action"] == "no_match"
    assert store.decisions() == []
    assert review.undo(store) is None
    assert [s.undone_at is not None for s in store.history()] == [True] * 4
    assert [s.action for s in store.history()] == ["done", "skip", "match", "no_match"]


def test_paging_wraps_and_changes_nothing(leopard_store, ids):
    store = leopard_store
    assert store.queue_neighbour(ids[0], 1) == ids[1]
    assert store.queue_neighbour(ids[0], -1) == ids[-1]  # wraps around
    assert store.queue_neighbour(ids[-1], 1) == ids[0]
    assert store.queue_neighbour("unknown", 1) == ids[0]
    store.skip(ids[0])
    assert store.queue_neighbour(ids[-1], 1) == ids[0] and store.queue_position(ids[0]) == len(ids)
    assert store.count("sightings", "reviewed = 1") == 0 and len(store.queue(limit=1000)) == len(ids)


def test_a_step_on_an_unknown_image_is_refused_and_not_logged(leopard_store):
    with pytest.raises(ValueError, match="unknown image"):
        leopard_store.skip("nope")
    assert leopard_store.history() == []


def test_search_and_individual_page_follow_the_links(leopard_store, leopard_sightings):
    store, s = leopard_store, leopard_sightings
    name = s[0].individual
    same = [x for x in s if x.individual == name]
    review.decide(store, same[0].id, same[1].id, "match")
    found = browse.search_individuals(store, name.lower())
    assert found[0]["count"] == 2 and found[0]["name"] == name
    assert sum(f["count"] for f in found) == len(same)  # the others are each an individual of one image
    page = browse.individual_view(store, same[1].id)
    assert sorted(i["id"] for i in page["images"]) == sorted([same[0].id, same[1].id])
    assert browse.individual_view(store, "unknown") is None
    assert browse.search_individuals(store, "   ") == []


def test_an_individual_is_first_seen_by_the_clock_not_the_text(tmp_path):
    # 06:00 at +10:00 is 20:00 UTC the day before 05:00Z: compared as text it came last, so first and last seen
    # were swapped between a camera in Australia and one on UTC
    store = CentralStore(tmp_path / "c.db")
    times = {"utc": "2024-05-01T05:00:00Z", "sydney": "2024-05-01T06:00:00+10:00", "enrolled": "2024-05-02T00:00:00"}
    for k, (device, time) in enumerate(times.items()):
        store.add_sighting(Sighting(id=device, device=device, event_id="e", frame_time=time, label="leopard",
                                    model="m", vector=np.eye(3, 8)[k]))
    review.decide(store, "utc", "sydney", "match")
    review.decide(store, "utc", "enrolled", "match")
    page = browse.individual_view(store, "utc")
    assert [i["id"] for i in page["images"]] == ["sydney", "utc", "enrolled"]
    assert (page["first_seen"], page["last_seen"]) == (times["sydney"], times["enrolled"])


def test_a_version_3_database_gets_the_history_and_keeps_its_verdicts(tmp_path, leopard_sightings):
    path = tmp_path / "central.db"
    conn = connect(path)
    apply_migrations(conn, MIGRATIONS[:3])
    conn.close()
    store = CentralStore(path)
    for sighting in leopard_sightings[:3]:
        store.add_sighting(sighting)
    store.decide(leopard_sightings[0].id, leopard_sightings[1].id, "match")  # a verdict from before the history
    store.close()
    store = CentralStore(path)
    try:
        assert store.history() == [] and len(store.decisions()) == 1
        assert store.queue() == [s.id for s in leopard_sightings[:3]]
        assert review.undo(store) is None  # a verdict without a history is not undone by accident
    finally:
        store.close()

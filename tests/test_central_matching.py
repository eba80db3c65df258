"""central matching: individuals graph, top-k grouping, the matcher, local features and exports on real crops."""

import csv
import json
from collections import Counter
from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest

from central import camtrapdp, exports
from central.config import DeploymentSite, ExportsConfig
from central.enroll import link_known
from central.fusion import PRIOR, noisy_or
from central.gallery import Hit, NumpyGallery
from central.graph import build
from central.ingest import Sighting
from central.local_features import extract, inliers
from central.matching import Matcher, rank_individuals
from central.review import decide
from central.store import CentralStore, Decision


@pytest.fixture
def store(leopard_store):
    return leopard_store


def d(a, b, verdict="match", cosine=None):
    return Decision(a, b, verdict, cosine, "2026-01-01T00:00:00")


@pytest.mark.parametrize("decisions, components, conflicts", [
    ([], [], []),
    ([d("a", "b"), d("b", "c")], [{"a", "b", "c"}], []),
    ([d("a", "b"), d("c", "d")], [{"a", "b"}, {"c", "d"}], []),
    ([d("a", "b"), d("b", "c"), d("a", "c", "no_match")], [{"a", "b", "c"}], [("a", "c", ["a", "b", "c"])]),
    ([d("a", "c", "no_match"), d("a", "b")], [{"a", "b"}], []),
])
def test_components_and_conflicts(decisions, components, conflicts):
    individuals, found = build(decisions)
    assert sorted(map(set, individuals.members().values()), key=sorted) == sorted(components, key=sorted)
    assert [(c.anchor_id, c.candidate_id, c.path) for c in found] == conflicts


@pytest.mark.parametrize("hits, groups, skip, k, expected", [
    (["a", "b", "c"], {}, set(), 2, [("a", "a"), ("b", "b")]),
    (["a", "b", "c", "d"], {"b": "a", "c": "a"}, set(), 2, [("a", "a"), ("d", "d")]),
    (["b", "a", "c"], {"b": "a"}, {"a"}, 5, [("c", "c")]),
])
def test_rank_individuals_keeps_the_best_image_per_individual(hits, groups, skip, k, expected):
    ranked = rank_individuals([Hit(h, 1.0 - i / 10) for i, h in enumerate(hits)], lambda x: groups.get(x, x), skip, k)
    assert [(ind, hit.id) for ind, hit in ranked] == expected


@pytest.mark.parametrize("dim, ids, expectation", [
    (4, ["a", "b"], does_not_raise()),
    (4, ["a", "a"], does_not_raise()),
])
def test_numpy_gallery_is_exact_and_ignores_known_ids(dim, ids, expectation):
    gallery = NumpyGallery(dim)
    vectors = np.eye(dim, dtype=np.float32)[: len(ids)]
    with expectation:
        gallery.add(ids, vectors)
        gallery.add(ids, vectors)
    assert len(gallery) == len(set(ids))
    assert gallery.search(np.eye(dim, dtype=np.float32)[0], 1)[0].id == "a"


def test_matcher_proposes_distinct_individuals_and_skips_the_anchors_own(store, leopard_sightings):
    known = [s for s in leopard_sightings if s.individual in ("BHA32_Right", "CUL66_Left")]
    link_known(store, known)
    matcher = Matcher(store, top_k=5, local_matching=False, separate_sides=False)
    anchor = leopard_sightings[3]  # BGL09_right, not linked
    candidates = matcher.propose(anchor)
    individuals, _ = build(store.decisions())
    # independent expectation: brute-force cosine, standardised over the 100 nearest, noisy-OR per component
    others = [s for s in leopard_sightings if s.id != anchor.id]
    cosines = np.array([s.vector @ anchor.vector for s in others])
    head = np.sort(cosines)[::-1][:100]
    z = (cosines - head.mean()) / max(head.std(), 0.02)
    groups = {}
    for s, p, c in zip(others, PRIOR.probability(z), cosines):
        groups.setdefault(individuals.find(s.id), []).append((p, c, s.id))
    expected = sorted(groups.values(), key=lambda g: (-noisy_or([p for p, _, _ in g]), -max(g)[1]))
    assert [c.image_id for c in candidates] == [max(g)[2] for g in expected[:5]]
    probabilities = [noisy_or([p for p, _, _ in g]) for g in expected[:5]]
    assert [c.confidence for c in candidates] == pytest.approx(probabilities, rel=1e-4)
    # a confirmed anchor's own individual is never proposed again
    decide(store, anchor.id, candidates[0].image_id, "match")
    again = matcher.propose(anchor)
    assert candidates[0].individual not in {c.individual for c in again}
    assert individuals.find(anchor.id) not in {c.individual for c in again}


def test_the_first_search_stays_within_what_an_index_answers_from_itself(store, leopard_sightings):
    """A shortlist of 600 asks the gallery for at most 1,000 images first (pgvector's HNSW returns at most
    ef_search <= 1000 rows; a deeper search scans every vector), and still gets every comparable image."""
    from central.gallery import INDEXED_DEPTH

    asked = []

    class Recording(NumpyGallery):
        def search(self, query, k):
            asked.append(k)
            return super().search(query, k)

    matcher = Matcher(store, local_matching=False, shortlist=600, separate_sides=False,
                      factory=lambda model, dim: Recording(dim))
    proposal = matcher.proposal(leopard_sightings[3])
    assert asked and asked[0] == INDEXED_DEPTH == 1000
    assert proposal.shortlisted == len(leopard_sightings) - 1


def test_local_matching_counts_more_inliers_for_the_same_leopard(leopard_sightings):
    by_individual = {}
    for s in leopard_sightings:
        by_individual.setdefault(s.individual, []).append(s)
    anchor, same = by_individual["BRL17_Left"][:2]
    others = [group[0] for name, group in by_individual.items() if name != "BRL17_Left"]
    features = [extract(s.crop_jpeg) for s in (anchor, same, *others)]
    counts = [inliers(features[0], f) for f in features[1:]]
    assert counts[0] > 3 * max(counts[1:]) and counts[0] >= 20
    assert inliers(features[0], extract(b"not a jpeg")) == 0


def test_local_matching_moves_the_true_individual_up(store, leopard_sightings):
    plain = Matcher(store, top_k=5, local_matching=False, separate_sides=False)
    fused = Matcher(store, top_k=5, time_budget_s=30, separate_sides=False)
    truth = {s.id: s.individual for s in leopard_sightings}
    hits = [[truth[c.image_id] == s.individual for c in m.propose(s)][:1] for s in leopard_sightings
            for m in (plain, fused)]
    plain_top1, fused_top1 = sum(h[0] for h in hits[0::2]), sum(h[0] for h in hits[1::2])
    assert fused_top1 == len(leopard_sightings) and fused_top1 > plain_top1  # 44 of 44; cosine alone 33


def test_exports_follow_the_confirmed_individuals(store, leopard_sightings, tmp_path):
    link_known(store, leopard_sightings)
    spotid = exports.export_spotid(store, tmp_path / "spotid")
    counts = Counter(s.individual for s in leopard_sightings)
    assert {p.name: len(list(p.glob("*.jpg"))) for p in spotid.iterdir() if p.is_dir()} == dict(counts)
    with (spotid / "matches.csv").open() as handle:
        matches = list(csv.DictReader(handle))
    assert len(matches) == len(leopard_sightings) - len(counts)
    assert {m["verdict"] for m in matches} == {"match"}
    sites = ExportsConfig(deployments={"enrolled": DeploymentSite(latitude=-24.99, longitude=31.59)})
    observations = exports.export_camtrapdp(store, tmp_path / "dp", sites).parent / "observations.csv"
    with observations.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == camtrapdp.OBSERVATION_COLUMNS
    truth = {s.id: s.individual for s in leopard_sightings}
    assert all(truth[r["observationID"]] == r["individualID"] for r in rows) and len(rows) == 44
    batch = json.loads(exports.export_megadetector(store, tmp_path / "md").read_text())
    assert len(batch["images"]) == 44
    assert {i["detections"][0]["individual_id"] for i in batch["images"]} == set(counts)


def test_spotid_export_keeps_individuals_and_images_apart(tmp_path, data):
    # names reduced to [A-Za-z0-9._-] merged "豹一" with "豹二" (both "__") and "Spot 1" with "Spot_1", and
    # one image overwrote the other, without a word
    store = CentralStore(tmp_path / "c.db")
    rng = np.random.default_rng(0)
    crop = next((data / "reid/leopard_spotid/crops").glob("*/*.jpg")).read_bytes()
    names = {"豹一": ["a.jpg", "b.jpg"], "豹二": ["a.jpg", "b.jpg"], "Spot 1": ["c.jpg", "d.jpg"],
             "Spot_1": ["cam/e.jpg", "cam__e.jpg"]}
    known = [Sighting(id=f"{k}-{i}", device="enrolled", event_id=individual, frame_time="2024-01-01T00:00:00",
                      label=None, model="m", vector=rng.normal(size=8), crop_jpeg=crop, name=name,
                      individual=individual)
             for k, (individual, files) in enumerate(names.items()) for i, name in enumerate(files)]
    for s in known:
        store.add_sighting(s)
    link_known(store, known)
    out = exports.export_spotid(store, tmp_path / "spotid")
    assert sorted((p.parent.name, p.name) for p in out.glob("*/*.jpg")) == sorted([
        ("Spot 1", "c.jpg"), ("Spot 1", "d.jpg"), ("Spot_1", "cam__e.jpg"), ("Spot_1", "cam__e-2.jpg"),
        ("豹一", "a.jpg"), ("豹一", "b.jpg"), ("豹二", "a.jpg"), ("豹二", "b.jpg")])


def test_unconfirmed_individuals_get_numbered_names(tmp_path, leopard_sightings):
    store = CentralStore(tmp_path / "c.db")
    for s in leopard_sightings[:3]:
        store.add_sighting(type(s)(**{**s.__dict__, "individual": None}))
    decide(store, leopard_sightings[0].id, leopard_sightings[1].id, "match")
    store.mark_reviewed(leopard_sightings[2].id)
    names = [i.individual for i in exports.identified(store)]
    assert names == ["ind-0001", "ind-0001", "ind-0002"]

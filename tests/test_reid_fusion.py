"""Fused, calibrated matching: P(same) ordering, prior and refit, sides, time budget, open set, evaluation."""

import json
import os
from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest
from PIL import Image

from central.calibration import PairEvidence, calibrate, fit
from central.enroll import LabelledImage, claim_ids, link_known, sightings_of
from central.evaluate import SWEEP_THRESHOLDS, LabelledSet, evaluate, open_set_figures
from central.fusion import PRIOR, fuse, noisy_or, propose_new
from central.gallery import Hit
from central.ingest import Sighting
from central.local_features import EMPTY
from central.matching import Matcher
from central.review import decide
from central.sides import comparable, side_of, side_of_name
from central.store import CentralStore


def sighting(sid, vector, name=None, meta=None):
    return Sighting(id=sid, device="cam", event_id=sid, frame_time="2026-01-01T00:00:00", label=None, model="m@1",
                    vector=np.asarray(vector, np.float32), name=name, meta=meta or {})


def test_candidates_are_ordered_by_their_probability_on_real_leopards(leopard_store, leopard_sightings):
    matcher = Matcher(leopard_store, top_k=5, time_budget_s=30)
    truth = {s.id: s.individual for s in leopard_sightings}
    firsts = []
    for anchor in leopard_sightings:
        proposal = matcher.proposal(anchor)
        confidences = [c.confidence for c in proposal.candidates]
        assert confidences == sorted(confidences, reverse=True)
        assert not proposal.budget_exceeded and proposal.matched == proposal.shortlisted
        firsts.append(truth[proposal.candidates[0].image_id] == anchor.individual)
    assert all(firsts)  # SpotID leopards: rank-1 stays 1.00 through the central path


def test_local_evidence_can_reorder_against_the_cosine():
    hits = [Hit("a", 0.9), Hit("b", 0.8), Hit("c", 0.7), Hit("d", 0.6)]
    fused = fuse(hits, lambda i: i, PRIOR, {"a": 0, "b": 0, "c": 60, "d": 0}.get, shortlist=4, budget_s=10)
    order = [s.individual for s in fused.individuals]
    assert order[0] == "c"
    probabilities = [s.probability for s in fused.individuals]
    assert probabilities == sorted(probabilities, reverse=True)
    odds = sum(p / (1 - p) for p in probabilities)
    assert fused.p_new == pytest.approx(1 / (1 + odds))


def test_before_any_verdict_twice_the_inliers_outrank_the_nearest_cosine():
    # an embedder that never saw the species orders its gallery by little more than chance: the prior lets
    # local evidence decide (a cosine weight of 0.8 kept the nearest image first here, and lion train's rank-1
    # at 0.19 instead of 0.29), while equal inliers still follow the cosine
    hits = [Hit(name, cosine) for name, cosine in zip("abcdef", (0.9, 0.85, 0.8, 0.75, 0.7, 0.65))]
    fused = fuse(hits, lambda i: i, PRIOR, {"a": 10, "f": 20}.get, shortlist=6, budget_s=10)
    assert [s.individual for s in fused.individuals][:2] == ["f", "a"]
    tied = fuse(hits, lambda i: i, PRIOR, {"a": 10, "f": 10}.get, shortlist=6, budget_s=10)
    assert [s.individual for s in tied.individuals][:2] == ["a", "f"]


def test_prior_is_used_without_verdicts_and_rises_with_the_evidence(leopard_store, leopard_sightings):
    assert calibrate([]) is PRIOR
    proposal = Matcher(leopard_store, time_budget_s=30).proposal(leopard_sightings[0])
    assert proposal.calibration == "prior"
    z, n = np.meshgrid(np.linspace(-3, 3, 7), [0, 5, 20, 100])
    p = PRIOR.probability(z, n)
    assert (np.diff(p, axis=1) > 0).all() and (np.diff(p, axis=0) > 0).all()
    assert (np.diff(PRIOR.probability(np.linspace(-3, 3, 7))) > 0).all()


def test_fit_recovers_a_known_logistic_curve():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    same = rng.uniform(size=len(x)) < 1 / (1 + np.exp(-(1.5 * x[:, 0] + 0.5 * x[:, 1] - 2)))
    assert fit(x, same) == pytest.approx([1.5, 0.5, -2], abs=0.1)


@pytest.mark.parametrize("positives, negatives, refitted", [(0, 0, False), (4, 10, False), (5, 5, True), (50, 50, True)])
def test_refit_needs_enough_verdicts_of_each_kind(positives, negatives, refitted):
    # the verdicts say: inliers mean nothing here, a high cosine does
    pairs = [PairEvidence(2.0, 3, True)] * positives + [PairEvidence(-1.0, 40, False)] * negatives
    model = calibrate(pairs, min_pairs=5)
    assert (model is not PRIOR) is refitted
    if refitted:
        assert model.probability(2.0, 3) > PRIOR.probability(2.0, 3)
        assert model.probability(-1.0, 40) < PRIOR.probability(-1.0, 40)
        assert model.positives == positives and model.negatives == negatives


def test_verdicts_on_proposed_pairs_refit_the_matcher(leopard_store, leopard_sightings):
    matcher = Matcher(leopard_store, top_k=20, min_pairs=2, time_budget_s=30)
    truth = {s.id: s.individual for s in leopard_sightings}
    for anchor in leopard_sightings[::6]:
        candidates = matcher.propose(anchor)
        same = [c for c in candidates if truth[c.image_id] == anchor.individual][:1]
        other = [c for c in candidates if truth[c.image_id] != anchor.individual][:1]
        for candidate, verdict in [*((c, "match") for c in same), *((c, "no_match") for c in other)]:
            decide(leopard_store, anchor.id, candidate.image_id, verdict)
    assert matcher.state()[1] is not PRIOR
    proposal = matcher.proposal(leopard_sightings[1])
    assert proposal.calibration.startswith("fitted on")


@pytest.mark.parametrize("name, meta, side", [
    ("Ayo/Ayo_Left_Face.png", {}, "left"),
    ("BGL09_right/0_0_BG-102B.jpg", {}, "right"),
    ("Ayo/Ayo_Portrait.png", {}, None),
    ("left_and_right.png", {}, None),
    ("Ayo/Ayo_Portrait.png", {"side": "Right"}, "right"),
    ("leftover.png", {}, None),
])
def test_side_comes_from_meta_or_a_word_of_the_name(name, meta, side):
    assert side_of(meta, name) == side
    if not meta:
        assert side_of_name(name) == side


def test_different_known_sides_are_never_compared(tmp_path):
    store = CentralStore(tmp_path / "c.db")
    v = np.array([1.0, 0.0, 0.0])
    sightings = [sighting("anchor", v, "x_Left.jpg"), sighting("twin", v, "x_Right.jpg"),
                 sighting("far", [0.6, 0.8, 0.0], "y_left.jpg"), sighting("unknown", [0.5, 0.0, 0.86], "z.jpg")]
    for s in sightings:
        store.add_sighting(s)
    candidates = Matcher(store, local_matching=False).propose(sightings[0])
    assert {c.image_id for c in candidates} == {"far", "unknown"}
    both = Matcher(store, local_matching=False, separate_sides=False).propose(sightings[0])
    assert both[0].image_id == "twin"
    assert comparable("left", None) and not comparable("left", "right")


def test_local_matching_stops_at_the_time_budget():
    ticks = iter(np.arange(0, 100, 0.3))
    hits = [Hit(str(i), 0.9 - i / 100) for i in range(10)]
    calls = []
    fused = fuse(hits, lambda i: i, PRIOR, lambda i: calls.append(i) or 5, shortlist=8, budget_s=1.0,
                 clock=lambda: float(next(ticks)))
    # clock: start 0.0, then 0.3, 0.6, 0.9 allow a match each, 1.2 stops
    assert calls == ["0", "1", "2"] and fused.matched == 3 and fused.budget_exceeded
    assert [e.inliers for e in fused.evidence[:5]] == [5, 5, 5, None, None]


def test_known_enrolment_is_not_queued_for_review(tmp_path, leopard_sightings):
    store = CentralStore(tmp_path / "c.db")
    for s in leopard_sightings:
        store.add_sighting(s)
    known = [s for s in leopard_sightings if s.individual == "BRL17_Left"]
    link_known(store, known)
    queued = set(store.queue(limit=100))
    assert queued == {s.id for s in leopard_sightings} - {s.id for s in known}


def test_a_device_cannot_take_an_enrolled_images_id(tmp_path, capsys):
    # the enrolled id (uuid5 of model/path) sent first by a device: enrolment kept the device's sighting
    # in the image's place and linked it to the individual as a known match
    root = tmp_path / "known"
    (root / "Leo").mkdir(parents=True)
    images = []
    for name, shade in (("1.jpg", 40), ("2.jpg", 90)):
        Image.new("RGB", (40, 30), (shade,) * 3).save(root / "Leo" / name)
        images.append(LabelledImage("Leo", root / "Leo" / name))
    enrolled = sightings_of(images, np.eye(2, 16), "m@1", root)
    store = CentralStore(tmp_path / "c.db")
    rogue = Sighting(id=enrolled[0].id, device="cam-rogue", event_id="e", frame_time="2024-01-01T00:00:00Z",
                     label="leopard", model="m@1", vector=np.eye(3, 16)[2])
    store.add_sighting(rogue)
    claimed = claim_ids(store, enrolled)
    assert sum(store.add_sighting(s) for s in claimed) == 2
    link_known(store, claimed)
    assert "1.jpg: its id is already a device's sighting's" in capsys.readouterr().err
    assert {(d.anchor_id, d.candidate_id) for d in store.decisions()} == {(claimed[0].id, claimed[1].id)}
    assert rogue.id not in {claimed[0].id, claimed[1].id} and store.sighting(rogue.id).device == "cam-rogue"
    assert [s.id for s in claim_ids(store, enrolled)] == [s.id for s in claimed]  # enrolling again adds nothing


def test_open_set_policy_and_noisy_or():
    fused = fuse([Hit("a", 0.9), Hit("b", 0.1)], lambda i: i, PRIOR, None)
    assert propose_new(fused, 1.0) and not propose_new(fused, 0.0)
    assert noisy_or([0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.875)


def tiny_set() -> LabelledSet:
    """5 images: A (a1, a2), B (b1, b2), C (c1). a2 lies nearer B than a1; C has no other image."""
    vectors = np.array([[1, 0, 0], [1, 1.2, 0], [0, 1, 0], [0, 1, 0.1], [0, 0, 1]], np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return LabelledSet("tiny", ["A", "A", "B", "B", "C"], [None] * 5, vectors, [EMPTY] * 5)


@pytest.mark.parametrize("new_below, precision, recall, expectation", [
    (0.0, 0.0, 0.0, does_not_raise()),  # never 'new'
    (1.0, 5 / 9, 1.0, does_not_raise()),  # always 'new': c1, and the 4 anchors asked with their individual out
])
def test_evaluation_figures_on_a_tiny_set_are_exact(new_below, precision, recall, expectation):
    with expectation:
        figures = evaluate(tiny_set(), local=False, new_below=new_below)
    # a1, b1, b2 find their own first; a2 finds B first, then A: rank-1 3/4, top-5 1
    assert (figures.anchors, figures.rank1, figures.top5) == (4, 0.75, 1.0)
    # image APs: a1 1, a2 1/3 (b1 and b2 come first), b1 1, b2 1
    assert figures.mAP == pytest.approx(round((3 + 1 / 3) / 4, 3))
    assert (figures.new_precision, figures.new_recall) == (round(precision, 3), recall)


@pytest.mark.parametrize("best, new, below, expected", [
    ([0.9, 0.2, 0.6, 0.1], [False, True, True, True], 0.5, (1.0, 2 / 3, 0.8)),  # 0.6 is a missed 'new'
    ([0.9, 0.2, 0.6, 0.1], [False, True, True, True], 0.95, (0.75, 1.0, 6 / 7)),  # every one said 'new'
    ([0.9, 0.2], [False, True], 0.1, (0.0, 0.0, 0.0)),  # never said: no precision, no F1
    ([0.0], [True], 0.05, (1.0, 1.0, 1.0)),  # no candidate at all is 'new' at any threshold
])
def test_open_set_figures(best, new, below, expected):
    assert open_set_figures(np.array(best), np.array(new), below) == pytest.approx(expected)


def test_sweep_agrees_with_the_policy_at_each_threshold():
    data = tiny_set()
    swept = evaluate(data, local=False).new_sweep
    assert [row[0] for row in swept] == list(SWEEP_THRESHOLDS)
    for threshold, precision, recall, _ in swept[::6]:
        figures = evaluate(data, local=False, new_below=threshold)
        assert (figures.new_precision, figures.new_recall) == (precision, recall)


def test_enrolled_images_take_their_time_from_exif_or_the_file_name(tmp_path):

    from central.enroll import UNKNOWN_TIME, capture_time
    from central.review import image_view

    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2021:06:05 04:03:02"
    Image.new("RGB", (8, 8)).save(tmp_path / "cam3.jpg", exif=exif)
    Image.new("RGB", (8, 8)).save(tmp_path / "0_0_BG-102B-2019-03-01_19-49-36.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "Amber_Left_Face.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "IMG_20191399_999999.jpg")  # digits that are no date
    assert capture_time(tmp_path / "cam3.jpg") == "2021-06-05T04:03:02"
    assert capture_time(tmp_path / "0_0_BG-102B-2019-03-01_19-49-36.jpg") == "2019-03-01T19:49:36"
    assert capture_time(tmp_path / "Amber_Left_Face.png") == UNKNOWN_TIME
    assert capture_time(tmp_path / "IMG_20191399_999999.jpg") == UNKNOWN_TIME

    class Enrolled:  # the fields image_view reads
        id, name, device, frame_time, label, crop_jpeg, edge_jpeg = "x", "x.jpg", "enrolled", UNKNOWN_TIME, None, b"", None

    assert image_view(Enrolled(), {})["time"] is None  # the page says "date unknown", never 1970


def test_the_same_flank_seen_nearer_and_tilted_keeps_its_inliers_and_the_review_page_draws_them(data):
    """A similarity (scale, tilt, shift) of a real leopard crop keeps a pattern's inliers; another leopard
    shares few; the review page's lines are the matcher's own inliers."""
    import cv2

    from central.keypoints import matched_pairs
    from central.local_features import extract, inliers, match

    crops = data / "reid" / "leopard_spotid" / "crops"
    anchor_path, other_path = (next(iter(sorted((crops / name).glob("*.jpg")))) for name in ("BGL09_right", "BRL17_Left"))
    anchor = cv2.imread(str(anchor_path))
    h, w = anchor.shape[:2]
    tilted = cv2.warpAffine(anchor, cv2.getRotationMatrix2D((w / 2, h / 2), 8, 0.85), (w, h), borderValue=(0, 0, 0))
    encode = lambda image: cv2.imencode(".jpg", image)[1].tobytes()  # noqa: E731
    a, b, c = extract(anchor_path.read_bytes()), extract(encode(tilted)), extract(other_path.read_bytes())
    same, different = inliers(a, b), inliers(a, c)
    assert same >= 30 and same > 3 * different
    found = match(a, b)
    assert found.inliers == same and len(found.source) == len(found.inlier) >= same
    pair = matched_pairs(_with_crop("a", anchor_path.read_bytes()), _with_crop("b", encode(tilted)))
    assert pair.inliers == same and len(pair.pairs) == min(same, 300)
    assert ((pair.pairs >= 0) & (pair.pairs <= 1)).all()  # fractions of each crop's size


def _with_crop(sid, jpeg):
    from dataclasses import replace

    return replace(sighting(sid, [1, 0]), crop_jpeg=jpeg)


def test_the_ratio_test_as_a_matrix_product_keeps_opencvs_matches(data):
    """``ratio_matches`` (one matrix product) keeps exactly the matches OpenCV's brute-force
    ``knnMatch(k=2)`` and Lowe's ratio give, on real crops of the same and of different animals."""
    import cv2

    from central.local_features import RATIO, extract, ratio_matches

    paths = sorted((data / "reid" / "leopard_spotid" / "crops").glob("*/*.jpg"))[::6][:5]
    paths += sorted((data / "reid" / "lion" / "val").glob("*/*.png"))[::20][:4]
    features = [extract(path.read_bytes()) for path in paths]
    compared = 0
    for a in features:
        for b in features:
            if a is b or len(a) < 2 or len(b) < 2:
                continue
            pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors.astype(np.float32),
                                                        b.descriptors.astype(np.float32), k=2)
            good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
            query, train = ratio_matches(a.descriptors, b.descriptors)
            assert query.tolist() == [m.queryIdx for m in good] and train.tolist() == [m.trainIdx for m in good]
            compared += bool(good)
    assert compared >= 40  # pairs with matches were compared, not only empty ones


def test_local_matching_runs_blas_on_one_thread(data):
    """A query's hundreds of small products run on one BLAS thread: shared out they were no faster and took
    twice the CPU, and beside a busy process 1.2-6.3 ms a match instead of 0.8, overrunning the time budget.
    In a fresh interpreter, so that the process-wide setting is this test's to see."""
    import subprocess
    import sys

    crops = sorted((data / "reid" / "lion" / "val").glob("*/*.png"))[:2]
    script = f"""
import json, threadpoolctl
from central.local_features import extract, ratio_matches
before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
a, b = (extract(open(p, "rb").read()) for p in {[str(c) for c in crops]!r})
query, _ = ratio_matches(a.descriptors, b.descriptors)
after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([before, after, len(query)]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")})
    assert done.returncode == 0, done.stderr
    before, after, matches = json.loads(done.stdout)
    if max(before, default=1) < 2:
        pytest.skip("BLAS has one thread here already (one core)")
    assert after and set(after) == {1} and matches > 0


@pytest.mark.parametrize("option, value, said", [("--shortlist", "-3", "--shortlist: Input should be greater than or equal to 1"),
                                                 ("--budget", "-1", "--budget: Input should be greater than 0"),
                                                 ("--new-below", "2", "--new-below: Input should be less than or equal to 1")])
def test_evaluate_refuses_matching_options_the_service_would_refuse(option, value, said, tmp_path, capsys):
    """A negative shortlist or budget gave a table computed on nothing; now one line, before any model loads."""
    from central.evaluate import main

    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), option, value])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"trapedge central evaluate: error: {said}"


@pytest.fixture
def small_lion_set(data, tmp_path):
    """Three real crops of each of two lions, a 16-bit grey copy of one, and a file that is no image."""

    root = tmp_path / "set"
    for lion in sorted(p for p in (data / "reid" / "lion" / "val").iterdir() if p.is_dir())[:2]:
        (root / lion.name).mkdir(parents=True)
        for path in sorted(lion.glob("*.png"))[:3]:
            (root / lion.name / path.name).write_bytes(path.read_bytes())
    first = sorted(root.glob("*/*.png"))[0]
    grey = np.asarray(Image.open(first).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(first.with_name("grey16.png"))
    (first.parent / "notes.jpg").write_text("seen near the river\n")
    return root


def _no_traceback(err: str) -> str:
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_evaluate_leaves_out_an_unreadable_image_with_its_reason_and_reads_16_bit(small_lion_set, bundle_dir, capsys):
    from central.evaluate import main

    assert main([str(small_lion_set), "--bundle", str(bundle_dir)]) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("skipped")] == [
        f"skipped {next(small_lion_set.glob('*/notes.jpg'))}: not a readable image (UnidentifiedImageError)"]
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["set", "no"], ["set", "yes"])]
    assert [row[2:5] for row in rows] == [["7", "2", "7"]] * 2  # images, individuals, anchors: the 16-bit one counts


@pytest.mark.parametrize("make, said", [
    (lambda root: root.mkdir(), "has no images in <individual>/ folders"),
    (lambda root: [(root / name).mkdir(parents=True) or (root / name / "a.png").write_bytes(b"") for name in "ab"],
     "no individual has two readable images (0 of 2 images read, 0 individuals)"),
])
def test_evaluate_refuses_a_set_without_an_answer_in_one_line(tmp_path, bundle_dir, capsys, make, said):
    """An empty folder ended in a TypeError, a folder of unreadable images in an ImageDecodeError traceback."""
    from central.evaluate import main

    make(tmp_path / "set")
    assert main([str(tmp_path / "set"), "--bundle", str(bundle_dir)]) == 2
    last = _no_traceback(capsys.readouterr().err)
    assert last.startswith(f"central.evaluate: {tmp_path / 'set'}") and said in last


def test_evaluate_and_enrol_refuse_a_folder_that_is_no_bundle_in_one_line(small_lion_set, tmp_path, capsys):
    from central.enroll import main as enrol
    from central.evaluate import main as evaluate

    (tmp_path / "central.yaml").write_text(f"store: {{path: {tmp_path / 'central.db'}}}\n")
    assert evaluate([str(small_lion_set), "--bundle", str(tmp_path)]) == 2
    assert _no_traceback(capsys.readouterr().err) == f"central.evaluate: {tmp_path / 'manifest.json'} not found: not " \
                                                     "a model bundle (build one with `make export`)"
    assert enrol([str(small_lion_set), "--config", str(tmp_path / "central.yaml"), "--bundle", str(tmp_path)]) == 2
    assert "not a model bundle" in _no_traceback(capsys.readouterr().err)


def test_enrol_skips_an_unreadable_image_and_enrols_the_rest(small_lion_set, bundle_dir, tmp_path, capsys):
    from central.enroll import main as enrol

    (tmp_path / "central.yaml").write_text(f"store: {{path: {tmp_path / 'central.db'}}}\n")
    assert enrol([str(small_lion_set), "--config", str(tmp_path / "central.yaml"), "--bundle", str(bundle_dir),
                  "--known"]) == 0
    out, err = capsys.readouterr()
    assert "notes.jpg: not a readable image" in err
    assert out.strip() == f"enrolled 7 new of 7 images into {tmp_path / 'central.db'} (1 unreadable, skipped: named above)"
    assert len(CentralStore(tmp_path / "central.db").sightings()) == 7
    (tmp_path / "empty").mkdir()
    assert enrol([str(tmp_path / "empty"), "--config", str(tmp_path / "central.yaml")]) == 2
    assert "has no images in <individual>/ folders" in _no_traceback(capsys.readouterr().err)


def test_an_enrolled_crop_is_upright_by_its_exif_orientation(tmp_path):
    """The crop JPEG (review page, local features) was stored as the file lay; the embedding was of it upright."""
    import io

    from central.enroll import jpeg_of

    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; shown turned 90° clockwise
    Image.new("RGB", (120, 200)).save(tmp_path / "turned.jpg", exif=exif)
    assert Image.open(io.BytesIO(jpeg_of(tmp_path / "turned.jpg"))).size == (200, 120)

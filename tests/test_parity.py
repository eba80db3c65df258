"""The arithmetic of ``make arm64-check`` (edge/cli/parity.py): box matching, recall both ways, label
agreement, embedding cosine and the tolerances, on hand-made frames whose answers are worked out by hand.
No model, no qemu."""

import json
from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest

from edge.cli import parity
from edge.cli.parity import FrameResult, cosine, failed_tolerances, iou_matrix, match_boxes

A = [0, 0, 10, 10]
B = [20, 20, 40, 30]
E1, E2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]


def frame(boxes=(), labels=None, embeddings=None, file="f.jpg", failure=None):
    n = len(boxes)
    return FrameResult(file, np.array(boxes, float).reshape(-1, 4), tuple(labels or ["fox"] * n),
                       np.array(embeddings if embeddings is not None else [E1] * n, float).reshape(n, len(E1)), failure)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([A], [A], [[1.0]]),
        ([A], [B], [[0.0]]),
        ([[0, 0, 2, 2]], [[1, 0, 3, 2]], [[2 / 6]]),  # 2 px² shared of 6
        ([[0, 0, 4, 4]], [[1, 1, 3, 3]], [[4 / 16]]),  # one inside the other
        ([A, B], [B], [[0.0], [1.0]]),
        ([[5, 5, 5, 5]], [[5, 5, 5, 5]], [[0.0]]),  # no area: no overlap, no division by zero
        ([], [A], np.zeros((0, 1))),
    ],
)
def test_iou_matrix(a, b, expected):
    np.testing.assert_allclose(iou_matrix(np.array(a, float), np.array(b, float)), expected)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([A], [A], [(0, 0)]),
        ([A, B], [B, A], [(0, 1), (1, 0)]),
        ([A], [[0, 0, 10, 12], A], [(0, 1)]),  # the better of two candidates
        ([A, [0, 0, 10, 12]], [A], [(0, 0)]),  # one-to-one: the second reference box stays unmatched
        ([[0, 0, 10, 10]], [[0, 0, 10, 21]], []),  # IoU 100/210 < 0.5
        ([[0, 0, 10, 10]], [[0, 0, 10, 20]], [(0, 0)]),  # IoU exactly 0.5 matches
        ([], [A], []),
    ],
)
def test_match_boxes(a, b, expected):
    assert sorted((i, j) for i, j, _ in match_boxes(np.array(a, float), np.array(b, float))) == expected


@pytest.mark.parametrize(
    ("u", "v", "expected"),
    [
        ([1, 2, 3], [2, 4, 6], 1.0),
        ([1, 0], [0, 3], 0.0),
        ([1, 1], [-1, -1], -1.0),
        ([3, 4], [4, 3], 24 / 25),
        ([0, 0], [0, 0], 1.0),
        ([0, 0], [1, 0], 0.0),
    ],
)
def test_cosine(u, v, expected):
    assert cosine(np.array(u, float), np.array(v, float)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("boxes", "labels", "embeddings", "expectation"),
    [
        ([A, B], ["fox", "deer"], [E1, E2], does_not_raise()),
        (np.zeros((0, 4)), [], np.zeros((0, 3)), does_not_raise()),
        ([A, B], ["fox"], [E1, E2], pytest.raises(ValueError, match="1 labels")),
        ([A], ["fox"], [E1, E2], pytest.raises(ValueError, match="2 embeddings")),
        ([[0, 0, 1]], ["fox"], [E1], pytest.raises(ValueError)),
    ],
)
def test_frame_result_shapes_validated(boxes, labels, embeddings, expectation):
    with expectation:
        FrameResult("f.jpg", np.array(boxes, float), tuple(labels), np.array(embeddings, float))


SAME = [frame([A, B], ["fox", "deer"], [E1, E2])]
ROTATED = np.array([np.cos(0.2), np.sin(0.2), 0.0])  # cosine with E1: cos(0.2) = 0.980


@pytest.mark.parametrize(
    ("candidate", "recall", "reference_recall", "agreement", "failures"),
    [
        (SAME, 1.0, 1.0, 1.0, []),
        ([frame([[0.5, 0, 10.5, 10], B], ["fox", "deer"], [E1, E2])], 1.0, 1.0, 1.0, []),  # a shifted box still matches
        ([frame([A], ["fox"], [E1])], 0.5, 1.0, 1.0, ["box recall of x86_64's boxes on aarch64: 0.5000 < 0.98"]),
        ([frame([A, B, [50, 50, 60, 60]], ["fox", "deer", "fox"], [E1, E2, E1])], 1.0, 2 / 3, 1.0,
         ["box recall of aarch64's boxes on x86_64: 0.6667 < 0.98"]),
        ([frame([A, B], ["fox", "bear"], [E1, E2])], 1.0, 1.0, 0.5, ["label agreement on matched boxes: 0.5000 < 0.98"]),
        ([frame([A, B], ["fox", "deer"], [ROTATED, E2])], 1.0, 1.0, 1.0,
         ["embedding cosine p5 over matched crops: 0.9811 < 0.99"]),  # p5 of (0.98007, 1) is 0.98007 + 0.05 × 0.01993
        ([frame(failure="image unreadable")], 1.0, 1.0, float("nan"),
         ["no box found on both machines: labels and embeddings were not compared", "f.jpg: analysed on one machine only"]),
    ],
)
def test_parity_and_tolerances(candidate, recall, reference_recall, agreement, failures):
    result = parity.parity(SAME, candidate)
    assert result.candidate_recall == pytest.approx(recall)
    assert result.reference_recall == pytest.approx(reference_recall)
    assert result.label_agreement == pytest.approx(agreement, nan_ok=True)
    assert failed_tolerances(result) == failures


def test_cosine_gate_is_the_5th_percentile_over_crops():
    """One bad crop in 40 is tolerated by p5 (which the gate uses), one in 20 is not; min shows both."""
    def run(n_good):
        boxes = [[10 * k, 0, 10 * k + 8, 8] for k in range(n_good + 1)]
        reference = [frame(boxes, embeddings=[E1] * (n_good + 1))]
        candidate = [frame(boxes, embeddings=[E1] * n_good + [[1.0, 1.0, 0.0]])]  # cosine 0.7071 for the last
        return parity.parity(reference, candidate)

    tolerated, refused = run(39), run(19)
    assert tolerated.cosine("min") == pytest.approx(0.5 ** 0.5)
    assert tolerated.cosine("p5") == pytest.approx(1.0) and failed_tolerances(tolerated) == []
    assert refused.cosine("p5") == pytest.approx(0.5 ** 0.5 + 0.95 * (1 - 0.5 ** 0.5))  # between 1st and 2nd of 20
    assert failed_tolerances(refused) == [f"embedding cosine p5 over matched crops: {refused.cosine('p5'):.4f} < 0.99"]


def test_runs_of_different_frames_are_refused():
    with pytest.raises(ValueError, match="not of the same frames"):
        parity.parity(SAME, [frame([A, B], file="other.jpg")])


def dump_document(machine, boxes, signed_by="399ba27e44e8bbdc"):
    facts = {"machine": machine, "python": "3.11", "emulated": "cortex-a72" if machine == "aarch64" else None, "versions": {"onnxruntime": "1"},
             "import_seconds": 0.5, "modules_imported": 400, "torch_installed": False, "bundle_version": "v1",
             "precision": "int8", "threads": 1, "signed_by": signed_by}
    return {"facts": facts, "frames": [{"file": "f.jpg", "pixels_sha256": "ab", "boxes": boxes}]}


def test_compare_prints_the_table_and_exits_1_on_a_failed_tolerance(tmp_path, capsys):
    box = {"xyxy": A, "class": "animal", "score": 0.8, "label": "fox", "embedded": True, "embedding": E1}
    (tmp_path / "x86.json").write_text(json.dumps(dump_document("x86_64", [box, {**box, "xyxy": B}])))
    (tmp_path / "arm.json").write_text(json.dumps(dump_document("aarch64", [{**box, "label": "bear"}, {**box, "xyxy": B}])))
    code = parity.main(["compare", str(tmp_path / "x86.json"), str(tmp_path / "arm.json"), "--out", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert code == 1
    assert "label agreement   0.5000 over 2 matched boxes" in out
    assert "decoded pixels identical on 1" in out
    assert "(emulated: the time means nothing)" in out
    assert out.strip().splitlines()[-1] == "FAILED: label agreement on matched boxes: 0.5000 < 0.98"
    assert json.loads((tmp_path / "s.json").read_text())["label_agreement"] == 0.5


def test_compare_fails_when_the_machines_checked_different_signatures(tmp_path, capsys):
    box = {"xyxy": A, "class": "animal", "score": 0.8, "label": "fox", "embedded": True, "embedding": E1}
    (tmp_path / "x86.json").write_text(json.dumps(dump_document("x86_64", [box])))
    (tmp_path / "arm.json").write_text(json.dumps(dump_document("aarch64", [box], signed_by=None)))
    assert parity.main(["compare", str(tmp_path / "x86.json"), str(tmp_path / "arm.json")]) == 1
    out = capsys.readouterr().out
    assert "signature         checked on x86_64 (key 399ba27e44e8bbdc) and on aarch64 (cortex-a72 under qemu) " \
           "(key none: unsigned)" in out
    assert out.strip().splitlines()[-1] == ("FAILED: the bundle's signature checked with different keys: "
                                            "399ba27e44e8bbdc on x86_64, none on aarch64 (cortex-a72 under qemu)")


def test_dump_checks_the_bundle_signature_against_the_key_given(tmp_path, data, bundle_dir, capsys):
    """As the appliance loads a bundle: a key that did not sign it is refused in one line."""
    from common.signing import encode_public, generate_private_key, public_key_of

    stranger = encode_public(public_key_of(generate_private_key()))
    code = parity.main(["dump", str(data), "--bundle", str(bundle_dir), "--trusted-key", stranger,
                        "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not in bundle.trusted_keys" in err

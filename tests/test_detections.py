from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest

from edge.runtime.detections import Detections


@pytest.mark.parametrize(
    ("xyxy", "confidence", "class_id", "data", "expectation"),
    [
        (np.zeros((2, 4)), np.zeros(2), np.zeros(2), {}, does_not_raise()),
        (np.zeros((0, 4)), np.zeros(0), np.zeros(0), {}, does_not_raise()),
        ([], [], [], {}, does_not_raise()),
        (np.zeros((2, 4)), np.zeros(2), np.zeros(2), {"embedding": np.zeros((2, 8))}, does_not_raise()),
        (np.zeros((2, 3)), np.zeros(2), np.zeros(2), {}, pytest.raises(ValueError, match="xyxy")),
        (np.zeros((2, 4)), np.zeros(3), np.zeros(2), {}, pytest.raises(ValueError, match="confidence")),
        (np.zeros((2, 4)), np.zeros(2), np.zeros(1), {}, pytest.raises(ValueError, match="class_id")),
        (np.zeros((2, 4)), np.zeros(2), np.zeros(2), {"embedding": np.zeros((3, 8))}, pytest.raises(ValueError, match="embedding")),
    ],
)
def test_shapes_validated(xyxy, confidence, class_id, data, expectation):
    with expectation:
        Detections(xyxy, confidence, class_id, data)


def test_indexing_keeps_per_box_arrays_aligned():
    det = Detections(np.arange(12).reshape(3, 4), [0.1, 0.9, 0.5], [0, 1, 2], {"probs": np.eye(3)})
    picked = det[det.confidence > 0.4]
    assert picked.class_id.tolist() == [1, 2]
    assert picked.data["probs"].tolist() == [[0, 1, 0], [0, 0, 1]]
    single = det[1]
    assert len(single) == 1 and single.xyxy.tolist() == [[4, 5, 6, 7]]
    assert len(Detections.empty()) == 0

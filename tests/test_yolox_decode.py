import numpy as np
import pytest

from edge.runtime.yolox import batched_nms, box_iou, decode_yolox, make_grid, nms, postprocess


def test_iou_exact():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(box_iou(boxes[0], boxes), [1.0, 50 / 150, 0.0, 1.0])


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "kept"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.7], 0.7, [0, 1, 2]),
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.6, 0.9], 0.3, [1]),
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.6, 0.9], 0.34, [1, 0]),
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], 0.5, [0]),
        ([], [], 0.5, []),
    ],
)
def test_nms_table(boxes, scores, threshold, kept):
    result = nms(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), threshold)
    assert result.tolist() == kept


def test_batched_nms_never_suppresses_across_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    kept = batched_nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 0]), 0.5)
    assert sorted(kept.tolist()) == [0, 1]


def test_grid_and_decode_exact():
    grid, strides = make_grid((64, 64), [8, 16, 32])
    assert len(grid) == 64 + 16 + 4
    assert grid[9].tolist() == [1, 1] and strides[9, 0] == 8
    assert grid[64].tolist() == [0, 0] and strides[64, 0] == 16
    raw = np.zeros((len(grid), 6), np.float32)
    raw[9] = [0.5, 0.25, np.log(2.0), 0.0, 10.0, 10.0]  # centre (12, 10), 16x8 box, sure
    boxes, scores = decode_yolox(raw, grid, strides)
    np.testing.assert_allclose(boxes[9], [4, 6, 20, 14], atol=1e-5)
    assert scores[9, 0] == pytest.approx((1 / (1 + np.exp(-10))) ** 2)
    assert scores[0, 0] == pytest.approx(0.25)


def test_postprocess_thresholds_then_suppresses():
    grid, strides = make_grid((64, 64), [8, 16, 32])
    raw = np.full((len(grid), 6), -10.0, np.float32)
    raw[:, :4] = 0
    raw[9, 4:] = 10.0
    raw[10, 0], raw[10, 4:] = -0.5, [10.0, 1.0]  # box [8, 4, 16, 12]: IoU 1/3 with cell 9's, lower score
    raw[40, 4:] = 10.0  # far away
    raw[50, 4:] = [-10.0, 10.0]  # objectness too low: below threshold
    xyxy, scores, classes = postprocess(raw, grid, strides, confidence=0.5, iou_threshold=0.5)
    assert len(xyxy) == 3 and classes.tolist() == [0, 0, 0]
    np.testing.assert_allclose(xyxy[-1], [8, 4, 16, 12], atol=1e-5)
    xyxy, scores, classes = postprocess(raw, grid, strides, confidence=0.5, iou_threshold=0.3)
    assert len(xyxy) == 2 and scores[0] > 0.99
    np.testing.assert_allclose(xyxy[0], [4, 4, 12, 12], atol=1e-5)

"""The second look: tiles that cover the frame, and a merge that keeps one box per animal."""

import re

import numpy as np
import pytest

from edge.analysis.tiles import SecondLookConfig, merge, second_look, tile_windows
from edge.runtime.detections import Detections


def _det(boxes, scores, classes=None) -> Detections:
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), np.array(scores, np.float32),
                      np.array(classes or [0] * n, np.int64))


@pytest.mark.parametrize(("hw", "grid", "overlap"), [((480, 640), (2, 2), 0.2), ((1944, 2592), (3, 3), 0.25),
                                                     ((100, 100), (1, 1), 0.0)])
def test_tiles_cover_the_frame_and_overlap(hw, grid, overlap):
    windows = tile_windows(hw, grid, overlap)
    assert len(windows) == grid[0] * grid[1]
    covered = np.zeros(hw, bool)
    for x0, y0, x1, y1 in windows:
        covered[y0:y1, x0:x1] = True
        assert 0 <= x0 < x1 <= hw[1] and 0 <= y0 < y1 <= hw[0]
    assert covered.all()
    if grid[1] > 1:
        (a, _, a1, _), (b, _, _, _) = windows[0], windows[1]
        assert (a1 - b) == pytest.approx(overlap * (a1 - a), abs=2)


@pytest.mark.parametrize(
    ("boxes", "scores", "classes", "kept"),
    [
        ([[0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8], [0, 0], [0]),  # duplicates
        ([[0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8], [0, 1], [0, 1]),  # other class: both stay
        ([[0, 0, 100, 100], [0, 0, 40, 100]], [0.9, 0.6], [0, 0], [0]),  # a tile's cut-off part of the animal
        ([[0, 0, 40, 100], [0, 0, 100, 100]], [0.9, 0.6], [0, 0], [0, 1]),  # a better part keeps the whole
        ([[0, 0, 10, 10], [50, 50, 60, 60]], [0.5, 0.7], [0, 0], [1, 0]),  # two animals, best first
    ],
)
def test_merge(boxes, scores, classes, kept):
    merged = merge([_det(boxes, scores, classes)], nms_iou=0.45, contained=0.8)
    expected = np.array(boxes, np.float32)[kept]
    assert np.array_equal(merged.xyxy, expected)


def test_second_look_finds_what_only_a_tile_shows_and_keeps_the_first_pass():
    image = np.zeros((480, 640, 3), np.uint8)

    def detect_batch(tiles):  # a detector that sees the small animal only in the top-left tile
        return [_det([[100, 100, 120, 115]], [0.6]) if i == 0 else Detections.empty() for i, _ in enumerate(tiles)]

    first = _det([[400, 300, 600, 450]], [0.9])
    merged = second_look(image, first, detect_batch, SecondLookConfig())
    assert merged.xyxy.tolist() == [[400, 300, 600, 450], [100, 100, 120, 115]]


@pytest.mark.parametrize(("when", "hw", "first", "wanted"),
                         [("never", (3000, 4000), 0, False), ("no_box", (480, 640), 0, True),
                          ("no_box", (480, 640), 1, False), ("large", (3000, 4000), 2, True),
                          ("large", (480, 640), 0, False), ("no_box_or_large", (480, 640), 0, True)])
def test_when_to_look_twice(when, hw, first, wanted):
    assert SecondLookConfig(when=when, min_side=0).wanted(hw, first) is wanted


def test_by_default_only_large_frames_without_a_box_look_twice():
    config = SecondLookConfig()
    assert config.wanted((1944, 2592), 0) and not config.wanted((1944, 2592), 1)
    assert not config.wanted((640, 640), 0)


@pytest.mark.parametrize("settings, where", [
    ({"detection": {"second_look": {"grid": [0, 0]}}}, "detection.second_look.grid[0]"),  # tiles of nothing: / 0
    ({"detection": {"second_look": {"grid": [300, 300]}}}, "detection.second_look.grid[0]"),  # held 24 GB
    ({"gate": {"size": 100_000_000}}, "gate.size"),
    ({"store": {"retention_days": 1_000_000}}, "store.retention_days"),  # a cutoff before year 1: OverflowError
])
def test_settings_that_passed_validation_and_failed_the_running_service_are_refused(tmp_path, settings, where):
    import yaml

    from common.config_loader import ConfigError, load_config
    from edge.app.config import EdgeConfig

    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"device_id": "cam", "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path)}],
                                    **settings}))
    with pytest.raises(ConfigError, match=rf"edge\.yaml:\d+: {re.escape(where)}"):
        load_config(path, EdgeConfig)

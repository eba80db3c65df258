"""Info bars, night flag, brightness and the motion gate on real frames."""

import numpy as np
import pytest

from edge.analysis.gate import MotionGate, MotionGateConfig
from edge.capture.decode import decode_image, list_images
from edge.capture.frame_stats import detect_info_bars, is_night, mean_brightness, trim_info_bars


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("species/mlwic_ca01/images", (5, 5)),       # thin black bars top and bottom, 256 px frames
        ("boxes/wbia_voc/JPEGImages", (0, 0)),       # tourist photos, no bars
        ("frames/autofocus_gallery", (0, 0)),        # cropped gallery frames
    ],
)
def test_info_bars_on_real_folders(data, folder, expected):
    paths = list_images(data / folder)[:12]
    found = [detect_info_bars(decode_image(p, max_side=1280).rgb) for p in paths]
    share = sum(f == expected for f in found) / len(found)
    assert share >= 0.75, found


def test_ena24_reconyx_bars(data):
    rgb = decode_image(data / "frames/ena24_small/2480.jpg", max_side=1280).rgb
    top, bottom = detect_info_bars(rgb)
    assert (top, bottom) == (32, 32)
    trimmed = trim_info_bars(rgb, top, bottom)
    assert trimmed.shape[0] == rgb.shape[0] - 64 and np.shares_memory(trimmed, rgb)
    assert trim_info_bars(rgb, 0, 0) is rgb


def test_night_and_brightness(data):
    night = decode_image(data / "frames/ena24_small/2480.jpg", max_side=1280).rgb   # infrared, grey
    day = decode_image(data / "frames/ena24_small/8831.jpg", max_side=1280).rgb     # green forest
    assert is_night(night) and not is_night(day)
    assert 0 < mean_brightness(night) < mean_brightness(np.full_like(night, 255)) == 1.0
    assert mean_brightness(np.zeros((10, 10, 3), np.uint8)) == 0.0


def _frames(data, *names):
    return [decode_image(data / "frames/ena24_small" / n, max_side=1280).rgb for n in names]


def test_gate_identical_frames_do_not_pass(data):
    gate = MotionGate(MotionGateConfig())
    (frame,) = _frames(data, "8831.jpg")
    assert gate.passes("a", frame) == (True, 1.0)  # first frame of a source always passes
    passed, motion = gate.passes("a", frame.copy())
    assert not passed and motion == 0.0


def test_gate_sees_an_animal_move_and_keeps_sources_apart(data):
    gate = MotionGate(MotionGateConfig())
    first, second = _frames(data, "8831.jpg", "8786.jpg")  # same camera, bear moved
    gate.passes("cam1", first)
    gate.passes("cam2", second)
    passed, motion = gate.passes("cam1", second)
    assert passed and motion > 0.01
    assert gate.passes("cam2", second)[0] is False


def test_running_background_adapts():
    gate = MotionGate(MotionGateConfig(reference="running", alpha=0.5, threshold=0.05))
    dark, bright = np.zeros((120, 160, 3), np.uint8), np.full((120, 160, 3), 200, np.uint8)
    gate.passes("s", dark)
    scores = [gate.passes("s", bright)[1] for _ in range(6)]
    assert scores[0] == 1.0 and scores[-1] == 0.0  # the background caught up with the new scene


def test_disabled_gate_always_passes():
    gate = MotionGate(MotionGateConfig(enabled=False))
    frame = np.zeros((10, 10, 3), np.uint8)
    assert gate.passes("s", frame)[0] and gate.passes("s", frame)[0]

"""The training config: the example file loads, errors name line and key, readers find the data;
detector crops for unboxed images come from the bundle and are cached."""

import json
from pathlib import Path

import pytest

from common.config_loader import ConfigError
from train.config import TrainingConfig, load_training_config, read_boxes, read_reid, read_species
from train.records import Record

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_reads_the_shared_data(data):
    config = load_training_config(ROOT / "deploy" / "train.example.yaml")
    assert config.data_root.resolve() == data.resolve()
    assert config == TrainingConfig.default(config.data_root)  # the example spells out the defaults
    records, problems = read_species(config)
    assert len(records) == 1307 and not problems
    assert {"Empty", "Human", "Vehicle"} <= {r.label for r in records}
    held_out = read_reid(config, config.reid_eval)
    assert {k: len(v) for k, v in held_out.items()} == {"lion val (held-out individuals)": 146,
                                                       "leopards (never trained on)": 44}
    assert all(r.location for r in held_out["leopards (never trained on)"])  # SpotID file names parsed
    boxes = read_boxes(config)
    assert sum(r.bbox is not None for r in boxes) >= 21 + 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("species: [{format: csv}]\n", ["1: species[0].path: Field required"]),
        ("seed: 0\nbogus: 1\n", ["2: bogus: Extra inputs are not permitted"]),
        ("detector_classes: [person, animal]\n", ["1: detector_classes: Value error, the first detector class must be 'animal'"]),
        ("crops: everywhere\n", ["1: crops: Input should be 'boxes' or 'detector'"]),
        # each trainer's overrides, checked against its own settings on load
        ("seed: 1\ndetector: {freeze: neck}\n", ["2: detector: Value error, freeze: Input should be 'backbone' or 'none'"]),
        ("embedder: {dims: 3}\n", ["1: embedder: Value error, unknown setting(s) dims; EmbedderConfig has: dim,"]),
        ("classifier: {epochs: 0}\n", ["1: classifier: Value error, epochs: Input should be greater than or equal to 1"]),
    ],
)
def test_bad_configs_name_line_and_key(tmp_path, text, expected):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_training_config(path)
    message = str(info.value)
    for part in expected:
        assert f"{path}:{part}" in message


def test_trainer_overrides_are_kept_as_their_settings_read_them():
    config = TrainingConfig(detector={"lr": "2e-4", "input_size": [320, 416]}, embedder={"dim": "128"}, classifier={})
    assert config.detector == {"lr": 2e-4, "input_size": (320, 416)} and config.embedder == {"dim": 128}
    assert config.classifier == {}


def test_missing_dataset_is_named(tmp_path):
    config = TrainingConfig.default(tmp_path)
    with pytest.raises(FileNotFoundError, match="species/mlwic_ca01/labels.csv"):
        read_species(config)


def test_detector_crops_box_the_animals_and_are_cached(data, bundle_dir, tmp_path, monkeypatch):
    from train import crops

    frames = data / "frames" / "ena24_small"
    records = [Record(frames / "8831.jpg", ("bear",)), Record(frames / "2480.jpg", ("opossum",)),
               Record(frames / "2573.jpg", ("bird",), bbox=(0.1, 0.1, 0.2, 0.2))]
    cache = tmp_path / "boxes.json"
    boxed = crops.detector_boxes(records, bundle_dir, cache)
    assert boxed[2] == records[2]  # a box from the data is kept
    for record in boxed[:2]:
        x, y, w, h = record.bbox
        assert 0 <= x < x + w <= 1.0001 and 0 <= y < y + h <= 1.0001 and w * h > 0.005
        assert record.extra["box_source"] == "detector" and record.extra["box_confidence"] >= 0.25
    assert boxed[0].bbox != boxed[1].bbox
    assert len(json.loads(cache.read_text())) == 1  # one bundle version

    def no_detector(*_):
        raise AssertionError("cached images must not be detected again")

    monkeypatch.setattr(crops, "best_box", no_detector)
    assert crops.detector_boxes(records, bundle_dir, cache) == boxed

"""A field team's first hour, on photos outside this project's sample data: train on their own folder,
export a bundle calibrated and gated on their own split, run the appliance on new frames, get an alert."""

import csv
import json
import shutil
from collections import defaultdict

import pytest

from edge.runtime.bundle import load_bundle
from export.calibration import MIN_CALIBRATION, ExportDataError, run_images
from trapedge.cli import main

CLASSES = ("Cattle", "Elk", "Squirrel", "Empty")
PER_CLASS = 50


def _own_photos(data, dest):
    """``PER_CLASS`` MLWIC frames of each class copied to ``dest/images`` (times kept), with a labels CSV."""
    with (data / "species/mlwic_ca01/labels.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in CLASSES]
    by_label = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    (dest / "images").mkdir(parents=True)
    kept = []
    for label in CLASSES:
        for row in by_label[label][:PER_CLASS]:
            shutil.copy2(data / "species/mlwic_ca01" / row["file"], dest / row["file"])
            kept.append(row)
    with (dest / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "label"])
        writer.writeheader()
        writer.writerows(kept)
    return kept


def test_train_export_run_alert_on_a_folder_outside_the_sample_data(tmp_path, data, capsys):
    photos = tmp_path / "my_photos"
    _own_photos(data, photos)
    config = tmp_path / "train.yaml"
    config.write_text(f"data_root: {photos}\nout: {tmp_path / 'run'}\n"
                      "species:\n  - format: csv\n    path: labels.csv\n")
    assert main(["train", "--config", str(config), "--quick"]) == 0
    run = tmp_path / "run"
    assert (run / "classifier.pt").is_file() and not (run / "embedder.pt").exists()

    # the export never looks at the sample data: --data points nowhere
    bundle = tmp_path / "bundles" / "mine"
    assert main(["export", "--trained", str(run), "--out", str(bundle), "--data", str(tmp_path / "nowhere")]) == 0
    manifest = load_bundle(bundle).manifest
    assert sorted(manifest.models["classifier"].labels) == sorted(CLASSES)
    assert manifest.gates and all(g["passed"] for g in manifest.gates.values())
    calibration = manifest.calibration
    assert calibration["detector_calibration"]["count"] >= MIN_CALIBRATION
    split = {row["path"]: row["split"] for row in csv.DictReader((run / "splits/species.csv").open())}
    assert all(key.startswith("images/") for key in split)  # relative to the dataset: it may move

    # new frames of a watch-listed species arrive at the camera: held-out Cattle frames
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    labels = {r["file"]: r["label"] for r in csv.DictReader((photos / "labels.csv").open())}
    held_out = [key for key, name in split.items() if name == "test" and labels[key] == "Cattle"]
    assert held_out
    for key in held_out[:3]:
        shutil.copy2(photos / key, incoming)
    edge = tmp_path / "edge.yaml"
    edge.write_text(json.dumps({
        "device_id": "cam-walkthrough", "bundle": {"path": str(bundle)}, "store": {"path": str(tmp_path / "state.db")},
        "sources": [{"type": "folder", "id": "sd", "path": str(incoming), "settle_seconds": 0, "poll_seconds": 0.1}],
        "rules": {"watch": [{"label": "Cattle", "threshold": 0.3}]}, "idle_sleep_s": 0.1}))
    assert main(["run", "--config", str(edge), "--validate-config"]) == 0
    capsys.readouterr()
    assert main(["run", "--config", str(edge), "--once"]) == 0
    summary = capsys.readouterr().out
    alerts = int(summary.split(" alerts")[0].rsplit(" ", 1)[-1])
    assert alerts >= 1, summary


def test_export_refuses_a_run_too_small_to_calibrate_in_one_line(tmp_path, data, capsys):
    photos = tmp_path / "few"
    (photos / "images").mkdir(parents=True)
    run = tmp_path / "run"
    (run / "splits").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data_root": str(photos), "out": str(run),
                                                  "species": [{"format": "csv", "path": "labels.csv"}]}))
    rows = [(f"images/{i}.jpg", "train" if i < 10 else "val", f"g{i}", "Cattle") for i in range(14)]
    with (run / "splits/species.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "split", "group", "label"), *rows])
    (run / "splits/species.json").write_text(json.dumps({"by": "event", "seed": 0, "fractions": {}, "counts": {}}))
    with pytest.raises(ExportDataError, match=f"train split has 10 images; INT8 calibration needs at least "
                                              f"{MIN_CALIBRATION}"):
        run_images(run)
    (run / "classifier.pt").write_bytes(b"")
    assert main(["export", "--trained", str(run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("export refused: ") and "train again" in err[-1]
    assert not (tmp_path / "b").exists()


def test_two_datasets_with_the_same_file_names_get_separate_split_keys(tmp_path):
    from train.cli import species_root
    from train.config import TrainingConfig
    from train.records import Record
    from train.splits import load_or_make_split

    for site in ("island_a", "island_b"):
        (tmp_path / site / "images").mkdir(parents=True)
        (tmp_path / site / "labels.csv").write_text("file,label\n")
    config = TrainingConfig.model_validate({"data_root": str(tmp_path), "species": [
        {"format": "csv", "path": "island_a/labels.csv"}, {"format": "csv", "path": "island_b/labels.csv"}]})
    root = species_root(config)
    assert root == tmp_path
    records = [Record(path=tmp_path / site / "images" / f"{i:04d}.jpg", labels=("Rat",), event=f"{site}{i}")
               for site in ("island_a", "island_b") for i in range(20)]
    load_or_make_split(records, tmp_path / "split.csv", by="event", root=root)
    keys = [line.split(",")[0] for line in (tmp_path / "split.csv").read_text().splitlines()[1:]]
    assert len(set(keys)) == 40 and {k.split("/")[0] for k in keys} == {"island_a", "island_b"}

"""A tired field technician's mistakes, one table: each bad config or input ends in one line that says
what to do and a non-zero exit, never a traceback (an exception escaping ``main`` fails the test)."""

import contextlib
import socket
import sqlite3

import pytest
import yaml
from PIL import Image

from central.auth import hash_password
from central.store import MIGRATIONS as CENTRAL_MIGRATIONS
from common.sqlite import apply_migrations
from edge.storage.store import MIGRATIONS as EDGE_MIGRATIONS
from trapedge.cli import main


def _images(folder, count, size=(64, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (i * 7 % 255, 90, 40)).save(folder / f"{i:04d}.jpg")


def _species_csv(root, count, labels=("Bobcat", "Elk")):
    _images(root / "images", count)
    rows = [f"images/{i:04d}.jpg,{labels[i % len(labels)]},cam{i % 2},{i}" for i in range(count)]
    (root / "labels.csv").write_text("file,label,station,burst\n" + "\n".join(rows) + "\n")


def _train_yaml(tmp_path, **fields):
    config = {"data_root": str(tmp_path / "photos"), "out": str(tmp_path / "run"), **fields}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_too_few_images(tmp_path):
    _species_csv(tmp_path / "photos", 20)
    return ["train", "--config", str(_train_yaml(tmp_path, species=[
        {"format": "csv", "path": "labels.csv", "event_column": "burst"}]))], "species: 20 images split"


def train_missing_dataset(tmp_path):
    return ["train", "--config", str(_train_yaml(tmp_path, species=[{"format": "csv", "path": "nowhere.csv"}]))], \
        "not found"


def train_two_stations(tmp_path):
    _species_csv(tmp_path / "photos", 200)
    return ["train", "--config", str(_train_yaml(tmp_path, split_by="location", species=[
        {"format": "csv", "path": "labels.csv", "location_column": "station", "event_column": "burst"}]))], \
        "split_by: location needs at least 3 stations"


def train_one_individual(tmp_path):
    _images(tmp_path / "photos" / "lions" / "Amber", 5)
    return ["train", "--config", str(_train_yaml(tmp_path, reid_train=[{"path": "lions"}]))], \
        "reid_train: the training individuals: 1 individual(s)"


def train_no_crop_bundle(tmp_path):
    _species_csv(tmp_path / "photos", 200)
    return ["train", "--config", str(_train_yaml(tmp_path, crop_bundle=str(tmp_path / "no-bundle"), species=[
        {"format": "csv", "path": "labels.csv", "event_column": "burst"}]))], "crop_bundle: "


def train_broken_crop_bundle(tmp_path):
    _species_csv(tmp_path / "photos", 200)
    (tmp_path / "half-copied").mkdir()
    (tmp_path / "half-copied" / "manifest.json").write_text("{}")
    return ["train", "--config", str(_train_yaml(tmp_path, crop_bundle=str(tmp_path / "half-copied"), species=[
        {"format": "csv", "path": "labels.csv", "event_column": "burst"}]))], "is not a valid manifest"


def train_box_label_without_class(tmp_path):
    root = tmp_path / "photos" / "yard"
    _images(root / "images" / "cam1", 2)
    (root / "labels" / "cam1").mkdir(parents=True)
    for i in range(2):
        (root / "labels" / "cam1" / f"{i:04d}.txt").write_text("1 0.5 0.5 0.2 0.3\n")
    (root / "classes.txt").write_text("fox\ntruck\n")
    return ["train", "--config", str(_train_yaml(tmp_path, detector_classes=["animal", "person"], boxes=[
        {"format": "yolo", "path": "yard", "name": "yard"}])), "--steps", "detector"], \
        "boxes: yard: labels ['truck'] need a detector class missing from detector_classes"


def train_bad_key(tmp_path):
    path = _train_yaml(tmp_path, split_by="camera")
    return ["train", "--config", str(path), "--validate-config"], "split_by"


def train_bad_trainer_setting(tmp_path):
    path = _train_yaml(tmp_path, detector={"freeze": "neck"})  # refused on load, before minutes of training
    return ["train", "--config", str(path), "--steps", "detector"], "detector: Value error, freeze: Input should be 'backbone' or 'none'"


def _edge_yaml(tmp_path, bundle, **overrides):
    (tmp_path / "in").mkdir(exist_ok=True)
    config = {"device_id": "cam", "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path / "in")}],
              "bundle": {"path": str(bundle)}, "store": {"path": str(tmp_path / "state.db")}, **overrides}
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_missing_bundle(tmp_path):
    return ["run", "--config", str(_edge_yaml(tmp_path, tmp_path / "no-bundle")), "--once"], "bundle"


def run_watch_label_absent(tmp_path, bundle_dir):
    path = _edge_yaml(tmp_path, bundle_dir, rules={"watch": [{"label": "kiwi"}]})
    return ["run", "--config", str(path), "--validate-config"], "'kiwi' is not a label of bundle"


def run_unreadable_password_file(tmp_path, bundle_dir):
    mqtt = {"host": "127.0.0.1", "port": 1883, "username": "cam", "password_file": str(tmp_path / "mqtt.pass")}
    path = _edge_yaml(tmp_path, bundle_dir, mqtt=mqtt)
    return ["run", "--config", str(path), "--validate-config"], f"mqtt.password_file: cannot read {tmp_path}/mqtt.pass"


def run_unreadable_password_file_at_start(tmp_path, bundle_dir):
    argv, _ = run_unreadable_password_file(tmp_path, bundle_dir)
    return argv[:-1] + ["--once"], f"mqtt: mqtt.password_file {tmp_path}/mqtt.pass: No such file or directory"


def _central_yaml(tmp_path, port=0, hash_text=None):
    login = {"username": "researcher", "password_hash_file": str(tmp_path / "review.hash")}
    if hash_text is not None:
        (tmp_path / "review.hash").write_text(hash_text)
    path = tmp_path / "central.yaml"
    path.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "central.db")},
                                    "review": {"host": "127.0.0.1", "port": port, "login": login}}))
    return path


def run_store_is_a_folder(tmp_path, bundle_dir):
    (tmp_path / "state").mkdir()  # said only once the service ran: "unable to open database file"
    path = _edge_yaml(tmp_path, bundle_dir, store={"path": str(tmp_path / "state")})
    return ["run", "--config", str(path), "--validate-config"], \
        f"store.path: {tmp_path}/state is a folder: name the database file in it (e.g. {tmp_path}/state/trapedge.db)"


def run_store_is_another_file(tmp_path, bundle_dir):
    (tmp_path / "notes.txt").write_text("field notes")
    path = _edge_yaml(tmp_path, bundle_dir, store={"path": str(tmp_path / "notes.txt")})
    return ["run", "--config", str(path), "--validate-config"], \
        f"store.path: {tmp_path}/notes.txt is not a SQLite database: move it aside"


def _store_of(path, migrations, version=None):
    with contextlib.closing(sqlite3.connect(path)) as conn:
        apply_migrations(conn, migrations)
        if version is not None:
            conn.execute(f"PRAGMA user_version={version}")
    return path


def run_store_is_central_store(tmp_path, bundle_dir):
    # the same schema version as an edge store: it migrated nothing and failed at the first frame
    store = _store_of(tmp_path / "central.db", CENTRAL_MIGRATIONS)
    path = _edge_yaml(tmp_path, bundle_dir, store={"path": str(store)})
    return ["run", "--config", str(path), "--validate-config"], \
        f"store.path: {store}: not an edge store (it has no frames table"


def inventory_level_zero(tmp_path):
    return ["inventory", str(tmp_path), "--class-level", "0"], \
        "inventory: --class-level: Input should be greater than or equal to 1"


def central_missing_hash(tmp_path):
    return ["central", "--config", str(_central_yaml(tmp_path)), "--validate-config"], \
        f"review.login: cannot read {tmp_path}/review.hash"


def central_not_a_hash(tmp_path):
    path = _central_yaml(tmp_path, hash_text="hunter2\n")
    return ["central", "--config", str(path), "--validate-config"], "not a pbkdf2_sha256 hash"


def central_store_is_a_folder(tmp_path):
    path = _central_yaml(tmp_path, hash_text=hash_password("correct horse") + "\n")
    (tmp_path / "central.db").mkdir()
    return ["central", "--config", str(path), "--validate-config"], f"store.path: {tmp_path}/central.db is a folder"


def central_store_is_edge_store(tmp_path):
    # `config OK`, then a traceback at start-up: no such table: sightings
    path = _central_yaml(tmp_path, hash_text=hash_password("correct horse") + "\n")
    _store_of(tmp_path / "central.db", EDGE_MIGRATIONS)
    return ["central", "--config", str(path), "--validate-config"], \
        f"store.path: {tmp_path}/central.db: not a central store (it has no messages table"


def central_store_is_newer(tmp_path):
    path = _central_yaml(tmp_path, hash_text=hash_password("correct horse") + "\n")
    _store_of(tmp_path / "central.db", CENTRAL_MIGRATIONS, version=99)
    return ["central", "--config", str(path), "--validate-config"], \
        f"central store schema 99 is newer than this trapedge ({len(CENTRAL_MIGRATIONS)}): install the trapedge"


def central_export_of_edge_store(tmp_path):
    path = _central_yaml(tmp_path)
    _store_of(tmp_path / "central.db", EDGE_MIGRATIONS)
    return ["central", "export", "--config", str(path), "--out", str(tmp_path / "out")], "not a central store"


def central_suppressions_of_edge_store(tmp_path):
    path = _central_yaml(tmp_path)
    _store_of(tmp_path / "central.db", EDGE_MIGRATIONS)
    return ["central", "suppressions", "--config", str(path)], "not a central store"


def export_not_a_run(tmp_path):
    return ["export", "--trained", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")], \
        "is it a `trapedge train` output folder?".replace("is it", "is " + str(tmp_path / "nothing"))


def detect_no_folder(tmp_path, bundle_dir):
    return ["detect", str(tmp_path / "card"), "--bundle", str(bundle_dir), "--output", str(tmp_path / "md.json")], \
        "is not a folder"


def inventory_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["inventory", str(tmp_path / "empty")], "inventory: nothing readable"


CASES = [train_too_few_images, train_missing_dataset, train_two_stations, train_one_individual, train_no_crop_bundle,
         train_broken_crop_bundle, train_box_label_without_class, train_bad_key, train_bad_trainer_setting,
         run_missing_bundle, run_watch_label_absent, run_unreadable_password_file,
         run_unreadable_password_file_at_start, run_store_is_a_folder, run_store_is_another_file, run_store_is_central_store,
         central_missing_hash, central_not_a_hash, central_store_is_a_folder, central_store_is_edge_store,
         central_store_is_newer, central_export_of_edge_store, central_suppressions_of_edge_store, export_not_a_run,
         detect_no_folder, inventory_nothing, inventory_level_zero]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_each_mistake_is_one_line_that_says_what_to_do(case, tmp_path, bundle_dir, capsys, caplog):
    args = [bundle_dir] if "bundle_dir" in case.__code__.co_varnames[:case.__code__.co_argcount] else []
    argv, expected = case(tmp_path, *args)
    code = main(argv)
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line and not line.startswith(("WARNING: signing", "warning:"))]
    said += [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert code in (1, 2), err
    assert said and "Traceback" not in err, err
    assert any(expected in line for line in said), said
    assert all(len(line) < 600 for line in said), said


def test_the_review_port_in_use_is_one_line_at_check_and_at_start(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _central_yaml(tmp_path, port=port, hash_text=hash_password("correct horse") + "\n")
        assert main(["central", "--config", str(path), "--validate-config"]) == 2
        (line, summary) = capsys.readouterr().err.splitlines()
        assert line == (f"review.port: 127.0.0.1:{port} is already in use by another program: stop it, or set "
                        "review.port to a free port")
        assert main(["central", "--config", str(path)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"trapedge central: {line}"

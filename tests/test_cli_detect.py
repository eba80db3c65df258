"""`trapedge detect` / `trapedge embed` on real frames plus the broken files real uploads contain."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trapedge.cli import main


@pytest.fixture
def mixed_folder(data, tmp_path):
    """Real frames plus broken copies: truncated, zero-byte, not-an-image, CMYK, grayscale, rotated."""
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    fox = data / "frames" / "autofocus_gallery" / "coyote1.jpg"
    shutil.copy(fox, folder / "coyote.jpg")
    shutil.copy(data / "frames" / "ena24_small" / "8831.jpg", folder / "sub" / "bear.jpg")
    raw = fox.read_bytes()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    image = Image.open(fox)
    image.convert("CMYK").save(folder / "cmyk.jpg")
    image.convert("L").save(folder / "gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    image.rotate(90, expand=True).save(folder / "rotated.jpg", exif=exif)
    return folder


def test_detect_writes_megadetector_json_with_failures(mixed_folder, bundle_dir, tmp_path):
    out = tmp_path / "results.json"
    assert main(["detect", str(mixed_folder), "--bundle", str(bundle_dir), "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["info"]["format_version"] == "1.6"
    assert doc["detection_categories"] == {"1": "animal"}
    images = {e["file"]: e for e in doc["images"]}
    assert set(images) == {"coyote.jpg", "sub/bear.jpg", "truncated.jpg", "zero.jpg", "notes.jpg",
                           "cmyk.jpg", "gray.png", "rotated.jpg"}
    assert "0 bytes" in images["zero.jpg"]["failure"] and images["zero.jpg"]["detections"] is None
    assert "not a readable image" in images["notes.jpg"]["failure"]
    for name in ("coyote.jpg", "sub/bear.jpg", "cmyk.jpg", "gray.png", "rotated.jpg"):
        assert images[name].get("failure") is None, name
        assert len(images[name]["detections"]) >= 1, name
    coyote, rotated = images["coyote.jpg"]["detections"][0], images["rotated.jpg"]["detections"][0]
    assert coyote["bbox"] == pytest.approx(rotated["bbox"], abs=0.03)  # EXIF orientation applied
    x, y, w, h = coyote["bbox"]
    assert 0 <= x and 0 <= y and x + w <= 1.0001 and y + h <= 1.0001
    top = coyote["classifications"][0]
    assert doc["classification_categories"][top[0]] == "wolf_coyote"


def test_detect_names_each_failure_in_a_line_of_its_own_and_finds_the_animal_in_a_16_bit_frame(
        mixed_folder, bundle_dir, tmp_path, capsys):
    """Only a count of failures was printed; a 16-bit frame came out white and had no box. A file name with a
    line break must not forge a line of its own."""
    import numpy as np

    grey = np.asarray(Image.open(mixed_folder / "coyote.jpg").convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(mixed_folder / "grey16.png")
    (mixed_folder / "x.jpg\n2026-01-01 ERROR forged.jpg").write_text("not an image")
    out = tmp_path / "results.json"
    assert main(["detect", str(mixed_folder), "--bundle", str(bundle_dir), "--output", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    unreadable = "image unreadable: not a readable image (UnidentifiedImageError)"
    assert said[0].endswith(f"3 failed -> {out}") and sorted(said[1:]) == [
        "  failed: notes.jpg: " + unreadable, "  failed: x.jpg\\n2026-01-01 ERROR forged.jpg: " + unreadable,
        "  failed: zero.jpg: image unreadable: empty file (0 bytes)"]
    images = {e["file"]: e for e in json.loads(out.read_text())["images"]}
    assert images["grey16.png"]["detections"][0]["bbox"] == pytest.approx(
        images["coyote.jpg"]["detections"][0]["bbox"], abs=0.03)


def test_a_file_name_that_is_not_utf8_is_named_not_a_traceback(mixed_folder, bundle_dir, tmp_path):
    """Its bytes reach Python as lone surrogates, which a UTF-8 stdout refuses: the new failure line crashed
    detect (a Pi's en_GB.UTF-8 locale) until it escaped them."""
    import os

    (mixed_folder / os.fsdecode(b"b\xff.jpg")).write_text("not an image")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "TRAPEDGE_PROGRESS": "0"}
    code = (f"import sys; from trapedge.cli import main; sys.exit(main(['detect', {str(mixed_folder)!r}, '--bundle', "
            f"{str(bundle_dir)!r}, '--output', {str(tmp_path / 'r.json')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    assert "  failed: b\\udcff.jpg: image unreadable: not a readable image (UnidentifiedImageError)" in done.stdout


def test_detect_exits_nonzero_when_nothing_ran(tmp_path, bundle_dir):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    assert main(["detect", str(folder), "--bundle", str(bundle_dir), "--output", str(tmp_path / "o.json")]) == 1
    assert main(["detect", str(folder), "--bundle", str(tmp_path / "nope"), "--output", str(tmp_path / "o.json")]) == 2


def test_embed_best_and_whole(mixed_folder, bundle_dir, tmp_path, capsys):
    for crop in ("best", "whole"):
        out = tmp_path / f"{crop}.jsonl"
        assert main(["embed", str(mixed_folder), "--bundle", str(bundle_dir), "--output", str(out), "--crop", crop]) == 0
        lines = {json.loads(l)["file"]: json.loads(l) for l in out.read_text().splitlines()}
        assert len(lines) == 8
        said = capsys.readouterr().out.splitlines()  # each failure named with its reason, as in the file
        assert said[1:] == [f"  failed: {name}: {line['failure']}" for name, line in lines.items() if "failure" in line]
        vec = lines["coyote.jpg"]["embedding"]
        assert len(vec) == 1280 and sum(v * v for v in vec) == pytest.approx(1.0, abs=1e-3)
        assert "failure" in lines["zero.jpg"]
        assert ("bbox_xyxy" in lines["coyote.jpg"]) == (crop == "best")


def test_edge_commands_never_import_torch(mixed_folder, bundle_dir, tmp_path):
    code = (
        "import sys; from trapedge.cli import main; "
        f"rc = main(['detect', {str(mixed_folder)!r}, '--bundle', {str(bundle_dir)!r}, '--output', {str(tmp_path / 'r.json')!r}]); "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_thread_count_reaches_onnxruntime(bundle_dir):
    import argparse

    from edge.app.factory import build_analyzer
    from edge.cli.options import add_model_arguments, command_config

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    config = command_config(parser.parse_args(["--bundle", str(bundle_dir), "--threads", "1"]), bundle_dir)
    detector = build_analyzer(config).detector
    assert detector.backend.session.get_session_options().intra_op_num_threads == 1
    assert detector.precision == "int8"


AGREEMENT_FRAMES = ["frames/ena24_small/8831.jpg", "frames/autofocus_gallery/coyote1.jpg",
                    "frames/animl_samples/sample-img-fox.jpg", "frames/ena24_small/4383.jpg",
                    "species/mlwic_ca01/images/CA-01_0006503.jpg", "species/mlwic_ca01/images/CA-01_0006505.jpg",
                    "species/mlwic_ca01/images/CA-01_0006501.jpg", "boxes/wbia_voc/JPEGImages/2014_000001.jpg"]


def _md_label(doc: dict, entry: dict) -> str:
    """The label a MegaDetector consumer reads: the first classification, else the detector category."""
    if entry.get("classifications"):
        return doc["classification_categories"][entry["classifications"][0][0]]
    return doc["detection_categories"][entry["category"]]


def test_detect_and_the_service_agree_on_boxes_and_labels(data, bundle_dir, tmp_path):
    """One device config, two commands: `trapedge run --once` over a drop folder and `trapedge detect
    --config` over the same frames give the same boxes and the same labels (info bars cut in both)."""
    import sqlite3

    import yaml

    folder = tmp_path / "incoming"
    folder.mkdir()
    names = []
    for i, rel in enumerate(AGREEMENT_FRAMES):
        source = data / rel
        if source.is_file():
            names.append(f"{i}_{source.name}")
            shutil.copy(source, folder / names[-1])
    assert len(names) == len(AGREEMENT_FRAMES)
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "cam-agree", "bundle": {"path": str(bundle_dir)},
        "sources": [{"type": "folder", "id": "sd", "path": str(folder), "settle_seconds": 0}],
        "preprocess": {"detect_info_bars": True}, "gate": {"enabled": False},
        "store": {"path": str(tmp_path / "trapedge.db")}, "log_level": "WARNING"}))
    assert main(["run", "--config", str(config), "--once"]) == 0
    out = tmp_path / "md.json"
    assert main(["detect", str(folder), "--config", str(config), "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    conn = sqlite3.connect(tmp_path / "trapedge.db")
    service = {}
    for path, width, height, x1, y1, x2, y2, label in conn.execute(
            "SELECT f.path, f.width, f.height, d.x1, d.y1, d.x2, d.y2, d.label FROM frames f "
            "LEFT JOIN detections d ON d.frame_id = f.id ORDER BY f.path, d.idx"):
        boxes = service.setdefault(Path(path).name, [])
        if label is not None:
            boxes.append(([x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height], label))
    detected = {e["file"]: [(e2["bbox"], _md_label(doc, e2)) for e2 in e["detections"]] for e in doc["images"]}
    assert sorted(service) == sorted(detected) == sorted(names)
    assert sum(len(v) for v in service.values()) >= 6, "the frames must give boxes to compare"
    for name in names:
        assert [label for _, label in detected[name]] == [label for _, label in service[name]], name
        for (md_box, _), (db_box, _) in zip(detected[name], service[name]):
            assert md_box == pytest.approx(db_box, abs=1e-3), name


def test_bench_without_a_bundle_is_one_line(data, tmp_path, capsys):
    assert main(["bench", str(data / "frames" / "animl_samples"), "--bundle", str(tmp_path / "nope"),
                 "--frames", "1", "--no-torch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trapedge bench: ") and "not a model bundle" in err and len(err.splitlines()) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("trapedge ")


@pytest.mark.parametrize("tool", ["enrol", "export", "evaluate", "bench"])
def test_centrals_tools_are_trapedge_central_subcommands(tool, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["central", tool, "--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith(f"usage: trapedge central {tool}")

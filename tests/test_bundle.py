import json

import pytest

from edge.runtime.bundle import BundleError, load_bundle


def test_default_bundle_verifies_and_describes_itself(bundle_dir):
    manifest = load_bundle(bundle_dir).manifest
    assert set(manifest.models) == {"detector", "classifier", "embedder"}
    for spec in manifest.models.values():
        assert set(spec.files) == {"fp32", "int8"}
        assert all(len(f.sha256) == 64 for f in spec.files.values())
    detector = manifest.models["detector"]
    assert detector.input.resize == "letterbox" and detector.input.size == (480, 640)
    assert detector.parity["int8_recall_of_fp32"] >= 0.95 and detector.parity["fp32_recall_of_native"] >= 0.95
    # the pretrained classifier and embedder share their backbone: one graph, two outputs
    classifier, embedder = manifest.models["classifier"], manifest.models["embedder"]
    assert classifier.files == embedder.files and classifier.outputs == ["probs", "embedding"]
    assert (classifier.result, embedder.result) == ("probs", "embedding")
    assert manifest.models["classifier"].labels[-1] == "other"
    assert all(g["passed"] for g in manifest.gates.values())
    assert manifest.calibration["detector_calibration"]["count"] > 0


def test_tampered_model_file_is_refused_by_name(bundle_copy):
    target = bundle_copy / "crops.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="crops.int8.onnx"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "detector.fp32.onnx").unlink()
    with pytest.raises(BundleError, match="missing: detector.fp32.onnx"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema_version=99), "schema_version"),
        (lambda m: m["models"]["detector"].update(surprise=1), "not a valid manifest"),
        (lambda m: m["models"]["embedder"]["files"]["int8"].update(sha256="0" * 64), "crops.int8.onnx"),
    ],
)
def test_bad_manifest_is_refused(bundle_copy, edit, message):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)

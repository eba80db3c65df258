import json
from contextlib import nullcontext as does_not_raise

import pytest
from pydantic import ValidationError

from edge.runtime.bundle import BundleError, BundleTrust, load_bundle
from edge.runtime.manifest import FileEntry


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


# --- signatures and paths ---------------------------------------------------------------------
def test_a_signature_made_at_export_is_checked_as_the_edge_checks_it():
    """The companion signs with cryptography (PEM keys); the edge checks with PyNaCl: both are Ed25519, and
    only the manifest signed, by the key named, passes."""
    import base64

    from common import signing

    private = signing.generate_private_key()
    public = signing.public_key_of(private)
    trusted = {signing.key_id(public): public}
    document = {"schema_version": 1, "models": {"detector": {"labels": ["animal", "person", "vehicle"]}}}
    text = signing.sign(document, private)
    assert signing.verify(document, text, trusted) == signing.key_id(public)
    with pytest.raises(signing.SignatureError, match="altered after signing"):
        signing.verify({**document, "schema_version": 2}, text, trusted)
    other = signing.public_key_of(signing.generate_private_key())  # the right key id, another key
    with pytest.raises(signing.SignatureError, match="altered after signing"):
        signing.verify(document, text, {signing.key_id(public): other})
    fields = json.loads(text)
    short = json.dumps({**fields, "signature": base64.b64encode(base64.b64decode(fields["signature"])[:63]).decode()})
    with pytest.raises(signing.SignatureError, match="malformed .a 63-byte signature"):
        signing.verify(document, short, trusted)


def test_without_pynacl_the_edge_says_what_to_install(monkeypatch, bundle_dir):
    import sys

    from edge.runtime.config import BundleConfig

    monkeypatch.setitem(sys.modules, "nacl.signing", None)  # import nacl.signing raises ImportError
    with pytest.raises(BundleError, match=r"needs PyNaCl: pip install 'pynacl>=1.5'"):
        load_bundle(bundle_dir, BundleConfig().trust)


def test_the_default_bundle_is_signed_with_a_key_the_default_config_trusts(bundle_dir):
    from edge.runtime.config import BundleConfig

    bundle = load_bundle(bundle_dir, BundleConfig().trust)
    assert bundle.signer is not None and "development key" in (bundle.warning or "")
    with pytest.raises(BundleError, match="not in bundle.trusted_keys"):
        load_bundle(bundle_dir, BundleConfig(trusted_keys=[]).trust)


def test_keygen_writes_a_key_only_its_owner_reads_and_never_overwrites_one(tmp_path, capsys):
    from common.signing import decode_public
    from export.signing import main

    key = tmp_path / "keys" / "release.key"
    assert main(["keygen", str(key)]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "keys" / "release.pub").read_text().strip() == printed and len(decode_public(printed)) == 32
    before = key.read_bytes()
    assert main(["keygen", str(key)]) == 2 and "never overwritten" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_sign_command_signs_only_a_bundle_whose_files_match(bundle_copy, tmp_path, capsys):
    from export.signing import main, write_key_pair

    key = tmp_path / "release.key"
    public = write_key_pair(key)
    assert main(["sign", str(bundle_copy), "--key", str(key)]) == 0
    assert load_bundle(bundle_copy, BundleTrust((public,))).signer is not None  # inline base64 key
    data = bytearray((bundle_copy / "detector.int8.onnx").read_bytes())
    data[100] ^= 0xFF
    (bundle_copy / "detector.int8.onnx").write_bytes(bytes(data))
    assert main(["sign", str(bundle_copy), "--key", str(key)]) == 2
    assert "detector.int8.onnx does not match" in capsys.readouterr().err
    key.chmod(0o644)
    assert main(["sign", str(bundle_copy), "--key", str(key)]) == 2
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize(("entry", "message"), [
    ("not-a-key", "neither a base64 Ed25519 public key nor a key file"),
    ("{tmp}/absent.pub", "neither a base64 Ed25519 public key nor a key file"),
    ("{tmp}/garbage.pub", "does not hold a base64 Ed25519 public key"),
    ("AAAA", "neither a base64 Ed25519 public key nor a key file"),  # base64, but not 32 bytes
])
def test_a_trusted_key_that_is_not_one_is_refused_by_name(bundle_dir, tmp_path, entry, message):
    (tmp_path / "garbage.pub").write_text("hello\n")
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir, BundleTrust((entry.format(tmp=tmp_path),)))


@pytest.mark.parametrize(("path", "expectation"), [
    ("detector.int8.onnx", does_not_raise()),
    ("models/detector.int8.onnx", does_not_raise()),
    ("../detector.int8.onnx", pytest.raises(ValidationError, match="plain relative path")),
    ("/etc/passwd", pytest.raises(ValidationError, match="plain relative path")),
    ("models/../../x.onnx", pytest.raises(ValidationError, match="plain relative path")),
    ("./detector.int8.onnx", pytest.raises(ValidationError, match="plain relative path")),
    ("models//x.onnx", pytest.raises(ValidationError, match="plain relative path")),
    ("models\\..\\x.onnx", pytest.raises(ValidationError, match="plain relative path")),
    ("", pytest.raises(ValidationError, match="plain relative path")),
])
def test_file_paths_are_plain_relative_paths(path, expectation):
    with expectation:
        FileEntry(path=path, sha256="0" * 64, bytes=1)


def test_int8_is_exact_on_every_x86(bundle_dir, data):
    # U8S8 on x86 without VNNI sums pairs of products into 16 bits that saturate: full-range weights
    # exported on an AMD EPYC kept 0.89 of fp32's boxes and 0.972 embedding cosine. The detector's weights
    # use 7 bits (cannot saturate, full speed); the crop graph's all 8, multiplied exactly where needed
    import numpy as np

    from edge.capture.decode import decode_image
    from edge.runtime.backends.onnxruntime import has_vnni
    from edge.runtime.models import Detector, Embedder

    bundle = load_bundle(bundle_dir)
    detector, embedder = Detector(bundle, "int8"), Embedder(bundle, "int8")
    assert bundle.manifest.models["detector"].quantization["weight_bits"] == 7
    assert bundle.manifest.models["embedder"].quantization["weight_bits"] == 8
    def exact(model) -> bool:
        try:
            return model.backend.session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
        except Exception:  # ORT raises when the key was never set
            return False

    # the U8U8 path only where U8S8 would saturate: x86 with VNNI sums into 32 bits already, and there the
    # path took the crop graph 1.8x the time
    assert (exact(detector), exact(embedder)) == (False, not has_vnni())
    crops = [embedder.whole(decode_image(p).rgb) for p in sorted((data / "reid/lion/val").rglob("*.png"))[:48]]
    int8, fp32 = embedder.run_crops(crops), Embedder(bundle, "fp32").run_crops(crops)
    cosine = (int8 * fp32).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(fp32, axis=1)
    # 0.993 (least 0.986); the same graph multiplied with saturating U8S8 on an AMD EPYC: 0.921 (least 0.688)
    assert cosine.mean() >= 0.98 and cosine.min() >= 0.95, cosine


@pytest.mark.parametrize("flags, vnni", [("fpu avx2 avx512f avx512_vnni", True), ("fpu avx2 avx_vnni", False),
                                         ("fpu sse4_2 avx2 fma", False), ("arm", False), (None, False)])
def test_the_exact_int8_path_is_taken_only_without_vnni(tmp_path, flags, vnni):
    """AVX2 alone saturates U8S8 pair sums, so the U8U8 path; AVX-512 VNNI sums into 32 bits and the path would
    only cost time; AVX-VNNI alone (never measured), an ARM cpuinfo (no 'flags' line) or none at all keeps it."""
    from edge.runtime.backends.onnxruntime import has_vnni

    cpuinfo = tmp_path / "cpuinfo"  # flags None: no file at all
    if flags == "arm":
        cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    elif flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert has_vnni.__wrapped__(str(cpuinfo)) is vnni

"""Bundle updates: stage, verify, smoke-check, atomic switch, rollback, and the service's own rollback."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from common.hashing import sha256_file
from edge.app.bundle_install import BundleRoot, InstallError, frames_from, install, list_versions, switch
from edge.runtime.bundle import load_bundle
from export.signing import development_key, load_private_key, sign_bundle

VERSION_A, VERSION_B = "2026.01.01-000000", "2026.02.01-000000"


def _resign(bundle: Path) -> None:
    """Sign an edited manifest again with the development key, which the default config trusts."""
    sign_bundle(bundle, load_private_key(development_key()))


def _versioned(bundle_dir: Path, dest: Path, version: str) -> Path:
    """A copy of the bundle whose manifest says ``version``, signed again."""
    shutil.copytree(bundle_dir, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _resign(dest)
    return dest


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def sources(bundle_dir, tmp_path_factory) -> dict[str, Path]:
    """Two good bundles, versions A and B; install only reads them."""
    base = tmp_path_factory.mktemp("sources")
    return {"A": _versioned(bundle_dir, base / "a", VERSION_A), "B": _versioned(bundle_dir, base / "b", VERSION_B)}


@pytest.fixture
def frames(data) -> list[Path]:
    return sorted((data / "frames" / "autofocus_gallery").glob("*.jp*g"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trapedge.cli", "bundle", *args], capture_output=True, text=True)


def _targets(root: BundleRoot) -> tuple[str | None, str | None]:
    return tuple(os.readlink(link) if link.is_symlink() else None for link in (root.current, root.previous))


def test_cli_install_dir_then_tar_then_rollback(tmp_path, data, sources):
    root = BundleRoot(tmp_path / "bundles")
    archive = tmp_path / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sources["B"], arcname="default")
    frames_dir = str(data / "frames" / "autofocus_gallery")

    first = _cli("--root", str(root.path), "install", str(sources["A"]), "--frames", frames_dir)
    print(first.stdout)
    assert first.returncode == 0, first.stderr
    assert f"current (none) -> default-{VERSION_A}" in first.stdout and "smoke: 3 frame(s)" in first.stdout
    assert _targets(root) == (f"versions/default-{VERSION_A}", None)

    second = _cli("--root", str(root.path), "install", str(archive), "--frames", frames_dir)
    print(second.stdout)
    assert second.returncode == 0, second.stderr
    assert f"current default-{VERSION_A} -> default-{VERSION_B}" in second.stdout
    assert _targets(root) == (f"versions/default-{VERSION_B}", f"versions/default-{VERSION_A}")
    assert load_bundle(root.current).manifest.version == VERSION_B
    assert sorted(p.name for p in root.versions.iterdir()) == [f"default-{VERSION_A}", f"default-{VERSION_B}"]

    back = _cli("--root", str(root.path), "rollback")
    print(back.stdout)
    assert back.returncode == 0 and f"current default-{VERSION_B} -> default-{VERSION_A}" in back.stdout
    assert load_bundle(root.current).manifest.version == VERSION_A
    assert list_versions(root) == [(f"default-{VERSION_A}", "current"), (f"default-{VERSION_B}", "previous")]
    listed = _cli("--root", str(root.path), "list")
    assert listed.stdout.splitlines() == [f"* default-{VERSION_A}  (current)", f"  default-{VERSION_B}  (previous)"]


def _swap_detector_for_crops(bundle: Path) -> None:
    """A bundle signed by a trusted key whose detector file is the crop model: it verifies, it cannot run."""
    shutil.copy(bundle / "crops.int8.onnx", bundle / "detector.int8.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["models"]["detector"]["files"]["int8"]
    entry.update(sha256=sha256_file(bundle / "detector.int8.onnx"), bytes=(bundle / "detector.int8.onnx").stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _resign(bundle)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda b: _flip_byte(b / "detector.int8.onnx"), "detector.int8.onnx does not match its sha256"),
        (lambda b: (b / "crops.fp32.onnx").unlink(), "missing: crops.fp32.onnx"),
        (_swap_detector_for_crops, "smoke check: "),
        (lambda b: (b / "manifest.json").unlink(), "not a model bundle"),
    ],
)
def test_bad_bundle_leaves_current_untouched(tmp_path, sources, frames, bundle_copy, spoil, message):
    root = BundleRoot(tmp_path / "bundles")
    install(root, sources["A"], frames)
    before = _targets(root)
    spoil(bundle_copy)
    with pytest.raises(InstallError, match=message):
        install(root, bundle_copy, frames)
    assert _targets(root) == before
    assert [p.name for p in root.versions.iterdir()] == [f"default-{VERSION_A}"]  # no staging, no bad copy


def test_cli_refusal_is_one_line_and_non_zero(tmp_path, frames, bundle_copy):
    _flip_byte(bundle_copy / "crops.int8.onnx")
    result = _cli("--root", str(tmp_path / "bundles"), "install", str(bundle_copy), "--frames", str(frames[0].parent))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "bundle install refused: bundle file crops.int8.onnx does not match" in result.stderr
    assert not (tmp_path / "bundles" / "current").exists()


def _escaping_file() -> tarfile.TarInfo:
    member = tarfile.TarInfo("default/../../../escaped.txt")
    member.size = len(b"owned")
    return member


def _link_out() -> tarfile.TarInfo:
    member = tarfile.TarInfo("default/escaped.txt")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return member


@pytest.mark.parametrize("python_filters", [True, False], ids=["tarfile-filters", "python-before-3.11.4"])
@pytest.mark.parametrize(("evil", "message"), [(_escaping_file, "escapes the bundle directory"),
                                               (_link_out, "not a plain file or folder")])
def test_tar_member_escaping_the_directory_is_refused(tmp_path, sources, frames, monkeypatch, python_filters, evil,
                                                      message):
    if not python_filters:  # Debian bookworm's Python 3.11.2 has no extraction filters: our checks must suffice
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(sources["A"], arcname="default")
        member = evil()
        tar.addfile(member, io.BytesIO(b"owned") if member.isfile() else None)
    root = BundleRoot(tmp_path / "deep" / "bundles")
    with pytest.raises(InstallError, match=message):
        install(root, archive, frames)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert list(root.versions.iterdir()) == [] and not root.current.exists()


def test_tar_install_works_without_tarfile_filters(tmp_path, sources, frames, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sources["B"], arcname="default")
    result = install(BundleRoot(tmp_path / "bundles"), archive, frames)
    assert result.new == f"default-{VERSION_B}" and result.smoke.frames == len(frames)


def test_no_smoke_frames_needs_allow_no_frames(tmp_path, sources):
    root = BundleRoot(tmp_path / "bundles")
    with pytest.raises(InstallError, match="no frames for the smoke check.*--allow-no-frames"):
        install(root, sources["A"], [])
    assert not root.current.exists()
    result = install(root, sources["A"], [], allow_no_frames=True)
    assert result.smoke.frames == 0 and "no frames" in result.smoke.describe()
    assert load_bundle(root.current).manifest.version == VERSION_A


def test_smoke_frames_default_to_the_stores_most_recent_existing(tmp_path, data, sources):
    from common.sqlite import utc_now
    from edge.storage.store import Store

    store = Store(tmp_path / "trapedge.db")
    real = [data / "frames" / "ena24_small" / name for name in ("8831.jpg", "8786.jpg", "9455.jpg")]
    rows = [real[0], tmp_path / "deleted.jpg", real[1], real[2]]
    with store.transaction() as conn:
        for i, path in enumerate(rows):
            conn.execute("INSERT INTO frames (source_id, key, time, time_source, path, processed_at) "
                         "VALUES ('sd', ?, ?, 'mtime', ?, ?)", (f"k{i}", utc_now(), str(path), utc_now()))
    store.close()
    assert frames_from(None, tmp_path / "trapedge.db") == [real[2], real[1], real[0]]
    assert frames_from(None, tmp_path / "absent.db") == []
    root = BundleRoot(tmp_path / "bundles")
    result = install(root, sources["A"], frames_from(None, tmp_path / "trapedge.db"))
    assert result.smoke.frames == 3 and result.smoke.boxes >= 3  # three bear frames
    assert result.smoke.crops >= 1 and result.smoke.ms_per_frame > 0


def test_same_version_twice_is_refused(tmp_path, sources, frames):
    root = BundleRoot(tmp_path / "bundles")
    install(root, sources["A"], frames)
    with pytest.raises(InstallError, match="already installed"):
        install(root, sources["A"], frames)
    assert [p.name for p in root.versions.iterdir()] == [f"default-{VERSION_A}"]


# --- the service's own rollback ---------------------------------------------------------------
def _install_tampered_as_current(root: BundleRoot, bundle_copy: Path, spoil=None) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["version"] = VERSION_B
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    _resign(bundle_copy)
    (spoil or (lambda b: _flip_byte(b / "detector.int8.onnx")))(bundle_copy)
    bad = root.versions / f"default-{VERSION_B}"
    shutil.move(bundle_copy, bad)
    switch(root, bad)


def _service_config(tmp_path: Path, bundle_path: Path) -> Path:
    config = {"device_id": "cam-roll", "bundle": {"path": str(bundle_path), "backend": {"type": "onnxruntime", "threads": 1}},
              "sources": [{"type": "folder", "id": "sd", "path": str(tmp_path / "incoming"), "settle_seconds": 0}],
              "store": {"path": str(tmp_path / "state" / "trapedge.db")}, "gate": {"enabled": False}}
    (tmp_path / "incoming").mkdir()
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda b: _flip_byte(b / "detector.int8.onnx"), "BundleError: bundle file detector.int8.onnx does not match"),
        (_swap_detector_for_crops, "InvalidArgument"),  # hashes match; the model does not run
    ],
)
def test_service_rolls_back_a_tampered_current(tmp_path, data, sources, frames, bundle_copy, spoil, reason):
    from common.config_loader import load_config
    from edge.app.config import EdgeConfig
    from edge.app.service import Service

    root = BundleRoot(tmp_path / "bundles")
    install(root, sources["A"], frames)
    _install_tampered_as_current(root, bundle_copy, spoil)
    assert _targets(root) == (f"versions/default-{VERSION_B}", f"versions/default-{VERSION_A}")
    config = load_config(_service_config(tmp_path, root.current), EdgeConfig)
    shutil.copy(data / "frames" / "autofocus_gallery" / "coyote1.jpg", tmp_path / "incoming" / "coyote1.jpg")
    service = Service(config)
    service.start()
    try:
        service.run(once=True)
        health = service.health()
        frames_done = service.store.conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    finally:
        service.stop()
    assert os.readlink(root.current) == f"versions/default-{VERSION_A}"
    assert health["bundle_version"] == VERSION_A and frames_done == 1
    rollback = health["bundle_rollback"]
    assert rollback["bad"] == f"default-{VERSION_B}" and rollback["now"] == f"default-{VERSION_A}"
    assert reason in rollback["reason"]


def test_a_setting_that_fails_every_bundle_rolls_nothing_back(tmp_path, sources, frames):
    """An info-bar trim larger than the frame failed the new bundle's smoke check, so the service went back to the
    previous bundle, which failed the same way: the good new bundle was lost, and the service stopped with a
    traceback. Now it stops in one line and keeps both bundles where they were."""
    from common.config_loader import load_config
    from edge.app.config import EdgeConfig
    from edge.app.service import Service, StartError

    root = BundleRoot(tmp_path / "bundles")
    install(root, sources["A"], frames)
    install(root, sources["B"], frames)
    before = _targets(root)
    path = _service_config(tmp_path, root.current)
    path.write_text(path.read_text() + "preprocess: {trim_top: 100000, trim_bottom: 100000}\n")
    service = Service(load_config(path, EdgeConfig))
    try:
        with pytest.raises(StartError, match=r"leave none of this frame's .* and so does the previous one, "
                                             rf"default-{VERSION_A}, with these settings: check edge.yaml"):
            service.start()
    finally:
        service.stop()
    assert _targets(root) == before == (f"versions/default-{VERSION_B}", f"versions/default-{VERSION_A}")


def test_service_without_previous_refuses_a_tampered_bundle(tmp_path, bundle_copy):
    from common.config_loader import load_config
    from edge.app.config import EdgeConfig
    from edge.app.service import Service
    from edge.runtime.bundle import BundleError

    root = BundleRoot(tmp_path / "bundles")
    root.versions.mkdir(parents=True)
    _install_tampered_as_current(root, bundle_copy)
    service = Service(load_config(_service_config(tmp_path, root.current), EdgeConfig))
    try:
        with pytest.raises(BundleError, match="detector.int8.onnx"):
            service.start()
    finally:
        service.stop()
    assert os.readlink(root.current) == f"versions/default-{VERSION_B}"

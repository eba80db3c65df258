"""Model bundles against a hostile supplier (issue: signed bundles, paths inside the bundle).

In process, on the real default bundle: the device trusts one release key (``bundle.trusted_keys``)
and loads bundles as the service does (``load_bundle`` with its trust) and installs them as
``trapedge bundle install`` does. Each probe's bundle is the genuine one changed the way an
attacker would: a consistent swap (model and sha256 both replaced), an edited label, another key,
no signature, names and file paths that climb out, links to secrets and to /dev/zero, an install
killed half-way.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.hashing import sha256_file
from common.signing import SIGNATURE_NAME
from edge.app.bundle_install import BundleRoot, InstallError, install, list_versions
from edge.app.config import EdgeConfig, command_defaults
from edge.app.service import Service
from edge.runtime.bundle import BundleError, load_bundle
from export.signing import load_private_key, public_path, sign_bundle, write_key_pair

SECRET = b"TOPSECRET-device-credentials"


@dataclass(frozen=True)
class Keys:
    release: Path  # the key the device trusts
    attacker: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    base = tmp_path_factory.mktemp("keys")
    found = Keys(base / "release.key", base / "attacker.key")
    write_key_pair(found.release)
    write_key_pair(found.attacker)
    return found


@pytest.fixture
def release(bundle_copy: Path, keys: Keys) -> Path:
    """The genuine bundle as its supplier ships it: signed with the release key."""
    _sign(bundle_copy, keys.release)
    return bundle_copy


@pytest.fixture
def frame(data: Path) -> list[Path]:
    return [data / "frames" / "autofocus_gallery" / "coyote1.jpg"]


def _sign(bundle: Path, key: Path) -> None:
    sign_bundle(bundle, load_private_key(key))


def _device(keys: Keys, tmp_path: Path, **bundle: object) -> EdgeConfig:
    """A camera that trusts only the release key."""
    return command_defaults(str(tmp_path), bundle={"trusted_keys": [str(public_path(keys.release))],
                                                   "backend": {"type": "onnxruntime", "threads": 1}, **bundle})


def _edit(bundle: Path, change: Callable[[dict], None]) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _refusal(action: Callable[[], object]) -> str | None:
    """The reason ``action`` was refused with (one line), or None when it was accepted."""
    try:
        action()
    except (BundleError, InstallError) as exc:
        assert "\n" not in str(exc), f"refusal is not one line: {exc}"
        return str(exc)
    return None


def _stored(root: Path) -> int:
    """Bytes under ``root`` (links not followed)."""
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) if root.exists() else 0


def _load_and_install(bundle: Path, config: EdgeConfig, root: BundleRoot, frame: list[Path]) -> list[str | None]:
    """What the service's load and ``trapedge bundle install`` each made of ``bundle``."""
    return [_refusal(lambda: load_bundle(bundle, config.bundle.trust)),
            _refusal(lambda: install(root, bundle, frame, config))]


def _nothing_installed(root: BundleRoot) -> None:
    assert list_versions(root) == [] and not root.current.exists()
    assert not root.versions.exists() or not list(root.versions.iterdir())  # no staging left either


# --- signatures -------------------------------------------------------------------------------
def _swap_crop_model(bundle: Path) -> None:
    """Another model with its own sha256 in the manifest, and person <-> fox: every hash matches."""
    shutil.copy(bundle / "crops.fp32.onnx", bundle / "crops.int8.onnx")
    entry = {"path": "crops.int8.onnx", "sha256": sha256_file(bundle / "crops.int8.onnx"),
             "bytes": (bundle / "crops.int8.onnx").stat().st_size}

    def change(m: dict) -> None:
        for task in ("classifier", "embedder"):
            m["models"][task]["files"]["int8"] = entry
        labels = m["models"]["classifier"]["labels"]
        i, j = labels.index("person"), labels.index("fox")
        labels[i], labels[j] = labels[j], labels[i]

    _edit(bundle, change)


def test_a_consistent_swap_is_refused_at_load_and_install(tmp_path, release, keys, frame, tally):
    _swap_crop_model(release)
    load_bundle(release)  # the swap is consistent: every file matches its sha256 (all the old edge checked)
    root = BundleRoot(tmp_path / "bundles")
    reasons = _load_and_install(release, _device(keys, tmp_path), root, frame)
    tally.record("bundle: consistent swap (model + sha256 + person<->fox)", attempts=2,
                 rejected=sum(r is not None for r in reasons), crashes=0, failed_restarts=0, bytes_stored=_stored(root.path))
    assert all(r and "does not match its signature" in r for r in reasons), reasons
    _nothing_installed(root)


def test_an_unsigned_bundle_is_refused_with_what_to_do(tmp_path, release, keys, frame, tally):
    (release / SIGNATURE_NAME).unlink()
    root = BundleRoot(tmp_path / "bundles")
    reasons = _load_and_install(release, _device(keys, tmp_path), root, frame)
    tally.record("bundle: unsigned", attempts=2, rejected=sum(r is not None for r in reasons), crashes=0,
                 failed_restarts=0, bytes_stored=_stored(root.path))
    assert all(r and "is not signed" in r and "python -m export.signing sign" in r for r in reasons), reasons
    _nothing_installed(root)


def _claim_release_key_id(bundle: Path, keys: Keys) -> None:
    """Signed by the attacker, with the release key's id written in manifest.sig."""
    release_id = json.loads((bundle.parent / "genuine.sig").read_text())["key_id"]
    signature = json.loads((bundle / SIGNATURE_NAME).read_text())
    (bundle / SIGNATURE_NAME).write_text(json.dumps({**signature, "key_id": release_id}))


@pytest.mark.parametrize(("forge", "message"), [
    (None, "which is not in bundle.trusted_keys"),
    (_claim_release_key_id, "does not match its signature"),
], ids=["attacker key", "attacker key under the release key id"])
def test_a_bundle_signed_with_another_key_is_refused(tmp_path, release, keys, frame, tally, forge, message):
    shutil.copy(release / SIGNATURE_NAME, release.parent / "genuine.sig")
    _edit(release, lambda m: m["models"]["classifier"]["labels"].reverse())
    _sign(release, keys.attacker)
    if forge:
        forge(release, keys)
    root = BundleRoot(tmp_path / "bundles")
    reasons = _load_and_install(release, _device(keys, tmp_path), root, frame)
    tally.record("bundle: signed with another key", attempts=2, rejected=sum(r is not None for r in reasons),
                 crashes=0, failed_restarts=0, bytes_stored=_stored(root.path))
    assert all(r and message in r for r in reasons), reasons
    _nothing_installed(root)


def _swap_labels(m: dict) -> None:
    labels = m["models"]["classifier"]["labels"]
    i, j = labels.index("person"), labels.index("fox")
    labels[i], labels[j] = labels[j], labels[i]


@pytest.mark.parametrize(("tamper", "refused"), [
    (_swap_labels, True),
    (lambda m: m["models"]["classifier"]["labels"].__setitem__(-1, "fox"), True),
    (lambda m: m["models"]["detector"]["thresholds"].update(confidence=0.99), True),
    (lambda m: m["models"]["detector"]["input"].update(mean=[9.0, 9.0, 9.0]), True),
    (lambda m: m["models"]["classifier"].update(taxonomy={"fox": ["person"]}), True),
    (lambda m: m.update(evaluation={"note": "added after signing"}), True),
    (lambda m: None, False),  # re-indented and keys reordered only: the canonical bytes are the same
], ids=["person<->fox", "label renamed", "threshold", "preprocessing mean", "taxonomy", "field added", "reformatted"])
def test_a_tampered_manifest_is_refused(release, keys, tmp_path, tally, tamper, refused):
    _edit(release, tamper)
    text = json.loads((release / "manifest.json").read_text())
    (release / "manifest.json").write_text(json.dumps(dict(reversed(list(text.items()))), indent=4))
    reason = _refusal(lambda: load_bundle(release, _device(keys, tmp_path).bundle.trust))
    if refused:
        tally.record("bundle: manifest edited after signing (labels, thresholds, preprocessing, taxonomy)",
                     attempts=1, rejected=int(reason is not None), crashes=0, failed_restarts=0)
        assert reason and "does not match its signature" in reason
    else:
        assert reason is None


def test_development_mode_loads_unsigned_bundles_loudly_but_never_bad_signatures(tmp_path, release, keys, caplog,
                                                                                 tally):
    unsigned = tmp_path / "unsigned"
    shutil.copytree(release, unsigned)
    (unsigned / SIGNATURE_NAME).unlink()
    config = command_defaults(str(tmp_path), store={"path": str(tmp_path / "state" / "trapedge.db")},
                              bundle={"path": str(unsigned), "trusted_keys": [str(public_path(keys.release))],
                                      "allow_unsigned": True, "backend": {"type": "onnxruntime", "threads": 1}})
    service = Service(config)
    with caplog.at_level(logging.WARNING):
        try:
            service.start()
        finally:
            service.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    _edit(release, _swap_labels)  # a signature that is there is checked all the same
    reason = _refusal(lambda: load_bundle(release, config.bundle.trust))
    tally.record("bundle: development mode (allow_unsigned)", attempts=2, rejected=int(reason is not None), crashes=0,
                 failed_restarts=0)
    assert service.bundle.signer is None and service.bundle.manifest.name == "default"
    assert any("bundle.allow_unsigned is true" in w for w in warnings), warnings
    assert any("is NOT SIGNED" in w for w in warnings), warnings
    assert reason and "does not match its signature" in reason


# --- paths ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("name", "../../escaped"), ("version", "../../escaped"), ("name", "{tmp}/escaped"), ("version", "a/b"),
    ("name", ".hidden"), ("name", ""), ("version", "v1\\..\\..\\escaped"),
])
def test_a_name_or_version_that_is_not_a_plain_name_is_refused(tmp_path, release, keys, frame, tally, field, value):
    """Signed by the trusted key (a signer's mistake, or development mode): the name check stands on its own."""
    _edit(release, lambda m: m.update({field: value.format(tmp=tmp_path)}))
    _sign_unchecked(release, keys.release)
    root = BundleRoot(tmp_path / "deep" / "bundles")
    reasons = _load_and_install(release, _device(keys, tmp_path), root, frame)
    tally.record("bundle: ../ or / in name or version", attempts=2, rejected=sum(r is not None for r in reasons),
                 crashes=0, failed_restarts=0, bytes_stored=_stored(tmp_path / "deep"))
    assert all(r and f"{field}: String should match pattern" in r for r in reasons), reasons
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob(".hidden*"))
    _nothing_installed(root)


def _sign_unchecked(bundle: Path, key: Path) -> None:
    """Sign whatever the manifest says, as a careless signer would (``sign_bundle`` checks it first)."""
    from common.signing import parse_manifest, sign

    text = sign(parse_manifest((bundle / "manifest.json").read_text()), load_private_key(key))
    (bundle / SIGNATURE_NAME).write_text(text)


def _outside_by_dots(bundle: Path) -> None:
    shutil.copy(bundle / "detector.int8.onnx", bundle.parent / "outside.onnx")
    _edit(bundle, lambda m: m["models"]["detector"]["files"]["int8"].update(path="../outside.onnx"))


def _outside_absolute(bundle: Path) -> None:
    shutil.copy(bundle / "detector.int8.onnx", bundle.parent / "outside.onnx")
    _edit(bundle, lambda m: m["models"]["detector"]["files"]["int8"].update(path=str(bundle.parent / "outside.onnx")))


def _outside_by_file_link(bundle: Path) -> None:
    (bundle / "detector.int8.onnx").rename(bundle.parent / "outside.onnx")
    (bundle / "detector.int8.onnx").symlink_to(bundle.parent / "outside.onnx")


def _outside_by_folder_link(bundle: Path) -> None:
    (bundle.parent / "elsewhere").mkdir()
    (bundle / "detector.int8.onnx").rename(bundle.parent / "elsewhere" / "detector.int8.onnx")
    (bundle / "models").symlink_to(bundle.parent / "elsewhere")
    _edit(bundle, lambda m: m["models"]["detector"]["files"]["int8"].update(path="models/detector.int8.onnx"))


@pytest.mark.parametrize(("escape", "message"), [
    (_outside_by_dots, "is not a plain relative path inside the bundle"),
    (_outside_absolute, "is not a plain relative path inside the bundle"),
    (_outside_by_file_link, "is a link or lies outside the bundle"),
    (_outside_by_folder_link, "is a link or lies outside the bundle"),
], ids=["../", "absolute", "file link", "folder link"])
def test_a_file_path_leaving_the_bundle_is_refused(tmp_path, bundle_copy, keys, frame, tally, escape, message):
    """The escaping file holds the genuine model (its sha256 matches) and the manifest is signed by the trusted key."""
    escape(bundle_copy)
    _sign_unchecked(bundle_copy, keys.release)
    root = BundleRoot(tmp_path / "bundles")
    load, installed = _load_and_install(bundle_copy, _device(keys, tmp_path), root, frame)
    tally.record("bundle: files[].path outside the bundle", attempts=2, rejected=(load is not None) + (installed is not None),
                 crashes=0, failed_restarts=0, bytes_stored=_stored(root.path))
    assert load and message in load
    assert installed  # at install the link is refused at the copy, the path by the manifest check
    _nothing_installed(root)


# --- directory bundles ------------------------------------------------------------------------
@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Files this process writes stop at ``limit`` bytes (EFBIG): code that follows a link to /dev/zero
    fails instead of filling the disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _link_to_secret(bundle: Path) -> None:
    (bundle.parent / "secret.txt").write_bytes(SECRET)
    (bundle / "notes.txt").symlink_to(bundle.parent / "secret.txt")


def _link_to_dev_zero(bundle: Path) -> None:
    (bundle / "zero.bin").symlink_to("/dev/zero")


def _link_to_secret_folder(bundle: Path) -> None:
    (bundle.parent / "private").mkdir()
    (bundle.parent / "private" / "id_ed25519").write_bytes(SECRET)
    (bundle / "extras").symlink_to(bundle.parent / "private")


@pytest.mark.parametrize("plant", [_link_to_secret, _link_to_dev_zero, _link_to_secret_folder],
                         ids=["link to a secret file", "link to /dev/zero", "link to a secret folder"])
def test_links_in_a_directory_bundle_are_refused_before_anything_is_copied(tmp_path, release, keys, frame, tally,
                                                                           plant):
    plant(release)
    root = BundleRoot(tmp_path / "bundles")
    with _file_size_limit(64 << 20):  # the bundle's largest file is ~20 MB
        reason = _refusal(lambda: install(root, release, frame, _device(keys, tmp_path)))
    stored = _stored(root.path)
    copied_secret = any(SECRET in p.read_bytes() for p in root.path.rglob("*") if p.is_file() and not p.is_symlink())
    tally.record("bundle: symlink in a directory bundle (secret file, /dev/zero, folder)", attempts=1,
                 rejected=int(reason is not None), crashes=0, failed_restarts=0, bytes_stored=stored)
    assert reason and "is a symbolic link" in reason
    assert not copied_secret and stored == 0
    _nothing_installed(root)


def _as_tar(bundle: Path) -> Path:
    archive = bundle.parent / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle, arcname="default")
    return archive


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar"])
def test_a_bundle_over_the_size_cap_is_refused(tmp_path, release, keys, frame, tally, packed):
    source = _as_tar(release) if packed else release
    root = BundleRoot(tmp_path / "bundles")
    reason = _refusal(lambda: install(root, source, frame, _device(keys, tmp_path, install_max_mb=10)))
    tally.record("bundle: over bundle.install_max_mb", attempts=1, rejected=int(reason is not None), crashes=0,
                 failed_restarts=0, bytes_stored=_stored(root.path))
    assert reason and "larger than bundle.install_max_mb (10 MB)" in reason
    _nothing_installed(root)


# --- interrupted install ----------------------------------------------------------------------
KILLED_INSTALL = """
import os, signal, sys
from pathlib import Path
import edge.app.bundle_install as bundle_install
from edge.app.config import command_defaults

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(bundle_install, sys.argv[1], killed)
config = command_defaults(bundle={"trusted_keys": [sys.argv[4]], "backend": {"type": "onnxruntime", "threads": 1}})
bundle_install.install(bundle_install.BundleRoot(Path(sys.argv[2])), Path(sys.argv[3]), [], config,
                       allow_no_frames=True)
"""


@pytest.mark.parametrize("killed_in", ["switch", "smoke_check"],
                         ids=["kill -9 between rename and switch", "kill -9 during the smoke check"])
def test_an_install_killed_half_way_leaves_nothing_that_blocks_the_next(tmp_path, release, keys, frame, tally, killed_in):
    root = BundleRoot(tmp_path / "bundles")
    killed = subprocess.run([sys.executable, "-c", KILLED_INSTALL, killed_in, str(root.path), str(release),
                             str(public_path(keys.release))], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [name for name, _ in list_versions(root)]
    reason = _refusal(lambda: install(root, release, frame, _device(keys, tmp_path)))
    tally.record("bundle: install killed (-9) half-way, then installed again", attempts=1, rejected=0, crashes=0,
                 failed_restarts=int(reason is not None), bytes_stored=_stored(root.versions))
    name = json.loads((release / "manifest.json").read_text())
    name = f"{name['name']}-{name['version']}"
    assert left == ([name] if killed_in == "switch" else [])  # listed only once verified
    assert reason is None
    assert list_versions(root) == [(name, "current")]
    assert _stored(root.versions) == _stored(release)  # one copy: no staging or replaced folder left
    assert load_bundle(root.current, _device(keys, tmp_path).bundle.trust).signer is not None

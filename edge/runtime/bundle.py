"""Load a model bundle from disk: check its manifest's signature, then every file against the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common import signing
from common.hashing import sha256_file
from edge.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, FileEntry, Manifest, ModelSpec

SIGNATURE_MAX_BYTES = 64 * 1024


class BundleError(RuntimeError):
    """A bundle that must not be used: missing, malformed, unsigned or tampered with."""


@dataclass(frozen=True)
class BundleTrust:
    """Whose signatures a device accepts: ``bundle.trusted_keys`` and ``bundle.allow_unsigned``.

    ``allow_unsigned`` admits a bundle without ``manifest.sig`` (development); a signature that is
    there is always checked, and a bad one is always refused.
    """

    keys: tuple[str, ...] = ()  # base64 Ed25519 public keys or paths of .pub files
    allow_unsigned: bool = False

    def public_keys(self) -> dict[str, bytes]:
        """Key id -> raw public key of every trusted key.

        Raises:
            BundleError: an entry that is neither a key nor a readable key file.
        """
        try:
            raws = [signing.read_public_key(entry) for entry in self.keys]
        except signing.SignatureError as exc:
            raise BundleError(str(exc)) from None
        return {signing.key_id(raw): raw for raw in raws}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and manifest."""

    root: Path
    manifest: Manifest
    signer: str | None = None  # the key id whose signature was checked; None: not checked, or unsigned and allowed
    warning: str | None = None  # what the service says loudly at start: unsigned (allowed), or the development key

    def spec(self, task: str) -> ModelSpec:
        """The manifest entry of one model (``detector``, ``classifier`` or ``embedder``)."""
        try:
            return self.manifest.models[task]  # type: ignore[index]  # an unknown task is the KeyError below
        except KeyError:
            raise BundleError(f"bundle {self.root} has no {task} model") from None

    def model_path(self, task: str, precision: str) -> Path:
        """Path of one model file; ``precision`` is ``fp32`` or ``int8``."""
        files = self.spec(task).files
        if precision not in files:
            raise BundleError(f"bundle {self.root} has no {precision} {task} (has {sorted(files)})")
        return self.root / files[precision].path


def read_document(root: Path) -> dict[str, Any]:
    """The JSON of ``manifest.json``, before validation (what a signature covers)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path} not found: not a model bundle (build one with `make export`)")
    try:
        return signing.parse_manifest(path.read_text())
    except ValueError as exc:
        raise BundleError(f"{path} is not a valid manifest: {exc}") from None


def _validated(path: Path, document: dict[str, Any]) -> Manifest:
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"{path} is not a valid manifest: {reasons}") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest.schema_version}, this edge reads {SCHEMA_VERSION}")
    return manifest


def read_manifest(root: Path) -> Manifest:
    """Parse and validate ``manifest.json`` (no signature or file checks)."""
    return _validated(Path(root) / MANIFEST_NAME, read_document(root))


def check_signature(root: Path, document: dict[str, Any], trust: BundleTrust) -> str | None:
    """The key id whose signature covers ``document``; None for an unsigned bundle ``trust`` allows.

    Raises:
        BundleError: unsigned (unless allowed), signed by a key not trusted, or altered after signing.
    """
    path = Path(root) / signing.SIGNATURE_NAME
    if not path.exists() and not path.is_symlink():
        if not trust.allow_unsigned:
            raise BundleError(f"bundle {root} is not signed (no {signing.SIGNATURE_NAME}): sign it with `python -m "
                              f"export.signing sign {root} --key KEY` and list KEY.pub in bundle.trusted_keys")
        return None
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"bundle {root}: {signing.SIGNATURE_NAME} is not a plain file: refusing to load")
    with path.open(encoding="utf-8", errors="replace") as fh:
        text = fh.read(SIGNATURE_MAX_BYTES)
    try:
        return signing.verify(document, text, trust.public_keys())
    except signing.SignatureError as exc:
        raise BundleError(f"bundle {root} refused: {exc}") from None


def _trust_warning(root: Path, signer: str | None) -> str | None:
    """The line to say loudly about a bundle accepted unsigned or signed with the development key."""
    if signer is None:
        return (f"bundle {root} is NOT SIGNED: loaded only because bundle.allow_unsigned is true (development only, "
                "never on a deployed camera)")
    if signer == _development_key_id():
        return (f"bundle {root} is signed with the development key {signer} ({signing.DEV_PUBLIC_KEY}): for demos "
                "and tests; a deployed camera lists its release key in bundle.trusted_keys")
    return None


def _development_key_id() -> str | None:
    if not signing.DEV_PUBLIC_KEY.is_file():
        return None
    raw = signing.decode_public(signing.DEV_PUBLIC_KEY.read_text())
    return signing.key_id(raw) if raw is not None else None


def verify_file(root: Path, entry: FileEntry) -> None:
    """Refuse a file that is missing, a link, outside the bundle, or whose size or sha256 differs from the manifest."""
    path = Path(root) / entry.path
    if path.is_symlink() or not path.resolve().is_relative_to(Path(root).resolve()):
        raise BundleError(f"bundle file {entry.path} is a link or lies outside the bundle: refusing to load")
    if not path.is_file():
        raise BundleError(f"bundle file missing: {entry.path}")
    if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
        raise BundleError(f"bundle file {entry.path} does not match its sha256 in the manifest: refusing to load")


def load_bundle(root: str | Path, trust: BundleTrust | None = None) -> Bundle:
    """Read a bundle, check its signature against ``trust``, then the sha256 of every file the manifest lists.

    Args:
        root: the bundle directory.
        trust: the device's trusted keys (``EdgeConfig.bundle.trust``); None for the companion's own
            bundles (export, train, central), whose signature is not checked. The appliance always
            passes one.

    Raises:
        BundleError: one line naming what is unsigned, untrusted, missing or altered.
    """
    root = Path(root)
    document = read_document(root)
    signer = check_signature(root, document, trust) if trust is not None else None
    manifest = _validated(root / MANIFEST_NAME, document)
    for spec in manifest.models.values():
        for entry in spec.files.values():
            verify_file(root, entry)
    if manifest.compact is not None:
        verify_file(root, manifest.compact.projection)
    return Bundle(root, manifest, signer, _trust_warning(root, signer) if trust is not None else None)

"""Ed25519 signatures over a model bundle's manifest: what the exporter signs and the edge checks.

The signature covers the manifest's canonical bytes (its JSON with sorted keys, no spaces, ASCII
only), so every file's sha256, the labels, thresholds, preprocessing and taxonomy are signed, and
re-indenting the file changes nothing. It lies beside the manifest in ``manifest.sig``.

Keys: a private key is a PKCS#8 PEM file (``openssl genpkey -algorithm ed25519`` writes the same);
a public key is the base64 of its 32 raw bytes, one line, written inline in edge.yaml or in a
``.pub`` file. The development key lives in the checkout's git-ignored ``.cache/signing/``.

The companion makes keys and signs with ``cryptography`` (PEM files); the edge checks signatures with
PyNaCl (libsodium), which holds ~1 MB of the service's resident memory where ``cryptography``, with
its own OpenSSL, held ~6 MB (``trapedge bench``, the service's peak RSS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_BYTES = 64
ALGORITHM = "ed25519"
CONTEXT = b"trapedge bundle manifest v1\n"  # a signature made for anything else never verifies a manifest
DEV_KEY_DIR = Path(__file__).resolve().parents[1] / ".cache" / "signing"
DEV_PRIVATE_KEY = DEV_KEY_DIR / "dev-bundle.key"
DEV_PUBLIC_KEY = DEV_KEY_DIR / "dev-bundle.pub"
PIP_LINE = "pip install 'cryptography>=42'"
VERIFY_PIP_LINE = "pip install 'pynacl>=1.5'"


class SignatureError(ValueError):
    """A signature, or a key, that cannot be used; the message is one line saying why."""


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError(f"making keys and signing bundles needs the cryptography package: {PIP_LINE}") from None
    return ed25519


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def parse_manifest(text: str) -> dict[str, Any]:
    """The manifest's JSON document; a key given twice is refused, so what is signed is what is read.

    Raises:
        ValueError: not JSON, not an object, or a duplicate key.
    """
    document = json.loads(text, object_pairs_hook=_reject_duplicates)
    if not isinstance(document, dict):
        raise ValueError("the manifest is not a JSON object")
    return document


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, ASCII only."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public: bytes) -> str:
    """A short fingerprint of a raw public key, to name it in messages and signatures."""
    return hashlib.sha256(public).hexdigest()[:16]


def encode_public(public: bytes) -> str:
    """A raw public key as the one-line base64 edge.yaml and ``.pub`` files hold."""
    return base64.b64encode(public).decode()


def decode_public(text: str) -> bytes | None:
    """The raw public key a base64 line holds, or None when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def generate_private_key() -> bytes:
    """A new Ed25519 private key as PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization

    key = _ed25519().Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    ed25519 = _ed25519()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"not an Ed25519 key ({type(key).__name__})")
    return key


def public_key_of(private_pem: bytes) -> bytes:
    """The raw 32-byte public key of a PEM private key."""
    from cryptography.hazmat.primitives import serialization

    return _private_key(private_pem).public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw)


def sign(document: dict[str, Any], private_pem: bytes) -> str:
    """The ``manifest.sig`` text for a manifest document: algorithm, key id and base64 signature."""
    key = _private_key(private_pem)
    signature = key.sign(CONTEXT + canonical_bytes(document))
    return json.dumps({"algorithm": ALGORITHM, "key_id": key_id(public_key_of(private_pem)),
                       "signature": base64.b64encode(signature).decode()}, indent=2) + "\n"


def _parse_signature(text: str) -> tuple[str, bytes]:
    try:
        fields = json.loads(text)
        algorithm, signer = fields["algorithm"], str(fields["key_id"])
        signature = base64.b64decode(fields["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"{SIGNATURE_NAME} is malformed ({type(exc).__name__})") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_NAME} uses {algorithm!r}; this edge checks {ALGORITHM} signatures")
    return signer, signature


def verify(document: dict[str, Any], signature_text: str, trusted: dict[str, bytes]) -> str:
    """Check ``manifest.sig`` against the trusted raw public keys (key id -> key).

    Returns:
        The key id that signed it.

    Raises:
        SignatureError: malformed, signed by a key not trusted, or not matching the manifest.
    """
    try:
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey
    except ImportError:
        raise SignatureError(f"checking bundle signatures needs PyNaCl: {VERIFY_PIP_LINE}") from None

    signer, signature = _parse_signature(signature_text)
    if signer not in trusted:
        raise SignatureError(f"signed by key {signer}, which is not in bundle.trusted_keys "
                             f"(trusted: {', '.join(trusted) or 'none'})")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_NAME} is malformed (a {len(signature)}-byte signature; Ed25519's are "
                             f"{SIGNATURE_BYTES})")
    try:
        VerifyKey(trusted[signer]).verify(CONTEXT + canonical_bytes(document), signature)
    except BadSignatureError:
        raise SignatureError(f"the manifest does not match its signature by key {signer}: it was altered "
                             "after signing") from None
    return signer


def read_public_key(entry: str) -> bytes:
    """One ``bundle.trusted_keys`` entry: an inline base64 key, or a file holding one.

    Raises:
        SignatureError: neither a key nor a readable key file.
    """
    inline = decode_public(entry)
    if inline is not None:
        return inline
    path = Path(entry).expanduser()
    if not path.is_file():
        raise SignatureError(f"bundle.trusted_keys: {entry} is neither a base64 Ed25519 public key nor a key file: "
                             "list the .pub written by `python -m export.signing keygen`")
    raw = decode_public(path.read_text())
    if raw is None:
        raise SignatureError(f"bundle.trusted_keys: {path} does not hold a base64 Ed25519 public key (one line)")
    return raw

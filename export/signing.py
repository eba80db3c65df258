"""Bundle signing keys on the build machine: ``python -m export.signing keygen|sign``.

``keygen KEY`` writes an Ed25519 private key (mode 0600) and its public half beside it
(``KEY.pub`` with the suffix replaced: the line a camera lists in ``bundle.trusted_keys``).
``sign BUNDLE`` adds ``manifest.sig`` to a built bundle. ``trapedge export`` signs what it builds
with ``--signing-key KEY``, else with the checkout's development key (``.cache/signing/``, made on
first use), which the default edge config trusts: for `make demo` and the tests, never for a
deployed camera, whose edge.yaml lists its own keys.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from pathlib import Path

from common.signing import (
    DEV_KEY_DIR,
    DEV_PRIVATE_KEY,
    SIGNATURE_NAME,
    SignatureError,
    encode_public,
    generate_private_key,
    key_id,
    public_key_of,
    sign,
)
from edge.runtime.bundle import BundleError, load_bundle, read_document


def public_path(private: Path) -> Path:
    """Where a private key's public half is written: ``release.key`` -> ``release.pub``."""
    return private.with_suffix(".pub")


def _write_atomic(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Write ``data`` to a temp file of ``mode`` beside ``path``, then move it there (``replace`` or refuse)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # FileExistsError when there is one: a key is never overwritten
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def write_key_pair(private: Path) -> str:
    """Write a new private key (mode 0600; an existing key is never overwritten) and its ``.pub``.

    Returns:
        The public key, the base64 line a camera lists in ``bundle.trusted_keys``.

    Raises:
        FileExistsError: ``private`` exists.
    """
    if private.suffix == ".pub":
        raise SignatureError(f"{private}: a private key's name must not end in .pub (that is where its public half goes)")
    private.parent.mkdir(parents=True, exist_ok=True)
    pem = generate_private_key()
    _write_atomic(private, pem, 0o600, replace=False)
    public = encode_public(public_key_of(pem))
    _write_atomic(public_path(private), (public + "\n").encode(), 0o644, replace=True)
    return public


def load_private_key(path: Path) -> bytes:
    """A private key's PEM, refused when others may read it or when it is not an Ed25519 key.

    Raises:
        SignatureError: one line saying what to do.
    """
    if not path.is_file():
        raise SignatureError(f"signing key {path} not found: make one with `python -m export.signing keygen {path}`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SignatureError(f"signing key {path} is readable by others (mode {mode:o}): chmod 600 {path}")
    pem = path.read_bytes()
    public_key_of(pem)  # raises when it is not an Ed25519 private key
    return pem


def development_key() -> Path:
    """The checkout's development key, made on first use; the default edge config trusts its ``.pub``."""
    if not DEV_PRIVATE_KEY.exists():
        DEV_KEY_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            write_key_pair(DEV_PRIVATE_KEY)
        except FileExistsError:
            pass  # another process made it meanwhile
    public = (encode_public(public_key_of(load_private_key(DEV_PRIVATE_KEY))) + "\n").encode()
    if not public_path(DEV_PRIVATE_KEY).is_file() or public_path(DEV_PRIVATE_KEY).read_bytes() != public:
        _write_atomic(public_path(DEV_PRIVATE_KEY), public, 0o644, replace=True)
    return DEV_PRIVATE_KEY


def development_key_warning() -> str:
    """What a command says, loudly, when it signs with the development key."""
    return (f"WARNING: signing with the DEVELOPMENT key {DEV_PRIVATE_KEY} (git-ignored, made on first use): the "
            "default edge config trusts it, a deployed camera must not; for a release give --signing-key KEY "
            "(`python -m export.signing keygen KEY` makes one) and list KEY's .pub in the camera's bundle.trusted_keys")


def sign_bundle(bundle: Path, private_pem: bytes) -> str:
    """Check a built bundle's files against its manifest, then write ``manifest.sig`` beside it.

    Returns:
        The signing key's id.

    Raises:
        BundleError: the manifest is invalid or a file does not match it (nothing is signed).
    """
    load_bundle(bundle)
    _write_atomic(Path(bundle) / SIGNATURE_NAME, sign(read_document(bundle), private_pem).encode(), 0o644, replace=True)
    return key_id(public_key_of(private_pem))


def _keygen(args: argparse.Namespace) -> int:
    try:
        public = write_key_pair(args.key)
    except FileExistsError:
        print(f"keygen refused: {args.key} exists; a key is never overwritten (choose another path)", file=sys.stderr)
        return 2
    print(f"private key: {args.key} (mode 600; keep it off the cameras)")
    print(f"public key:  {public_path(args.key)}: list it (or this line) in the camera's bundle.trusted_keys")
    print(public)
    return 0


def _sign(args: argparse.Namespace) -> int:
    if args.key is None:
        print(development_key_warning(), file=sys.stderr)
    signer = sign_bundle(args.bundle, load_private_key(args.key or development_key()))
    print(f"signed {args.bundle / SIGNATURE_NAME} with key {signer}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.signing", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="write a new private key (mode 600) and its .pub")
    keygen.add_argument("key", type=Path, help="private key file to write, e.g. ~/.trapedge/release.key")
    signer = actions.add_parser("sign", help="add manifest.sig to a built bundle")
    signer.add_argument("bundle", type=Path, help="bundle directory")
    signer.add_argument("--key", type=Path, default=None, help="private key (default: the development key)")
    args = parser.parse_args(argv)
    try:
        return _keygen(args) if args.action == "keygen" else _sign(args)
    except (SignatureError, BundleError, OSError) as exc:
        print(f"{args.action} failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

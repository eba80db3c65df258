"""Load a model bundle from disk and verify every file against its manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from common.hashing import sha256_file
from edge.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, FileEntry, Manifest, ModelSpec


class BundleError(RuntimeError):
    """A bundle that must not be used: missing, malformed or tampered with."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and manifest."""

    root: Path
    manifest: Manifest

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


def read_manifest(root: Path) -> Manifest:
    """Parse and validate ``manifest.json`` (no file checks)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path} not found: not a model bundle (build one with `make export`)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{path} is not a valid manifest: {exc}") from exc
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest.schema_version}, this edge reads {SCHEMA_VERSION}")
    return manifest


def verify_file(root: Path, entry: FileEntry) -> None:
    """Refuse a file that is missing or whose size or sha256 differs from the manifest."""
    path = root / entry.path
    if not path.is_file():
        raise BundleError(f"bundle file missing: {entry.path}")
    if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
        raise BundleError(f"bundle file {entry.path} does not match its sha256 in the manifest: refusing to load")


def load_bundle(root: str | Path) -> Bundle:
    """Read a bundle and verify the sha256 of every file the manifest lists.

    Raises:
        BundleError: naming the first file that is missing or altered.
    """
    root = Path(root)
    manifest = read_manifest(root)
    for spec in manifest.models.values():
        for entry in spec.files.values():
            verify_file(root, entry)
    return Bundle(root, manifest)

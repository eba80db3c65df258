"""The compact embedding's projection, learnt at export and carried (signed) in the bundle.

``python -m export.projection BUNDLE [--data ../shared/data] [--signing-key KEY]`` adds it to a built
bundle; ``trapedge export`` adds it to every bundle it builds when the fitting crops are there.

The bundle's own embedder (at the precision a camera runs, INT8) embeds the re-ID training crops,
``reid/lion/train`` (75 lions; the held-out ``reid/lion/val`` and the SpotID leopards are what
``trapedge central evaluate --compact`` measures on). PCA of those vectors keeps ``dim`` components,
divided by their standard deviation (whitening; not for an embedder that learnt individuals), so
each of the 189 int8 values of a 222-byte record carries a comparable share of what tells
individuals apart. The mean and components are
``projection.npy``; the manifest's ``compact`` entry holds its sha256, the wire label table and
what the projection was fitted on, and the manifest is signed again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common.compact import MAX_DIM
from common.files import files_under
from common.hashing import sha256_file
from edge.analysis.labels import LabelSpace
from edge.capture.decode import decode_image
from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.manifest import MANIFEST_NAME, CompactSpec, FileEntry, Manifest
from edge.runtime.models import Embedder
from export.signing import development_key, development_key_warning, load_private_key, sign_bundle

PROJECTION_NAME = "projection.npy"
FIT_SET = "reid/lion/train"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
BATCH = 64


def fit_projection(vectors: np.ndarray, dim: int, whiten: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """PCA of ``vectors`` (N, D): (mean, components (dim, D), share of the variance kept).

    Raises:
        ValueError: fewer than ``dim + 1`` vectors or ``dim`` dimensions (the components would not be determined).
    """
    vectors = np.asarray(vectors, np.float64)
    if len(vectors) <= dim or vectors.shape[1] < dim:
        raise ValueError(f"a {dim}-component projection needs more than {dim} vectors of at least {dim} dimensions, "
                         f"got {vectors.shape}")
    mean = vectors.mean(axis=0)
    _, singular, rows = np.linalg.svd(vectors - mean, full_matrices=False)
    components = rows[:dim]
    if whiten:
        components = components / (singular[:dim, None] / np.sqrt(len(vectors) - 1))
    return mean, components, float((singular[:dim] ** 2).sum() / (singular ** 2).sum())


def wire_labels(manifest: Manifest) -> list[str]:
    """Every label a box or event of this bundle can end with, whatever the device's roll-up setting."""
    detector = manifest.models["detector"].labels
    classifier = manifest.models.get("classifier")
    space = LabelSpace.of(detector, classifier.labels if classifier else (), classifier.taxonomy if classifier else None,
                          rollup_min_score=0.0 if classifier else None)
    return list(dict.fromkeys([*space.labels, *detector]))


def fit_images(data: Path) -> tuple[list[Path], int]:
    """The fitting crops under ``data`` and how many individuals they show."""
    root = Path(data) / FIT_SET
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: the projection is fitted on its crops")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    paths = [p for f in folders for p in files_under(f) if p.suffix.lower() in IMAGE_SUFFIXES]
    return paths, len(folders)


def embed_images(embedder: Embedder, paths: list[Path]) -> np.ndarray:
    """(N, D) embeddings of whole images (crops already), as ``trapedge central enrol`` makes them."""
    chunks = []
    for start in range(0, len(paths), BATCH):
        crops = [embedder.whole(decode_image(p, max_side=1024).rgb) for p in paths[start:start + BATCH]]
        chunks.append(embedder.run_crops(crops))
    return np.concatenate(chunks)


def write_projection(root: Path, data: Path, dim: int = MAX_DIM, precision: str = "int8",
                     whiten: bool = True) -> CompactSpec:
    """Fit the projection through ``root``'s embedder, write ``projection.npy`` and the manifest's ``compact``.

    ``whiten``: for an embedder that never learnt individuals (the default bundle's ImageNet features).
    An embedder trained with a metric loss already spreads what tells individuals apart; whitening
    its own training crops re-weights directions by their training variance and overfits them
    (trained bundle, lion val rank-1 by cosine: full 0.301, compact whitened 0.158; on the float
    vectors, PCA to 189 without whitening kept 0.253 of 0.267).

    ``dim`` is lowered to the embedder's own dimension when that is smaller (a shorter record). The
    manifest is rewritten, so its signature no longer holds: sign the bundle afterwards.
    """
    bundle = load_bundle(root)
    paths, individuals = fit_images(data)
    vectors = embed_images(Embedder(bundle, precision), paths)
    dim = min(dim, vectors.shape[1])
    mean, components, kept = fit_projection(vectors, dim, whiten)
    np.save(root / PROJECTION_NAME, np.vstack([mean, components]).astype(np.float32), allow_pickle=False)
    path = root / PROJECTION_NAME
    spec = CompactSpec(projection=FileEntry(path=PROJECTION_NAME, sha256=sha256_file(path), bytes=path.stat().st_size),
                       input_dim=int(vectors.shape[1]), dim=dim, whitened=whiten, labels=wire_labels(bundle.manifest),
                       explained_variance=round(kept, 4),
                       fitted_on={"set": FIT_SET, "images": len(paths), "individuals": individuals,
                                  "precision": precision})
    manifest = bundle.manifest.model_copy(update={"compact": spec})
    (root / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return spec


def add_projection(root: Path, data: Path, signing_key: Path | None = None, dim: int = MAX_DIM) -> CompactSpec:
    """``write_projection``, then sign the bundle again (with ``signing_key``, else the development key)."""
    spec = write_projection(root, data, dim)
    sign_bundle(root, load_private_key(signing_key or development_key()))
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.projection", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory (rewritten in place and signed again)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help=f"holds {FIT_SET}")
    parser.add_argument("--signing-key", type=Path, default=None, help="private key (default: the development key)")
    parser.add_argument("--dim", type=int, default=MAX_DIM, help=f"values per compact embedding (at most {MAX_DIM})")
    args = parser.parse_args(argv)
    if args.signing_key is None:
        print(development_key_warning(), file=sys.stderr)
    try:
        spec = add_projection(args.bundle, args.data, args.signing_key, args.dim)
    except (BundleError, FileNotFoundError, ValueError) as exc:
        print(f"projection failed: {exc}", file=sys.stderr)
        return 2
    print(f"{args.bundle}: {spec.dim}-value projection fitted on {spec.fitted_on['images']} crops of {FIT_SET} "
          f"({spec.explained_variance:.1%} of their variance), {len(spec.labels)} wire labels; signed again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

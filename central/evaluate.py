"""Offline evaluation: leave-one-out rank-1 / top-5 of the proposals, with and without re-ranking.

``trapedge central evaluate --bundle bundles/default [--data ../shared/data]`` enrols the SpotID
leopard crops and the held-out lion individuals (``reid/lion/val``) through the bundle's
embedder. Each image in turn is the anchor; every other image is the gallery, linked into its
true individual. The proposals are the top-5 individuals by cosine (best image each), and, with
re-ranking, the top ``--depth`` individuals re-ordered by SIFT + RANSAC inliers between the
anchor's crop and each individual's best image (``central.rerank.rerank_order``: only
candidates with at least ``MIN_INLIERS`` move). Images whose individual has no other image
have no right answer and are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from central.enroll import embed_paths, folder_images, jpeg_of, open_embedder
from central.gallery import NumpyGallery
from central.matching import rank_individuals
from central.rerank import features_of, inliers, rerank_order

SETS = {"leopard_spotid": "reid/leopard_spotid/crops", "lion_val": "reid/lion/val"}


@dataclass(frozen=True)
class Scores:
    """Leave-one-out figures of one image set."""

    name: str
    images: int
    anchors: int
    individuals: int
    rank1: float
    top5: float
    rank1_rerank: float
    top5_rerank: float


def proposals(vectors: np.ndarray, labels: list[str], anchor: int, k: int) -> list[tuple[str, int]]:
    """(individual, best image index) of the top-k individuals for one held-out anchor."""
    gallery = NumpyGallery(vectors.shape[1])
    others = [i for i in range(len(labels)) if i != anchor]
    gallery.add([str(i) for i in others], vectors[others])
    hits = gallery.search(vectors[anchor], len(others))
    ranked = rank_individuals(hits, lambda sid: labels[int(sid)], set(), k)
    return [(individual, int(hit.id)) for individual, hit in ranked]


def evaluate_set(name: str, root: Path, embedder, depth: int = 10) -> Scores:
    """Rank-1 and top-5 of one folder-per-individual image set."""
    images = folder_images(root)
    labels = [i.individual for i in images]
    vectors = embed_paths(embedder, [i.path for i in images])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    features = [features_of(jpeg_of(i.path)) for i in images]
    anchors = [a for a in range(len(labels)) if labels.count(labels[a]) > 1]
    plain, reranked = [], []
    for a in anchors:
        ranked = proposals(vectors, labels, a, max(depth, 5))
        plain.append([ind == labels[a] for ind, _ in ranked[:5]])
        counts = [inliers(features[a], features[best]) for _, best in ranked]
        order = rerank_order(counts)
        reranked.append([ranked[i][0] == labels[a] for i in order[:5]])
    return Scores(name, len(images), len(anchors), len(set(labels)),
                  *_rates(plain), *_rates(reranked))


def _rates(hits: list[list[bool]]) -> tuple[float, float]:
    return (round(float(np.mean([h[0] for h in hits])), 4), round(float(np.mean([any(h) for h in hits])), 4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trapedge central evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--depth", type=int, default=10, help="individuals the re-ranking re-orders")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    missing = [p for p in SETS.values() if not (args.data / p).is_dir()]
    if missing:
        print(f"central.evaluate: not found under {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 2
    embedder, model = open_embedder(args.bundle)
    results = [evaluate_set(name, args.data / path, embedder, args.depth) for name, path in SETS.items()]
    print(f"embedder {model}; leave-one-out, top-5 individuals, re-ranking depth {args.depth}")
    print(f"{'set':16} {'images':>6} {'anchors':>7} {'ids':>4} {'rank1':>6} {'top5':>6} {'rank1+rr':>8} {'top5+rr':>7}")
    for s in results:
        print(f"{s.name:16} {s.images:6d} {s.anchors:7d} {s.individuals:4d} {s.rank1:6.3f} {s.top5:6.3f} "
              f"{s.rank1_rerank:8.3f} {s.top5_rerank:7.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "depth": args.depth,
                                         "sets": [asdict(s) for s in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

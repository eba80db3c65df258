"""Offline evaluation of the proposals on folder-per-individual sets, through matching's own core.

``trapedge central evaluate [DIR ...] --bundle bundles/default`` (default sets: the SpotID leopard crops
and the held-out lions, ``reid/lion/val``, under ``--data``). Every image in turn is the anchor and
every other the gallery, linked into its true individual; images of the other known flank are never
compared (``central.sides``). The proposal is ``central.fusion.fuse``, the function the matcher runs,
once with the cosine alone and once with local matching of the shortlist. Figures:

* rank-1, top-5: the true individual first / among the top 5, over anchors that have one in the gallery;
* mAP: mean average precision of the gallery images ranked by P(same) (images outside what the
  proposal scored follow, by cosine);
* open set: each anchor is asked twice, with its individual in the gallery and with it taken out
  (leave-one-individual-out), so half the questions have 'new individual' as the answer (and so do
  anchors whose individual has no other comparable image); precision and recall of the policy's
  'new individual' (best P(same) below ``--new-below``);
* ms per query: the proposal's time with local features already cached, as the service has them.

``--compact`` adds each set once more as compact embeddings (``central/compact.py``: projected by the
bundle's projection, int8, as a 222-byte record carries them) and prints what that costs in rank-1
and top-5 against the full vectors.

``--fit-prior DIR`` instead fits the prior fusion curves on DIR's shortlist pairs and prints them.

``--sweep-new DIR`` prints the open-set precision, recall and F1 of every threshold from 0.05 to 0.95
on DIR, and the one with the best F1: the way ``matching.new_individual_below`` is chosen, on a set
that is not reported (the shipped value came from ``reid/lion/train``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from central.calibration import fit
from central.config import MatchingConfig
from central.enroll import embed_images, folder_images, jpeg_of, open_embedder
from central.fusion import NEW_BELOW, PRIOR, SHORTLIST, Fused, FusionModel, fuse
from central.gallery import Hit
from central.local_features import extract, inliers
from central.sides import comparable, side_of_name
from common.progress import progress

SETS = {"leopard_spotid": "reid/leopard_spotid/crops", "lion_val": "reid/lion/val"}


@dataclass(frozen=True)
class Figures:
    """One set under one way of matching."""

    name: str
    local: bool
    images: int
    individuals: int
    anchors: int
    rank1: float
    top5: float
    mAP: float
    new_precision: float
    new_recall: float
    ms_per_query: float
    # (threshold, precision, recall, F1) of the 'new individual' policy at each of SWEEP_THRESHOLDS
    new_sweep: tuple[tuple[float, float, float, float], ...] = ()


SWEEP_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def open_set_figures(best: np.ndarray, new: np.ndarray, below: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of proposing 'new individual' when the best candidate's P(same) (``best``;
    0 without a candidate) is below ``below``, against the truth ``new``."""
    said = best < below
    hits = float((said & new).sum())
    precision, recall = hits / max(int(said.sum()), 1), hits / max(int(new.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass
class LabelledSet:
    """A folder-per-individual set, embedded and with local features."""

    name: str
    labels: list[str]
    sides: list[str | None]
    vectors: np.ndarray
    features: list

    def __post_init__(self):
        self._inliers: dict[tuple[int, int], int] = {}

    def inliers(self, a: int, b: int) -> int:
        if (a, b) not in self._inliers:
            self._inliers[(a, b)] = inliers(self.features[a], self.features[b])
        return self._inliers[(a, b)]


class SetError(ValueError):
    """A folder that cannot be evaluated as a folder-per-individual set; says why and what to give instead."""


def load_set(name: str, root: Path, embedder) -> LabelledSet:
    """Embed a folder-per-individual set and extract its local features (images that do not decode are left
    out, each named on stderr).

    Raises:
        FileNotFoundError: ``root`` holds no images in ``<individual>/`` folders.
        SetError: no individual with two readable images, so no anchor has an answer.
    """
    found = folder_images(root)
    images, vectors = embed_images(embedder, found, desc=f"embed {name}")
    counts = Counter(image.individual for image in images)
    if max(counts.values(), default=0) < 2:
        raise SetError(f"{root}: no individual has two readable images ({len(images)} of {len(found)} images read, "
                       f"{len(counts)} individuals): give a folder holding one folder of images per individual")
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    features = [extract(jpeg_of(i.path)) for i in progress(images, desc=f"keypoints {name}", unit="image")]
    return LabelledSet(name, [i.individual for i in images], [side_of_name(i.path.relative_to(root).as_posix())
                                                              for i in images], vectors, features)


def compact_set(data: LabelledSet, bundle: Path) -> LabelledSet:
    """The same set with the vectors a compact record of ``bundle`` would carry (named ``<name>/compact``)."""
    from central.compact import compact_vectors

    vectors, _ = compact_vectors(bundle, data.vectors)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return dataclasses.replace(data, name=f"{data.name}/compact", vectors=vectors)


def query(data: LabelledSet, anchor: int, model: FusionModel, local: bool, without: str | None = None,
          shortlist: int = SHORTLIST, budget_s: float = 1.0) -> tuple[Fused, list[int]]:
    """The fused proposal for one anchor (``without``: that individual left out of the gallery)."""
    others = [j for j in range(len(data.labels)) if j != anchor and data.labels[j] != without
              and comparable(data.sides[anchor], data.sides[j])]
    cosines = data.vectors[others] @ data.vectors[anchor]
    order = np.argsort(-cosines, kind="stable")
    hits = [Hit(str(others[i]), float(cosines[i])) for i in order]
    matcher = (lambda image: data.inliers(anchor, int(image))) if local else None
    return fuse(hits, lambda image: data.labels[int(image)], model, matcher, shortlist, budget_s), others


def average_precision(fused: Fused, anchor: int, others: list[int], data: LabelledSet) -> float:
    """AP of the gallery images ranked by P(same), then the unscored ones by cosine."""
    truth = data.labels[anchor]
    scored = sorted(fused.evidence, key=lambda e: (-e.probability, -e.cosine))
    ranked = [int(e.image_id) for e in scored]
    seen = set(ranked)
    rest = [j for j in others if j not in seen]
    ranked += sorted(rest, key=lambda j: -float(data.vectors[j] @ data.vectors[anchor]))
    relevant = np.array([data.labels[j] == truth for j in ranked], np.float64)
    if relevant.sum() == 0:
        return 0.0
    precision = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
    return float((precision * relevant).sum() / relevant.sum())


def evaluate(data: LabelledSet, local: bool, model: FusionModel = PRIOR, shortlist: int = SHORTLIST,
             budget_s: float = 1.0, new_below: float = NEW_BELOW) -> Figures:
    """Closed-set and open-set figures of one set (see the module docstring)."""
    ranks, aps, seconds, best, new_true = [], [], [], [], []
    anchors = progress(list(enumerate(data.labels)), desc=f"evaluate {data.name}, {'fused' if local else 'cosine'}",
                       unit="anchor")
    for a, truth in anchors:
        start = time.perf_counter()
        fused, others = query(data, a, model, local, None, shortlist, budget_s)
        seconds.append(time.perf_counter() - start)
        known = any(data.labels[j] == truth for j in others)
        if known:
            order = [s.individual for s in fused.individuals]
            ranks.append(order.index(truth) if truth in order else len(order))
            aps.append(average_precision(fused, a, others, data))
        best.append(best_probability(fused))
        new_true.append(not known)
        if known:  # the same anchor with its individual left out: the answer is 'new individual'
            alone, _ = query(data, a, model, local, truth, shortlist, budget_s)
            best.append(best_probability(alone))
            new_true.append(True)
    ranks_, best_, true = np.array(ranks), np.array(best), np.array(new_true)
    precision, recall, _ = open_set_figures(best_, true, new_below)
    sweep = tuple((t, *(_round(v) for v in open_set_figures(best_, true, t))) for t in SWEEP_THRESHOLDS)
    return Figures(data.name, local, len(data.labels), len(set(data.labels)), len(ranks),
                   _round(np.mean(ranks_ == 0)), _round(np.mean(ranks_ < 5)), _round(np.mean(aps)),
                   _round(precision), _round(recall), round(1000 * float(np.mean(seconds)), 1), sweep)


def best_probability(fused: Fused) -> float:
    """The best candidate's P(same), 0 without any: the policy (``fusion.propose_new``) says 'new individual'
    when it is below the threshold."""
    return fused.individuals[0].probability if fused.individuals else 0.0


def _round(value) -> float:
    return round(float(value), 3)


def fit_prior(data: LabelledSet, shortlist: int = SHORTLIST) -> FusionModel:
    """Both fusion curves fitted on every (anchor, shortlisted image) pair of leave-one-out over ``data``."""
    z, counts, same = [], [], []
    for a, truth in enumerate(data.labels):
        fused, _ = query(data, a, PRIOR, True, None, shortlist, budget_s=float("inf"))
        for e in fused.evidence[: fused.shortlisted]:
            z.append(e.z)
            counts.append(e.inliers)
            same.append(e.individual == truth)
    z_, same_ = np.array(z), np.array(same, np.float64)
    fused_w = fit(np.stack([z_, np.log1p(counts)], axis=1), same_)
    cosine_w = fit(z_[:, None], same_)
    print(f"{len(same)} pairs, {int(same_.sum())} same individual")
    return FusionModel(tuple(round(float(w), 3) for w in fused_w), tuple(round(float(w), 3) for w in cosine_w))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trapedge central evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="*", help="folder-per-individual sets (default: leopards, lion val)")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--shortlist", type=int, default=SHORTLIST, help="images matched locally per anchor")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of local matching per anchor")
    parser.add_argument("--new-below", type=float, default=NEW_BELOW, help="'new individual' below this best P(same)")
    parser.add_argument("--fit-prior", action="store_true", help="fit and print the prior curves on the folders")
    parser.add_argument("--compact", action="store_true", help="also measure the compact embeddings of the bundle")
    parser.add_argument("--sweep-new", action="store_true",
                        help="print the open-set precision / recall / F1 of each threshold (choose --new-below on a "
                             "set you do not report)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    _check_matching_options(parser, args)
    folders = {p.name: p for p in args.folders} or {name: args.data / path for name, path in SETS.items()}
    missing = [str(p) for p in folders.values() if not p.is_dir()]
    if missing:
        print(f"central.evaluate: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    from edge.runtime.bundle import BundleError

    try:
        embedder, model = open_embedder(args.bundle)
        sets = [load_set(name, path, embedder) for name, path in folders.items()]
    except (BundleError, SetError, FileNotFoundError) as exc:
        print(f"central.evaluate: {exc}", file=sys.stderr)
        return 2
    if args.compact:
        sets += [compact_set(data, args.bundle) for data in sets]
    if args.fit_prior:
        for data in sets:
            print(data.name, fit_prior(data, args.shortlist))
        return 0
    results = [evaluate(data, local, PRIOR, args.shortlist, args.budget, args.new_below)
               for data in sets for local in (False, True)]
    print_table(model, args, results)
    if args.sweep_new:
        print_sweep(results)
    if args.compact:
        print_compact_cost(results)
    if args.json:
        args.json.write_text(json.dumps({"model": model, "shortlist": args.shortlist, "new_below": args.new_below,
                                         "sets": [asdict(r) for r in results]}, indent=2))
    return 0


# each matching option and the central.yaml key whose bounds it keeps
_MATCHING_OPTIONS = {"shortlist": "--shortlist", "time_budget_s": "--budget", "new_individual_below": "--new-below"}


def _check_matching_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line, a shortlist, budget or threshold the service's ``matching:`` config would refuse (a
    negative shortlist or budget otherwise gave a table computed on nothing)."""
    try:
        MatchingConfig(shortlist=args.shortlist, time_budget_s=args.budget, new_individual_below=args.new_below)
    except ValidationError as exc:
        problem = exc.errors()[0]
        parser.error(f"{_MATCHING_OPTIONS[problem['loc'][0]]}: {problem['msg']}")


def print_table(model: str, args, results: list[Figures]) -> None:
    print(f"embedder {model}; leave-one-out; shortlist {args.shortlist}, budget {args.budget} s, "
          f"'new individual' below P(same) {args.new_below}")
    print(f"{'set':24} {'local':>5} {'images':>6} {'ids':>4} {'anchors':>7} {'rank1':>6} {'top5':>6} {'mAP':>6} "
          f"{'newP':>6} {'newR':>6} {'ms/q':>7}")
    for r in results:
        print(f"{r.name:24} {'yes' if r.local else 'no':>5} {r.images:6d} {r.individuals:4d} {r.anchors:7d} "
              f"{r.rank1:6.3f} {r.top5:6.3f} {r.mAP:6.3f} {r.new_precision:6.3f} {r.new_recall:6.3f} "
              f"{r.ms_per_query:7.1f}")


def print_sweep(results: list[Figures]) -> None:
    """Each set's open-set precision / recall / F1 per threshold, and the threshold of the best F1."""
    for r in results:
        best = max(r.new_sweep, key=lambda row: (row[3], -abs(row[0] - 0.5)))
        print(f"\n'new individual' below P(same), {r.name}, {'fused' if r.local else 'cosine'}: "
              f"best F1 {best[3]:.3f} at {best[0]:.2f}")
        print("  ".join(f"{t:.2f}: P {p:.2f} R {rec:.2f} F1 {f1:.2f}" for t, p, rec, f1 in r.new_sweep[1::2]))


def print_compact_cost(results: list[Figures]) -> None:
    """Compact rank-1 and top-5 as a share of the full vectors' (same set, same matching)."""
    full = {(r.name, r.local): r for r in results}
    for r in results:
        base = full.get((r.name.removesuffix("/compact"), r.local))
        if base is None or base is r:
            continue
        ratio = {k: getattr(r, k) / getattr(base, k) if getattr(base, k) else float("nan") for k in ("rank1", "top5")}
        print(f"compact/full {base.name:16} local {'yes' if r.local else 'no':>3}: rank-1 {r.rank1:.3f}/{base.rank1:.3f} "
              f"({ratio['rank1']:.0%}), top-5 {r.top5:.3f}/{base.top5:.3f} ({ratio['top5']:.0%})")


if __name__ == "__main__":
    raise SystemExit(main())

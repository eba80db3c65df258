"""Cross-architecture parity: the same bundle on the same real frames on two machines (``make arm64-check``).

``python -m edge.cli.parity dump DATA --bundle B --out F.json`` runs the service's own analyzer
(``edge.app.factory.build_analyzer``, configured as ``detect`` and ``bench`` are, INT8, one thread, the
motion gate off) on ``FRAMES`` under the data root and writes each frame's boxes (xyxy, detector class,
score), each box's final label and the embedder's vector for every box's crop (not only the boxes the
privacy rule lets the service embed, so that every crop is compared), with install facts.
``python -m edge.cli.parity compare X86.json ARM.json`` matches boxes per frame (IoU ≥ ``MATCH_IOU``),
prints recall both ways, label agreement on matched boxes and embedding cosine, and exits 1 with one
line per tolerance that does not hold.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config_loader import ConfigError, ConfigProblem
from edge.analysis.analyzer import Analyzer, FrameFailure
from edge.app.factory import build_analyzer
from edge.capture.decode import DEFAULT_MAX_SIDE, read_frame
from edge.capture.frame import Frame
from edge.cli.options import add_model_arguments, command_config, fail
from edge.runtime.backends import BackendUnavailable
from edge.runtime.bundle import BundleError, BundleTrust, load_bundle

MATCH_IOU = 0.5  # a box of one machine is the other's when they overlap this much
MIN_BOX_RECALL = 0.98  # share of either machine's boxes the other finds
MIN_LABEL_AGREEMENT = 0.98  # matched boxes with the same final label
MIN_EMBEDDING_COSINE_P5 = 0.99  # 5th percentile of the matched crops' embedding cosine

# real frames, relative to the data root: night IR, several animals, people and a vehicle, large and tiny frames
FRAMES = (
    "frames/ena24_small/4451.jpg",  # the largest frame (2592×1944)
    "frames/ena24_small/2480.jpg",  # 1920×1080, an opossum at the edge
    "frames/animl_samples/sample-img-skunk-large.jpg",
    "frames/animl_samples/sample-img-empty.jpg",  # 2560×1440 empty
    "frames/animl_samples/sample-img-fox.jpg",  # 300×225
    "frames/autofocus_gallery/raccoons.jpeg",  # several animals
    "frames/autofocus_gallery/buck.jpeg",
    "boxes/wbia_voc/JPEGImages/2014_000002.jpg",  # five elephants
    "boxes/wbia_voc/JPEGImages/2014_000005.jpg",  # four wild dogs
    "boxes/wbia_voc/JPEGImages/2014_000006.jpg",  # two zebras
    "boxes/missouri_camtraps/images/Mouflon/SEQ77316_IMG_0005.JPG",  # eight mouflon
    "boxes/missouri_camtraps/images/Wild_Boar/SEQ76394_IMG_0007.JPG",  # five boar at night (IR)
    "boxes/missouri_camtraps/images/White-nosed_Coati/SEQ75595_IMG_0001.JPG",  # five coatis
    "boxes/missouri_camtraps/images/Ocelot/SEQ75294_IMG_0001.JPG",  # night (IR)
    "boxes/missouri_camtraps/images/Red_Fox/SEQ75179_IMG_0001.JPG",  # night (IR)
    "boxes/missouri_camtraps/images/Common_Opossum/SEQ75104_IMG_0001.JPG",  # night (IR)
    "boxes/missouri_camtraps/images/Wood_Mouse/SEQ77497_IMG_0001.JPG",  # night (IR), a small animal
    "species/mlwic_ca01/images/CA-01_0006503.jpg",  # Human (info bars)
    "species/mlwic_ca01/images/CA-01_0006505.jpg",  # Human
    "species/mlwic_ca01/images/CA-01_0006502.jpg",  # Vehicle
)


@dataclass(frozen=True)
class FrameResult:
    """One frame's boxes as one machine saw them (``failure`` set when it gave no analysis)."""

    file: str
    xyxy: np.ndarray  # (N, 4) pixels
    labels: tuple[str, ...]  # (N,) each box's final label
    embeddings: np.ndarray  # (N, D)
    failure: str | None = None

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if np.shape(self.xyxy) != (n, 4) or len(self.labels) != n or len(self.embeddings) != n:
            raise ValueError(f"{self.file}: {np.shape(self.xyxy)} boxes, {len(self.labels)} labels, "
                             f"{len(self.embeddings)} embeddings")

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> FrameResult:
        """A frame of a ``dump`` file."""
        boxes = item.get("boxes", [])
        return cls(item["file"], np.array([b["xyxy"] for b in boxes], np.float64).reshape(-1, 4),
                   tuple(b["label"] for b in boxes), np.array([b["embedding"] for b in boxes], np.float64),
                   item.get("failure"))


@dataclass(frozen=True)
class Parity:
    """What two machines agree on over the same frames (``reference`` is x86, ``candidate`` arm64)."""

    frames: int
    one_sided_failures: tuple[str, ...]  # frames that gave no analysis on one machine only
    reference_boxes: int
    candidate_boxes: int
    ious: np.ndarray  # (M,) of the matched pairs
    labels_equal: np.ndarray  # (M,) bool
    cosines: np.ndarray  # (M,)

    @property
    def candidate_recall(self) -> float:
        """Share of the reference's boxes the candidate found (1.0 when there were none)."""
        return len(self.ious) / self.reference_boxes if self.reference_boxes else 1.0

    @property
    def reference_recall(self) -> float:
        """Share of the candidate's boxes the reference found."""
        return len(self.ious) / self.candidate_boxes if self.candidate_boxes else 1.0

    @property
    def label_agreement(self) -> float:
        """Share of matched boxes with the same final label (nan with none matched)."""
        return float(np.mean(self.labels_equal)) if len(self.labels_equal) else float("nan")

    def cosine(self, statistic: str) -> float:
        """``min``, ``p5`` or ``mean`` of the matched crops' embedding cosine (nan with none matched)."""
        if not len(self.cosines):
            return float("nan")
        if statistic == "min":
            return float(np.min(self.cosines))
        if statistic == "p5":
            return float(np.percentile(self.cosines, 5))
        if statistic == "mean":
            return float(np.mean(self.cosines))
        raise ValueError(f"unknown statistic {statistic!r}: min, p5 or mean")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(a: np.ndarray, b: np.ndarray, min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(i, j, iou)`` of ``a`` and ``b`` boxes, highest IoU first, each at least ``min_iou``."""
    ious = iou_matrix(a, b)
    pairs = sorted(((float(ious[i, j]), i, j) for i, j in zip(*np.nonzero(ious >= min_iou))), reverse=True)
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for iou, i, j in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((int(i), int(j), iou))
    return matches


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine similarity of two vectors (1.0 for two zero vectors, 0.0 for one)."""
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0 or nv == 0:
        return 1.0 if nu == nv else 0.0
    return float(np.dot(u, v) / (nu * nv))


def parity(reference: list[FrameResult], candidate: list[FrameResult]) -> Parity:
    """Boxes of the same frames matched per frame; a frame that failed on either machine adds no boxes.

    Raises:
        ValueError: the two runs are not of the same frames in the same order.
    """
    if [f.file for f in reference] != [f.file for f in candidate]:
        raise ValueError("the two runs are not of the same frames")
    ious, equal, cosines, one_sided = [], [], [], []
    n_ref = n_cand = 0
    for ref, cand in zip(reference, candidate):
        if (ref.failure is None) != (cand.failure is None):
            one_sided.append(ref.file)
        if ref.failure is not None or cand.failure is not None:
            continue
        n_ref, n_cand = n_ref + len(ref.xyxy), n_cand + len(cand.xyxy)
        for i, j, iou in match_boxes(ref.xyxy, cand.xyxy):
            ious.append(iou)
            equal.append(ref.labels[i] == cand.labels[j])
            cosines.append(cosine(ref.embeddings[i], cand.embeddings[j]))
    return Parity(len(reference), tuple(one_sided), n_ref, n_cand, np.array(ious), np.array(equal, bool),
                  np.array(cosines))


def failed_tolerances(result: Parity, names: tuple[str, str] = ("x86_64", "aarch64")) -> list[str]:
    """One line per tolerance ``result`` does not meet (empty when it meets them all)."""
    ref, cand = names
    checks = [
        (result.candidate_recall, MIN_BOX_RECALL, f"box recall of {ref}'s boxes on {cand}"),
        (result.reference_recall, MIN_BOX_RECALL, f"box recall of {cand}'s boxes on {ref}"),
    ]
    if len(result.ious):
        checks += [(result.label_agreement, MIN_LABEL_AGREEMENT, "label agreement on matched boxes"),
                   (result.cosine("p5"), MIN_EMBEDDING_COSINE_P5, "embedding cosine p5 over matched crops")]
    lines = [f"{what}: {value:.4f} < {limit}" for value, limit, what in checks if value < limit]
    if not len(result.ious):
        lines.append("no box found on both machines: labels and embeddings were not compared")
    lines += [f"{file}: analysed on one machine only" for file in result.one_sided_failures]
    return lines


EDGE_DISTRIBUTIONS = ("onnxruntime", "numpy", "opencv-python-headless", "pillow", "pydantic", "pynacl", "paho-mqtt")
IMPORT_PROBE = ("import sys, time; t = time.perf_counter(); import edge.app.factory, edge.runtime.backends.onnxruntime; "
                "print(time.perf_counter() - t, len(sys.modules))")


def cpu_name() -> str:
    """The CPU as ``/proc/cpuinfo`` names it: x86's model name, or arm's implementer and part number."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        return ""
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if "model name" in fields:
        return fields["model name"]
    return f"implementer {fields.get('CPU implementer', '?')} part {fields.get('CPU part', '?')}"


def install_facts(emulated: str | None) -> dict[str, Any]:
    """Machine, package versions and what importing the pipeline costs (in a fresh interpreter);
    ``emulated`` names the CPU qemu emulates, None on real hardware."""
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    seconds, modules = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                                      check=True).stdout.split()
    return {"machine": platform.machine(), "cpu": cpu_name(), "emulated": emulated, "python": platform.python_version(),
            "versions": {name: installed(name) for name in EDGE_DISTRIBUTIONS},
            "providers": onnxruntime.get_available_providers(),
            "import_seconds": round(float(seconds), 3), "modules_imported": int(modules),
            "torch_installed": importlib.util.find_spec("torch") is not None, "torch_imported": "torch" in sys.modules}


def frame_record(analyzer: Analyzer, frame: Frame) -> dict[str, Any]:
    """One frame of a ``dump`` file: its boxes, their labels and every crop's embedding, or its failure."""
    result = analyzer.process(frame)
    if isinstance(result, FrameFailure):
        return {"file": frame.key, "failure": result.reason}
    det, embedder = result.detections, analyzer.embedder
    assert embedder is not None  # checked when the analyzer was built
    vectors = embedder.run_crops(embedder.crops_of(result.rgb, det)) if len(det) else np.zeros((0, embedder.output_dim))
    classes = analyzer.detector.labels
    boxes = [{"xyxy": [round(float(v), 3) for v in det.xyxy[k]], "class": classes[int(det.class_id[k])],
              "score": round(float(det.confidence[k]), 5), "label": label, "embedded": bool(det.data["embedded"][k]),
              "embedding": [round(float(v), 6) for v in vectors[k]]} for k, label in enumerate(det.labels())]
    return {"file": frame.key, "pixels_sha256": hashlib.sha256(result.rgb.tobytes()).hexdigest(), "boxes": boxes}


def dump(args: argparse.Namespace) -> dict[str, Any]:
    """The ``dump`` document of this machine: install facts and every frame of ``FRAMES``."""
    missing = [rel for rel in FRAMES if not (args.data / rel).is_file()]
    if missing:  # the set is fixed: a frame short on one machine would go unnoticed in the comparison
        raise FileNotFoundError(f"{len(missing)} of the parity frames are not under {args.data}: {', '.join(missing)}")
    if args.threads is None:
        args.threads = 1  # one intra-op thread: the same reduction order on every machine
    config = command_config(args, args.data, gate={"enabled": False})
    # as the appliance loads it: its signature checked (each machine's own Ed25519 code), here against the
    # --trusted-key given, else the config's bundle.trusted_keys
    trust = BundleTrust(tuple(args.trusted_key)) if args.trusted_key else config.bundle.trust
    bundle = load_bundle(config.bundle.path, trust)
    analyzer = build_analyzer(config, bundle)
    if analyzer.embedder is None:
        raise ConfigError(args.config or "command options",
                          [ConfigProblem(None, "detection.embed", "parity compares embeddings: leave it on")])
    frames = [frame_record(analyzer, read_frame(args.data / rel, "parity", rel, DEFAULT_MAX_SIDE)) for rel in FRAMES]
    return {"facts": {**install_facts(args.emulated), "bundle_version": bundle.manifest.version,
                      "signed_by": bundle.signer, "precision": config.bundle.precision, "threads": args.threads},
            "frames": frames}


def machine_name(facts: dict[str, Any]) -> str:
    """``x86_64``, or ``aarch64 (cortex-a72 under qemu)``."""
    return f"{facts['machine']} ({facts['emulated']} under qemu)" if facts.get("emulated") else facts["machine"]


def _facts_line(facts: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {v}" for name, v in facts["versions"].items() if v)
    return f"{machine_name(facts)}: {facts.get('cpu', '')}; Python {facts['python']}, {versions}"


def _import_line(facts: dict[str, Any]) -> str:
    note = " (emulated: the time means nothing)" if facts["emulated"] else ""
    torch = "torch installed" if facts["torch_installed"] else "no torch"
    return f"{machine_name(facts)}: {facts['modules_imported']} modules, {facts['import_seconds']:.2f} s{note}; {torch}"


def report(result: Parity, reference: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """The table ``compare`` prints (``reference`` and ``candidate`` are the two ``dump`` documents)."""
    ref, cand = reference["facts"], candidate["facts"]
    ref_name, cand_name = machine_name(ref), machine_name(cand)
    same = sum("pixels_sha256" in a and a["pixels_sha256"] == b.get("pixels_sha256")
               for a, b in zip(reference["frames"], candidate["frames"]))
    ious = f"min {result.ious.min():.3f}, mean {result.ious.mean():.3f}" if len(result.ious) else "none"
    rows = [
        ("bundle", f"{ref['bundle_version']} {ref['precision']}, threads {ref['threads']} / {cand['threads']}"),
        ("signature", f"checked on {ref_name} (key {ref.get('signed_by') or 'none: unsigned'}) and on {cand_name} "
                      f"(key {cand.get('signed_by') or 'none: unsigned'})"),
        ("frames", f"{result.frames} ({len(result.one_sided_failures)} analysed on one machine only; "
                   f"decoded pixels identical on {same})"),
        ("boxes", f"{ref_name} {result.reference_boxes}, {cand_name} {result.candidate_boxes}, "
                  f"matched {len(result.ious)} (IoU >= {MATCH_IOU}; matched IoU {ious})"),
        ("box recall", f"{ref_name}'s boxes found on {cand_name} {result.candidate_recall:.4f}, "
                       f"the other way {result.reference_recall:.4f} (>= {MIN_BOX_RECALL})"),
        ("label agreement", f"{result.label_agreement:.4f} over {len(result.labels_equal)} matched boxes "
                            f"(>= {MIN_LABEL_AGREEMENT})"),
        ("embedding cosine", f"min {result.cosine('min'):.5f}, p5 {result.cosine('p5'):.5f}, "
                             f"mean {result.cosine('mean'):.5f} over {len(result.cosines)} crops "
                             f"(p5 >= {MIN_EMBEDDING_COSINE_P5})"),
        ("versions", _facts_line(ref)),
        ("", _facts_line(cand)),
        ("import", _import_line(ref)),
        ("", _import_line(cand)),
    ]
    return [f"{name:<17} {text}" for name, text in rows]


def compare(args: argparse.Namespace) -> int:
    """Print the table and the failed tolerances; 1 when any failed."""
    documents = [json.loads(Path(path).read_text()) for path in (args.reference, args.candidate)]
    frames = [[FrameResult.from_json(item) for item in doc["frames"]] for doc in documents]
    result = parity(*frames)
    names = (machine_name(documents[0]["facts"]), machine_name(documents[1]["facts"]))
    failed = failed_tolerances(result, names)
    signers = [doc["facts"].get("signed_by") for doc in documents]
    if signers[0] != signers[1]:
        failed.append(f"the bundle's signature checked with different keys: {signers[0] or 'none'} on {names[0]}, "
                      f"{signers[1] or 'none'} on {names[1]}")
    print("\n".join(report(result, *documents)))
    for line in failed:
        print(f"FAILED: {line}")
    if args.out is not None:
        summary = {"box_recall": [result.candidate_recall, result.reference_recall],
                   "label_agreement": result.label_agreement,
                   "embedding_cosine": {s: result.cosine(s) for s in ("min", "p5", "mean")},
                   "boxes": [result.reference_boxes, result.candidate_boxes], "matched": len(result.ious),
                   "failed": failed, "facts": [doc["facts"] for doc in documents]}
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dumping = commands.add_parser("dump", help="run the bundle on FRAMES and write boxes, labels and embeddings")
    dumping.add_argument("data", type=Path, help="the data root (../shared/data) that FRAMES are relative to")
    dumping.add_argument("--out", type=Path, required=True, help="JSON file to write")
    dumping.add_argument("--emulated", metavar="CPU", default=None, help="the CPU qemu emulates, when it does")
    dumping.add_argument("--trusted-key", action="append", default=[], metavar="KEY",
                         help="check the bundle's signature against this key (base64 or a .pub file; repeatable) "
                              "instead of bundle.trusted_keys")
    add_model_arguments(dumping)
    comparing = commands.add_parser("compare", help="compare two dumps against the tolerances")
    comparing.add_argument("reference", type=Path, help="the x86 dump")
    comparing.add_argument("candidate", type=Path, help="the arm64 dump")
    comparing.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args)
    try:
        document = dump(args)
    except (ConfigError, BundleError, BackendUnavailable, FileNotFoundError) as exc:
        return fail("parity", exc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document) + "\n")
    frames = document["frames"]
    print(f"{len(frames)} frames, {sum(len(f.get('boxes', [])) for f in frames)} boxes, "
          f"{sum('failure' in f for f in frames)} failed -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build a model bundle: export, quantize, gate, then move it into place in one rename.

A bundle whose gates fail is never written: work happens in a hidden sibling directory that
is removed on any error. The finished manifest is signed (``manifest.sig``, export/signing.py)
before the bundle moves into place.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from common.hashing import sha256_file
from common.progress import progress
from common.signing import encode_public, public_key_of
from edge.analysis.analyzer import label_space
from edge.analysis.config import DetectionConfig
from edge.capture.decode import DEFAULT_MAX_SIDE, decode_image
from edge.runtime.backends import input_dtype
from edge.runtime.bundle import BundleTrust, load_bundle
from edge.runtime.detections import Detections
from edge.runtime.manifest import MANIFEST_NAME, FileEntry, InputSpec, Manifest, ModelSpec
from edge.runtime.models import Classifier, Detector, Embedder
from edge.runtime.preprocess import letterbox, resize_whole, takes_pixels, to_tensor
from edge.runtime.yolox import make_grid, postprocess
from export import gates
from export.calibration import ExportImages, calibration_samples, default_images
from export.onnx_export import OPSET, export_onnx, torch_vs_onnx
from export.quantize import EFFICIENTNET_FRONT, quantize_int8
from export.signing import development_key, load_private_key, sign_bundle
from train.models.classifier import CROP_INPUT, SharedCropModel, shares_backbone
from train.models.yolox import DEFAULT_SIZE, DETECTION_THRESHOLD, NATIVE_SIZE, NMS_IOU, detector_input

# per-task calibration: min-max keeps the detector's recall; 99.999th percentile ranges work
# better for EfficientNet-Lite's long-tailed activations
OUTPUT_TASK = {"raw": "detector", "probs": "classifier", "embedding": "embedder"}
DEFAULT_CALIBRATION = {"detector": "minmax", "classifier": "percentile", "embedder": "percentile"}


@dataclass
class TorchModels:
    """The three torch models to export, with their labels."""

    detector: object
    classifier: object
    embedder: object
    detector_labels: list[str]
    species_labels: list[str]
    architectures: dict[str, str] = field(default_factory=dict)
    taxonomy: dict[str, list[str]] = field(default_factory=dict)  # species label → ancestors, nearest first
    detector_native_size: tuple[int, int] = NATIVE_SIZE  # what the detector was trained at: the gates' reference
    whole_frames: bool = False  # the classifier learnt whole frames: the edge adds the frame's vote to each crop's
    # the embedder learnt individuals (a metric loss): its compact projection is not whitened (see export.projection)
    embedder_learnt_identity: bool = False


@dataclass
class ExportOptions:
    """What to export and where."""

    out: Path
    data: Path
    name: str = "default"
    detector_threshold: float = DETECTION_THRESHOLD
    nms_iou: float = NMS_IOU
    detector_size: tuple[int, int] = DEFAULT_SIZE
    calibration: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CALIBRATION))
    images: ExportImages | None = None
    # held-out evaluation of the built bundle (its work folder) → figures per source, for the manifest
    # and the model card; None: none (the default bundle has no held-out data of its own)
    evaluate: Callable[[Path], dict[str, object]] | None = None
    # private key that signs the manifest; None: the checkout's development key (export/signing.py)
    signing_key: Path | None = None


def _frames(paths: list[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        yield decode_image(path, max_side=DEFAULT_MAX_SIDE).rgb


def _calibration(paths: list[Path], spec: InputSpec, desc: str) -> Iterator[np.ndarray]:
    return iter(progress(calibration_samples(paths, spec), total=len(paths), desc=desc, unit="image"))


def _file_entry(root: Path, name: str) -> FileEntry:
    path = root / name
    return FileEntry(path=name, sha256=sha256_file(path), bytes=path.stat().st_size)


def _versions() -> dict[str, str]:
    names = ["trapedge", "torch", "timm", "onnx", "onnxruntime", "numpy", "opencv-python-headless"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _latency_ms(model, inputs: np.ndarray, repeats: int = 10) -> float:
    """Median ms of one backend run on ``inputs``."""
    model.backend.run(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.backend.run(inputs)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


class BundleBuilder:
    """Writes the files of one bundle into a work directory and measures them."""

    def __init__(self, models: TorchModels, options: ExportOptions, work: Path):
        self.models, self.options, self.work = models, options, work
        self.images = options.images or default_images(options.data)
        self.parity: dict[str, dict[str, float]] = {"detector": {}, "classifier": {}, "embedder": {}}
        self.quantization: dict[str, dict[str, object]] = {}
        # the detector's ONNX takes any canvas size (dynamic_size below), so the edge fits the canvas to the frame:
        # a 16:9 frame on 384 x 640, a square one on 480 x 480, where the padding was computed and ignored before
        self.detector_input = detector_input(options.detector_size, fit=True)
        self.files: dict[str, tuple[str, list[str]]] = {}  # task -> (file stem, outputs of that file)
        self._checked: tuple | None = None  # the detectors' pass over the check frames (_check_frames)

    def graphs(self) -> list[tuple[str, torch.nn.Module, list[str]]]:
        """(file stem, module, outputs) of each ONNX file: one graph for classifier and embedder
        when they run the same backbone (the pretrained bundle), which halves the crop work."""
        m = self.models
        if shares_backbone(m.classifier, m.embedder):
            crops = [("crops", SharedCropModel(m.classifier, m.embedder).eval(), ["probs", "embedding"])]
        else:
            crops = [("classifier", m.classifier, ["probs"]), ("embedder", m.embedder, ["embedding"])]
        return [("detector", m.detector, ["raw"]), *crops]

    def export_all(self) -> None:
        """fp32 ONNX of each graph, checked against torch on real inputs, then INT8."""
        det_check = next(calibration_samples(self.images.check_frames[:1], self.detector_input))
        crop_check = np.concatenate(list(calibration_samples(self.images.check_crops[:8], CROP_INPUT)))
        for stem, module, outputs in self.graphs():
            example = det_check if stem == "detector" else crop_check
            fp32 = export_onnx(module, torch.from_numpy(example), self.work / f"{stem}.fp32.onnx", outputs,
                               dynamic_size=stem == "detector")
            tasks = [OUTPUT_TASK[name] for name in outputs]
            for task, (diff, scale) in zip(tasks, torch_vs_onnx(module, fp32, example), strict=True):
                self.parity[task].update(torch_onnx_max_abs=diff, torch_onnx_rel=diff / max(1.0, scale))
                self.files[task] = (stem, outputs)
            self.quantize(stem, tasks)

    def quantize(self, stem: str, tasks: list[str], extra_fp32: list[str] | None = None) -> None:
        """(Re)write ``<stem>.int8.onnx`` from its fp32 graph."""
        if stem == "detector":
            self._checked = None  # a new detector graph is checked afresh
        spec = self.detector_input if stem == "detector" else CROP_INPUT
        batches = _calibration(self.images.detector_calibration if stem == "detector" else self.images.crop_calibration,
                               spec, f"calibrate {stem}")
        done = quantize_int8(self.work / f"{stem}.fp32.onnx", self.work / f"{stem}.int8.onnx", stem, batches,
                             self.options.calibration[tasks[0]], extra_fp32, pixels=takes_pixels(spec))
        for task in tasks:
            self.quantization[task] = {**done, "graph": stem}

    def fall_back(self, gate_list: list[gates.Gate]) -> bool:
        """Re-quantize the crop graphs whose INT8 gate failed with EfficientNet's front in fp32.

        Returns:
            True when something was re-quantized (measure again).
        """
        failed = {g.name.split(".")[0] for g in gate_list if not g.passed and ".int8_" in g.name} - {"detector"}
        redo = {self.files[t][0] for t in failed if not self.quantization[t].get("fp32_extra")}
        for stem in sorted(redo):
            print(f"INT8 gate missed for {stem}: quantizing again with EfficientNet's stem and first block in fp32")
            self.quantize(stem, [t for t, (s, _) in self.files.items() if s == stem], EFFICIENTNET_FRONT)
        return bool(redo)

    def manifest(self) -> Manifest:
        """The manifest of what is in the work directory, with the figures measured so far."""
        opts, m = self.options, self.models

        def spec(task: str, result: str, **fields) -> ModelSpec:
            stem, outputs = self.files[task]
            files = {p: _file_entry(self.work, f"{stem}.{p}.onnx") for p in ("fp32", "int8")}
            return ModelSpec(task=task, files=files, opset=OPSET, parity=self.parity[task], outputs=outputs,
                             result=result if len(outputs) > 1 else None,
                             quantization=self.quantization.get(task, {}), **fields)

        return Manifest(
            name=opts.name,
            version=datetime.now(timezone.utc).strftime("%Y.%m.%d-%H%M%S"),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            models={
                "detector": spec("detector", "raw", architecture=m.architectures["detector"], input=self.detector_input,
                                 labels=m.detector_labels,
                                 thresholds={"confidence": opts.detector_threshold, "nms_iou": opts.nms_iou},
                                 decode={"kind": "yolox", "strides": [8, 16, 32]}),
                "classifier": spec("classifier", "probs", architecture=m.architectures["classifier"], input=CROP_INPUT,
                                   labels=m.species_labels, taxonomy=m.taxonomy, whole_frames=m.whole_frames,
                                   thresholds={"confidence": gates.CLASSIFIER_CONFIDENT}),
                "embedder": spec("embedder", "embedding", architecture=m.architectures["embedder"], input=CROP_INPUT,
                                 embedding_dim=int(m.embedder.dim)),
            },
            versions=_versions(),
            calibration=self.images.describe(self.options.data),
        )

    def write_manifest(self, gate_list: list[gates.Gate] | None = None) -> None:
        manifest = self.manifest()
        if gate_list is not None:
            manifest = manifest.model_copy(update={"gates": {g.name: {"value": g.value, "limit": g.limit,
                                                                      "passed": g.passed} for g in gate_list}})
        (self.work / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")

    def write_evaluation(self, evaluation: dict[str, object]) -> None:
        """Add the held-out figures to the manifest and write the model card beside it."""
        from export.model_card import model_card

        path = self.work / MANIFEST_NAME
        manifest = Manifest.model_validate_json(path.read_text()).model_copy(update={"evaluation": evaluation})
        path.write_text(manifest.model_dump_json(indent=2) + "\n")
        (self.work / "MODEL_CARD.md").write_text(model_card(manifest))

    def measure(self) -> list[gates.Gate]:
        """Run fp32 and INT8 through the edge runtime on the check images; return the gates."""
        bundle = load_bundle(self.work)
        det = {p: Detector(bundle, p) for p in ("fp32", "int8")}
        cls = {p: Classifier(bundle, p) for p in ("fp32", "int8")}
        emb = {p: Embedder(bundle, p) for p in ("fp32", "int8")}
        threshold = self.options.detector_threshold
        found, shapes, kept, crops = self._check_frames(bundle, det, cls["fp32"])
        recall, n_boxes = gates.recall_within_tolerance(found["fp32"], found["int8"], threshold)
        strict, _ = gates.recall_within_tolerance(found["fp32"], found["int8"], threshold, tolerance=0.0)
        box_iou = gates.mean_box_iou(found["fp32"], found["int8"], threshold)
        per_bucket = gates.recall_per_bucket(found["fp32"], found["int8"], shapes, self.models.detector_labels,
                                             threshold)
        # the bundle's input drops the native square's padding rows: the same boxes for frames at least as
        # wide as the input (4:3, 16:9), a smaller view of square and portrait ones (by design), so judged on the former
        wide = [k for k, (h, w) in enumerate(shapes) if w * self.detector_input.size[0] >= h * self.detector_input.size[1]]
        native_recall, n_native = gates.recall_within_tolerance([found["native"][k] for k in wide],
                                                                [found["fp32"][k] for k in wide], threshold)
        # the canvas fitted to each frame against the whole input size: the boxes of the one are the other's
        fit_recall, _ = gates.recall_within_tolerance(found["full"], found["fp32"], threshold)
        full_recall, _ = gates.recall_within_tolerance(found["fp32"], found["full"], threshold)
        probs = {p: cls[p].run_crops(crops) for p in cls}
        # the boxes fp32 makes people or vehicles, found by INT8 whatever the detector's class (a one-class
        # detector's people sit inside "animal"): the crops of the check frames' boxes are the last ones
        space = label_space(self.models.detector_labels, cls["fp32"].labels, self.models.taxonomy, DetectionConfig())
        ends = np.cumsum([len(k) for k in kept]) + len(crops) - sum(len(k) for k in kept)
        categories = [gates.edge_categories(k, probs["fp32"][end - len(k):end], space) for k, end in zip(kept, ends)]
        per_bucket.update(gates.recall_by_category(kept, categories, found["int8"], shapes, threshold))
        agreement, n_confident = gates.top1_agreement(probs["fp32"], probs["int8"])
        cosine = gates.mean_cosine(emb["fp32"].run_crops(crops), emb["int8"].run_crops(crops))
        self.parity["detector"].update(int8_recall_of_fp32=recall, int8_recall_of_fp32_strict=strict,
                                       int8_box_iou=box_iou, check_boxes=n_boxes,
                                       check_frames=len(found["fp32"]), fp32_recall_of_native=native_recall,
                                       native_boxes=n_native, fitted_recall_of_full_canvas=fit_recall,
                                       full_canvas_recall_of_fitted=full_recall)
        for key, (bucket_recall, n) in per_bucket.items():
            self.parity["detector"][f"int8_recall_of_fp32.{key}"] = bucket_recall
            self.parity["detector"][f"check_boxes.{key}"] = n
        self.parity["classifier"].update(int8_top1_agreement=agreement, confident_crops=n_confident, check_crops=len(crops))
        self.parity["embedder"].update(int8_mean_cosine=cosine, check_crops=len(crops))
        self._latency(det, cls, emb, crops)
        return [
            *(gates.Gate(f"{t}.torch_onnx_rel", self.parity[t]["torch_onnx_rel"], gates.TORCH_ONNX_MAX_REL, False)
              for t in self.parity),
            gates.Gate("detector.int8_recall_of_fp32", recall, gates.DETECTOR_RECALL_MIN),
            *gates.bucket_gates(per_bucket),
            gates.Gate("detector.int8_box_iou", box_iou, gates.DETECTOR_BOX_IOU_MIN),
            gates.Gate("detector.fp32_recall_of_native", native_recall, gates.DETECTOR_RECALL_MIN),
            gates.Gate("detector.fitted_recall_of_full_canvas", min(fit_recall, full_recall), gates.DETECTOR_RECALL_MIN),
            gates.Gate("classifier.int8_top1_agreement", agreement if n_confident else 0.0, gates.CLASSIFIER_AGREEMENT_MIN),
            gates.Gate("embedder.int8_mean_cosine", cosine, gates.EMBEDDER_COSINE_MIN),
        ]

    def _check_frames(self, bundle, det, cls) -> tuple[dict[str, list[Detections]], list, list[Detections], list]:
        """The detectors' boxes on the check frames (``found``: fp32, INT8, native), the frames' shapes,
        the fp32 boxes at the threshold (``kept``) and the crops the crop graphs are checked on (the
        check crops, then the crops of ``kept``). Measured once: a fall-back re-quantizes only the crop
        graphs (never the detector), so a second ``measure`` reuses them instead of running the
        detectors over every check frame again."""
        if self._checked is not None:
            print("check: the detector's figures of the first pass (its graphs did not change)")
            return self._checked
        threshold = self.options.detector_threshold
        # reference boxes at the threshold, candidates within the score tolerance below it (a box
        # at 0.26 in fp32 and 0.24 in INT8 is the same detection, not a miss); detectors run low
        found: dict[str, list[Detections]] = {"fp32": [], "int8": [], "native": [], "full": []}
        native = NativeDetector(self.models.detector, bundle.spec("detector"), self.models.detector_native_size)
        full = Detector(bundle, "fp32", full_canvas=True)
        crops = [resize_whole(rgb, CROP_INPUT) for rgb in _frames(self.images.check_crops)]
        check_frames, shapes, kept = self.images.check_frames, [], []
        for rgb in progress(_frames(check_frames), total=len(check_frames), desc="check", unit="image"):
            shapes.append(rgb.shape[:2])
            for p in ("fp32", "int8"):
                found[p].append(det[p].detect(rgb, threshold - gates.DETECTOR_SCORE_TOLERANCE))
            found["native"].append(native.detect(rgb, threshold))
            found["full"].append(full.detect(rgb, threshold - gates.DETECTOR_SCORE_TOLERANCE))
            fp32 = found["fp32"][-1]
            kept.append(fp32[fp32.confidence >= threshold])
            crops += cls.crops_of(rgb, kept[-1])
        self._checked = found, shapes, kept, crops
        return self._checked

    def _latency(self, det, cls, emb, crops) -> None:
        canvas = det["fp32"].preprocess(next(_frames(self.images.check_frames[:1])))[0]
        runs = (("detector", det, [canvas], self.detector_input), ("classifier", cls, crops[:1], CROP_INPUT),
                ("embedder", emb, crops[:1], CROP_INPUT))
        for task, models, images, spec in runs:
            for p, model in models.items():  # each input as its backend takes it (the INT8 detector: uint8 pixels)
                inputs = to_tensor(images, spec, input_dtype(model.backend))
                self.parity[task][f"{p}_ms"] = _latency_ms(model, inputs)


class NativeDetector:
    """The torch detector at the resolution it was trained at: the reference for a smaller input."""

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, size: tuple[int, int] = NATIVE_SIZE):
        self.module, self.spec, self.input = module.eval(), spec, detector_input(size)
        self.grid, self.strides = make_grid(size, list(spec.decode["strides"]))

    def detect(self, rgb: np.ndarray, threshold: float) -> Detections:
        canvas, box = letterbox(rgb, self.input.size, self.input.pad_value, self.input.pad_anchor, self.input.interpolation)
        with torch.inference_mode():
            raw = self.module(torch.from_numpy(to_tensor([canvas], self.input))).numpy()[0]
        xyxy, scores, class_ids = postprocess(raw, self.grid, self.strides, threshold, self.spec.thresholds["nms_iou"])
        h, w = rgb.shape[:2]
        return Detections(np.clip(box.to_source(xyxy), 0, [w, h, w, h]).astype(np.float32), scores, class_ids)


def build_bundle(models: TorchModels, options: ExportOptions) -> Manifest:
    """Export, quantize and gate; the bundle appears at ``options.out`` only if every gate passes.

    Raises:
        GateError: listing the failed gates (nothing is left at ``options.out``'s place).
        SignatureError: the signing key is missing, readable by others or not Ed25519 (before any work).
    """
    out = options.out
    private_pem = load_private_key(options.signing_key or development_key())  # a bad key fails now, not at the end
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        builder = BundleBuilder(models, options, work)
        builder.export_all()
        builder.write_manifest()
        gate_list = builder.measure()
        if builder.fall_back(gate_list):
            builder.write_manifest()
            gate_list = builder.measure()
        for gate in gate_list:
            print(gate)
        gates.enforce(gate_list)
        builder.write_manifest(gate_list)
        if options.evaluate is not None:
            builder.write_evaluation(options.evaluate(work))
        _add_projection(work, options.data, whiten=not models.embedder_learnt_identity)
        sign_bundle(work, private_pem)  # checks every file against the final manifest first
        load_bundle(work, BundleTrust((encode_public(public_key_of(private_pem)),)))  # as a camera will
        _swap_into_place(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_bundle(out).manifest


def _add_projection(work: Path, data: Path, whiten: bool = True) -> None:
    """The compact embedding's projection (export/projection.py); without its fitting crops the
    bundle sends JSON only, and says so."""
    from export.projection import write_projection

    try:
        spec = write_projection(work, data, whiten=whiten)
    except FileNotFoundError as exc:
        print(f"WARNING: no compact projection in this bundle ({exc}): devices can send JSON messages only")
        return
    whitened = ", whitened" if spec.whitened else ""
    print(f"compact projection: {spec.dim} values{whitened}, {spec.explained_variance:.1%} of the variance of "
          f"{spec.fitted_on['images']} {spec.fitted_on['set']} crops")


def _swap_into_place(work: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def manifest_summary(manifest: Manifest, root: Path) -> str:
    """A short human summary: gates, timings and file sizes."""
    lines = [f"bundle {manifest.name} {manifest.version} at {root}"]
    for task, spec in manifest.models.items():
        sizes = ", ".join(f"{p} {f.bytes / 1e6:.1f} MB" for p, f in spec.files.items())
        lines.append(f"  {task}: {sizes}; " + ", ".join(f"{k}={v:.4g}" for k, v in spec.parity.items()))
    return "\n".join(lines)

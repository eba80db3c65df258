"""The bundle's models on real camera-trap images."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edge.capture.decode import decode_image
from edge.runtime.backends.onnxruntime import Config as OnnxRuntimeConfig
from edge.runtime.bundle import load_bundle
from edge.runtime.detections import Detections
from edge.runtime.models import Classifier, Detector, Embedder
from edge.runtime.preprocess import to_tensor
from train.box_matching import matched_recall


@pytest.fixture(scope="module")
def models(bundle_dir):
    bundle = load_bundle(bundle_dir)
    return {p: (Detector(bundle, p), Classifier(bundle, p), Embedder(bundle, p)) for p in ("int8", "fp32")}


def _md_boxes(entry, image_hw):
    h, w = image_hw
    boxes = [[x * w, y * h, (x + bw) * w, (y + bh) * h] for x, y, bw, bh in (d["bbox"] for d in entry["detections"])]
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), [d["conf"] for d in entry["detections"]],
                      np.zeros(len(boxes), np.int64))


def test_detector_finds_the_animals_of_ena24(models, data):
    """Every ENA24 frame holds one animal; compare with the MegaDetector v5 boxes shipped with them."""
    folder = data / "frames" / "ena24_small"
    reference = json.loads((folder / "md_annotations.json").read_text())
    detector = models["int8"][0]
    found, md = [], []
    for entry in reference["images"]:
        rgb = decode_image(folder / entry["file"], max_side=1280).rgb
        found.append(detector.detect(rgb))
        md.append(_md_boxes(entry, rgb.shape[:2]))
    frames_with_animal = sum(len(d) > 0 for d in found) / len(found)
    recall_50, n = matched_recall(md, found, iou=0.5)
    recall_10, _ = matched_recall(md, found, iou=0.1)
    print(f"\nENA24: frames with a detection {frames_with_animal:.3f}; recall of {n} MDv5 boxes "
          f"@IoU0.5 {recall_50:.3f}, @IoU0.1 {recall_10:.3f}")
    assert len(found) == 21
    assert frames_with_animal >= 0.9


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("frames/ena24_small/8831.jpg", "bear"),
        ("frames/autofocus_gallery/coyote1.jpg", "wolf_coyote"),
        ("frames/autofocus_gallery/buck.jpeg", "deer_antelope"),
        ("frames/ena24_small/4383.jpg", "fox"),
        ("frames/ena24_small/7951.jpg", "bird"),
    ],
)
def test_imagenet_classifier_names_the_family(models, data, rel, expected):
    detector, classifier, _ = models["int8"]
    rgb = decode_image(data / rel, max_side=1280).rgb
    detections = detector.detect(rgb)
    assert len(detections) >= 1
    best = classifier.classify(rgb, detections[int(detections.confidence.argmax())])
    assert classifier.labels[int(best.data["species_probs"][0].argmax())] == expected


def test_embeddings_are_unit_vectors_and_separate_individuals(models, data):
    _, _, embedder = models["fp32"]
    crops = sorted((data / "reid" / "leopard_spotid" / "crops").iterdir())
    vectors = {folder.name: embedder.run_crops([embedder.whole(decode_image(p).rgb) for p in sorted(folder.iterdir())[:4]])
               for folder in crops[:2]}
    for v in vectors.values():
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    a, b = vectors.values()
    assert a.shape[1] == embedder.output_dim
    assert np.isfinite(a).all() and not np.allclose(a[0], b[0])


def test_int8_and_fp32_agree_on_a_real_frame(models, data):
    rgb = decode_image(data / "frames" / "ena24_small" / "8831.jpg", max_side=1280).rgb
    det8, det32 = models["int8"][0].detect(rgb), models["fp32"][0].detect(rgb)
    assert matched_recall([det32], [det8])[0] == 1.0


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_a_wide_frame_runs_on_a_canvas_fitted_to_it_with_the_boxes_of_the_whole_input(models, bundle_dir, data,
                                                                                       precision):
    """The exported detector takes any canvas size and the manifest fits the canvas to the frame: a 1920 x 1080
    frame runs on 384 x 640 (a fifth less of the detector's work) with the boxes of the 480 x 640 canvas; in a
    batch with a 4:3 frame it is padded to the batch's canvas, which moves none of its boxes."""
    assert load_bundle(bundle_dir).manifest.models["detector"].input.fit_multiple == 32
    wide = decode_image(data / "frames" / "ena24_small" / "2480.jpg", max_side=960).rgb
    four_three = decode_image(data / "frames" / "autofocus_gallery" / "buck.jpeg", max_side=960).rgb[:, :684]
    assert wide.shape[:2] == (540, 960) and four_three.shape[:2] == (512, 684)
    fitted, full = models[precision][0], Detector(load_bundle(bundle_dir), precision, full_canvas=True)
    shapes: list[tuple[int, ...]] = []
    run = fitted.backend.run
    fitted.backend.run = lambda batch: shapes.append(batch.shape) or run(batch)
    try:
        alone, (in_batch, other) = fitted.detect(wide, 0.15), fitted.detect_batch([wide, four_three], 0.15)
    finally:
        fitted.backend.run = run
    assert shapes == [(1, 3, 384, 640), (2, 3, 480, 640)]
    reference = full.detect(wide, 0.15)
    assert len(reference) >= 1
    for found in (alone, in_batch):
        assert matched_recall([reference], [found], iou=0.9)[0] == 1.0
        assert matched_recall([found], [reference], iou=0.9)[0] == 1.0
    assert matched_recall([full.detect(four_three, 0.15)], [other], iou=0.99)[0] == 1.0


def test_the_int8_detector_takes_the_letterboxed_pixels_as_uint8(models, bundle_dir):
    """Export gives the INT8 detector a uint8 input (its input quantization maps each pixel to itself); the
    fp32 one and the crop graphs keep float32, and the manifest says which."""
    from edge.runtime.backends import input_dtype

    manifest = load_bundle(bundle_dir).manifest
    assert manifest.models["detector"].quantization["input"] == "uint8"
    assert input_dtype(models["int8"][0].backend) is np.uint8
    assert input_dtype(models["fp32"][0].backend) is np.float32
    assert input_dtype(models["int8"][1].backend) is np.float32


def test_a_uint8_detector_whose_manifest_normalises_its_input_is_refused_at_load(bundle_dir):
    import dataclasses

    from edge.runtime.bundle import BundleError

    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.models["detector"]
    normalising = spec.model_copy(update={"input": spec.input.model_copy(
        update={"scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})})
    manifest = bundle.manifest.model_copy(update={"models": {**bundle.manifest.models, "detector": normalising}})
    with pytest.raises(BundleError, match="detector.int8.onnx takes uint8 pixels but the manifest's detector input"):
        Detector(dataclasses.replace(bundle, manifest=manifest))
    Detector(dataclasses.replace(bundle, manifest=manifest), "fp32")  # the fp32 graph takes floats: nothing to refuse


def test_a_fitted_canvas_the_detector_cannot_take_is_refused_at_load(bundle_dir, tmp_path):
    """A manifest whose fitting step the head cannot tile, or that fits the canvas for a graph exported at one
    size (a bundle of before): one line at load, not a failure on every frame that is not 4:3."""
    import dataclasses

    import onnx

    from edge.runtime.bundle import BundleError

    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.models["detector"]
    odd = spec.model_copy(update={"input": spec.input.model_copy(update={"fit_multiple": 48})})
    manifest = bundle.manifest.model_copy(update={"models": {**bundle.manifest.models, "detector": odd}})
    with pytest.raises(BundleError, match="fit_multiple 48 must be a multiple of the largest stride 32"):
        Detector(dataclasses.replace(bundle, manifest=manifest))
    fixed = onnx.load(str(bundle_dir / "detector.int8.onnx"))
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim[2:], (480, 640), strict=True):
        dim.dim_value = value
    onnx.save(fixed, str(tmp_path / "detector.int8.onnx"))
    with pytest.raises(BundleError, match="takes 480 x 640 alone but the manifest fits the canvas"):
        Detector(dataclasses.replace(bundle, root=tmp_path))


def test_classifier_and_embedder_of_one_graph_share_a_session_and_one_run(bundle_dir, data):
    """The pretrained bundle exports them as one graph: one session, one run per crop batch."""
    from datetime import datetime

    from edge.analysis.analyzer import Analyzer
    from edge.analysis.config import DetectionConfig, PreprocessConfig, PrivacyConfig
    from edge.analysis.gate import MotionGate, MotionGateConfig
    from edge.capture.frame import Frame

    bundle = load_bundle(bundle_dir)
    detector, classifier, embedder = Detector(bundle), Classifier(bundle), Embedder(bundle)
    assert classifier.backend is embedder.backend and embedder.shares_run_with(classifier)

    runs = []
    real_run = classifier.backend.run
    classifier.backend.run = lambda batch: runs.append(len(batch)) or real_run(batch)
    try:
        rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=960).rgb
        analysis = Analyzer(detector, classifier, embedder, MotionGate(MotionGateConfig(enabled=False)), PreprocessConfig(),
                            DetectionConfig(), PrivacyConfig(), 0.3).analyse(Frame("cam", "k", datetime(2026, 1, 1), "exif", rgb=rgb))
    finally:
        del classifier.backend.run
    n, embedded = len(analysis.detections), analysis.detections.data["embedded"]
    assert n >= 1 and embedded.any()
    assert sum(runs) == n  # every crop went through the shared graph once, not once per model
    separate = embedder.run_crops(embedder.crops_of(rgb, analysis.detections))
    vectors = analysis.detections.data["embedding"]
    assert np.allclose(vectors[embedded], separate[embedded], atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors[embedded], axis=1), 1.0, atol=1e-4)


def test_a_batch_runs_one_image_at_a_time_with_the_batch_results(bundle_dir, data):
    """The default backend runs a batch image by image, so the shared arena holds one image's tensors;
    what comes back is what one run of the whole batch gives."""
    bundle = load_bundle(bundle_dir)
    one, whole = Classifier(bundle), Classifier(bundle, "int8", OnnxRuntimeConfig(memory_arena=False, images_per_run=8))
    assert one.backend is not whole.backend
    frames = sorted((data / "frames" / "ena24_small").glob("*.jpg"))[:5]
    batch = to_tensor([one.whole(decode_image(p, max_side=960).rgb) for p in frames], one.spec.input)
    seen: list[int] = []
    session_run = one.backend.session.run
    one.backend.session.run = lambda names, feed: seen.append(len(next(iter(feed.values())))) or session_run(names, feed)
    outputs = one.backend.run(batch)
    assert seen == [1] * 5
    for mine, theirs in zip(outputs, whole.backend.run(batch), strict=True):
        assert mine.shape == theirs.shape and mine.shape[0] == 5
        np.testing.assert_allclose(mine, theirs, atol=1e-4)


_MEMORY_PROBE = """
import os
import sys
from pathlib import Path

from edge.app.memory import one_malloc_arena
from edge.capture.decode import decode_image
from edge.runtime.backends.onnxruntime import Config
from edge.runtime.bundle import load_bundle
from edge.runtime.models import Classifier, Detector

def resident_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

one_malloc_arena()
bundle_dir, folder, setting = sys.argv[1:]
config = Config() if setting == "default" else Config(memory_arena=False, images_per_run=2)
bundle = load_bundle(bundle_dir)
detector, classifier = Detector(bundle, "int8", config), Classifier(bundle, "int8", config)
frames = [decode_image(p, max_side=960).rgb for p in sorted(Path(folder).glob("*.jpg"))[:4]]
before = resident_mb()
for _ in range(3):
    for rgb in frames:
        detector.detect(rgb)
        classifier.run_crops([classifier.whole(rgb)] * 6)
print(resident_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_the_sessions_share_one_arena_and_grow_the_process_by_a_bounded_amount(bundle_dir, data):
    """Detector and classifier runs on real frames (batches of 6 crops) in fresh processes: the default (one
    arena that every session shares, one image a run) grows the process by the same bounded amount each time
    (16.5-18 MB in 6 runs here). ORT's tensors from malloc with batches of 2 grew it by anything from 9 to 71 MB
    over 12 runs (glibc keeps freed pages, or not), so comparing one run of each, as this test did, failed about
    one time in three once the detector's uint8 input had made the malloc side smaller; it is printed, not asserted."""
    folder = data / "boxes" / "wbia_voc" / "JPEGImages"

    def growth(setting: str) -> float:
        done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(bundle_dir), str(folder), setting],
                              check=True, capture_output=True, text=True)
        return float(done.stdout.split()[-1])

    default = [growth("default") for _ in range(2)]
    print(f"\nresident memory grown by the runs: shared arena {default}, malloc {growth('malloc')}")
    assert max(default) < 24 and max(default) - min(default) < 4

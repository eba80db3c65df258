"""Detector, classifier and embedder over any backend, configured only by the manifest.

Single-image calls go through the batch path. Models whose manifest entries name the same file
(a classifier and an embedder exported as one graph) share one backend session.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edge.runtime.backends import InferenceBackend, create_backend, input_dtype, plugin
from edge.runtime.backends.onnxruntime import Config as OnnxRuntimeConfig
from edge.runtime.bundle import Bundle, BundleError
from edge.runtime.detections import Detections
from edge.runtime.preprocess import Letterbox, crop, letterbox, resize_whole, takes_pixels, to_tensor
from edge.runtime.yolox import make_grid, postprocess

_BACKENDS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shared_backend(config: BaseModel, path: Path, outputs: list[str], precision: str) -> InferenceBackend:
    """The live backend for this file, outputs, precision and settings, or a new one."""
    cache_key = (config.model_dump_json(), str(Path(path).resolve()), tuple(outputs), precision)
    backend = _BACKENDS.get(cache_key)
    if backend is None:
        backend = create_backend(config, path, outputs, precision)
        _BACKENDS[cache_key] = backend
    return backend


def full_range(quantization: dict[str, object]) -> bool:
    """Whether an INT8 graph's weights use all 8 bits (``export/quantize.py``): x86 without VNNI saturates
    them unless told to multiply exactly. Bundles before the 7-bit detector say nothing: all 8."""
    return quantization.get("weight_bits", 8) == 8


class _BundleModel:
    """One model of a bundle on one backend.

    Args:
        bundle: the verified bundle.
        precision: what the backend runs (``int8``/``fp32`` on onnxruntime, ``fp16``/``int8`` on
            TensorRT); the backend's ``PRECISIONS`` says which ONNX file of the bundle it uses.
        backend: the backend's typed config (default: onnxruntime with its defaults).

    Raises:
        BundleError: the backend does not run ``precision`` or the bundle lacks its file.
    """

    task = ""

    def __init__(self, bundle: Bundle, precision: str = "int8", backend: BaseModel | None = None):
        self.spec = bundle.spec(self.task)
        self.precision = precision
        config = backend if backend is not None else OnnxRuntimeConfig()
        sources = plugin(config.type).PRECISIONS  # type: ignore[attr-defined]
        if precision not in sources:
            raise BundleError(f"backend {config.type} runs {', '.join(sources)}, not {precision}")  # type: ignore[attr-defined]
        path = self.path = bundle.model_path(self.task, sources[precision])
        if precision == "int8" and isinstance(config, OnnxRuntimeConfig) and full_range(self.spec.quantization):
            config = config.model_copy(update={"exact_int8": True})
        self.backend: InferenceBackend = shared_backend(config, path, self.spec.outputs, precision)
        if np.dtype(input_dtype(self.backend)) == np.uint8 and not takes_pixels(self.spec.input):
            raise BundleError(f"{path.name} takes uint8 pixels but the manifest's {self.task} input scales or "
                              "normalises them: export the bundle again")
        self.output_index = self.spec.outputs.index(self.spec.result) if self.spec.result else 0

    @property
    def labels(self) -> list[str]:
        return self.spec.labels


class Detector(_BundleModel):
    """YOLOX detector: letterbox, run, decode and NMS in numpy."""

    task = "detector"

    def __init__(self, bundle: Bundle, precision: str = "int8", backend: BaseModel | None = None,
                 full_canvas: bool = False):
        """``full_canvas``: letterbox to the whole input size even where the manifest fits the canvas to the
        frame (``input.fit_multiple``), as a reference for the fitted one."""
        super().__init__(bundle, precision, backend)
        strides = self.spec.decode["strides"]
        if not isinstance(strides, list):
            raise BundleError(f"detector decode.strides must be a list, got {strides!r}")
        self.head_strides = [int(s) for s in strides]
        self.fit_multiple = None if full_canvas else self.spec.input.fit_multiple
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        fit, size = self.spec.input.fit_multiple, tuple(self.spec.input.size)
        if fit and (fit % max(self.head_strides) or any(side % fit for side in size)):
            raise BundleError(f"detector input.fit_multiple {fit} must be a multiple of the largest stride "
                              f"{max(self.head_strides)} that divides the input size {size[0]} x {size[1]}")
        session = getattr(self.backend, "session", None)  # ONNX Runtime says which sizes the graph takes
        if fit and session is not None and tuple(session.get_inputs()[0].shape[2:]) == size:  # a graph of before
            raise BundleError(f"{self.path.name} takes {size[0]} x {size[1]} alone but the manifest "
                              "fits the canvas to each frame (input.fit_multiple): export the bundle again")

    def grid(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The anchor grid and strides of a canvas of ``size`` (h, w), made once per size."""
        if size not in self._grids:
            self._grids[size] = make_grid(size, self.head_strides)
        return self._grids[size]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterbox one RGB image as the manifest says (onto a canvas fitted to it, where it says so)."""
        spec = self.spec.input
        return letterbox(image, spec.size, spec.pad_value, spec.pad_anchor, spec.interpolation, self.fit_multiple)

    def raw_batch(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Letterbox], tuple[int, int]]:
        """Undecoded head output (B, A, 5 + C) for one canvas size, the batch's largest (fitted canvases of
        other sizes padded at the bottom and right, which moves nothing), each image's letterbox and that size."""
        boxed = [self.preprocess(image) for image in images]
        canvases = [canvas for canvas, _ in boxed]
        size = max(c.shape[0] for c in canvases), max(c.shape[1] for c in canvases)
        if any(c.shape[:2] != size for c in canvases):
            pad = self.spec.input.pad_value
            canvases = [np.pad(c, ((0, size[0] - c.shape[0]), (0, size[1] - c.shape[1]), (0, 0)), constant_values=pad)
                        for c in canvases]
        (raw,) = self.backend.run(to_tensor(canvases, self.spec.input, input_dtype(self.backend)))
        return raw, [box for _, box in boxed], size

    def detect_batch(self, images: list[np.ndarray], confidence: float | None = None) -> list[Detections]:
        """Boxes in source pixels for each image, at ``confidence`` (default: the manifest's)."""
        if not images:
            return []
        threshold = self.spec.thresholds["confidence"] if confidence is None else confidence
        raw, boxes, size = self.raw_batch(images)
        grid, strides = self.grid(size)
        results = []
        for image, out, box in zip(images, raw, boxes):
            xyxy, scores, class_ids = postprocess(out, grid, strides, threshold, self.spec.thresholds["nms_iou"])
            h, w = image.shape[:2]
            xyxy = np.clip(box.to_source(xyxy), 0, [w, h, w, h]).astype(np.float32)
            results.append(Detections(xyxy, scores, class_ids))
        return results

    def detect(self, image: np.ndarray, confidence: float | None = None) -> Detections:
        """Boxes of one image."""
        return self.detect_batch([image], confidence)[0]


class _CropModel(_BundleModel):
    """A model that runs on detection crops (or whole images)."""

    batch_size = 2  # crops per backend call; ONNX Runtime runs them one at a time (images_per_run), TensorRT together

    @property
    def output_dim(self) -> int:
        """Width of this model's result (classes or embedding size)."""
        raise NotImplementedError

    def run_all(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Every output of the model file for already-cut (h, w, 3) crops, in chunks of ``batch_size``."""
        dtype = input_dtype(self.backend)
        chunks = [self.backend.run(to_tensor(crops[i : i + self.batch_size], self.spec.input, dtype))
                  for i in range(0, len(crops), self.batch_size)]
        if not chunks:
            return [np.zeros((0, self.output_dim), np.float32) for _ in self.spec.outputs]
        return [np.concatenate([chunk[k] for chunk in chunks]) for k in range(len(chunks[0]))]

    def result_of(self, outputs: list[np.ndarray]) -> np.ndarray:
        """This model's result among the outputs of ``run_all``."""
        return outputs[self.output_index]

    def run_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """This model's output for already-cut (h, w, 3) crops."""
        return self.result_of(self.run_all(crops))

    def shares_run_with(self, other: _CropModel | None) -> bool:
        """True when one run of ``other`` also gives this model's result (one graph, one session)."""
        return other is not None and other.backend is self.backend and other.spec.input == self.spec.input

    def crops_of(self, image: np.ndarray, detections: Detections) -> list[np.ndarray]:
        """Each detection cut out as the manifest's crop rule says."""
        return [crop(image, box, self.spec.input) for box in detections.xyxy]

    def whole(self, image: np.ndarray) -> np.ndarray:
        """The whole image resized to the input size."""
        return resize_whole(image, self.spec.input)


class Classifier(_CropModel):
    """Species probabilities per crop (softmax over the manifest's labels)."""

    task = "classifier"

    @property
    def output_dim(self) -> int:
        return len(self.spec.labels)

    def classify(self, image: np.ndarray, detections: Detections) -> Detections:
        """Add ``species_probs`` (N, K) to the detections of one image."""
        return detections.with_data(species_probs=self.run_crops(self.crops_of(image, detections)))


class Embedder(_CropModel):
    """L2-normalised embedding per crop."""

    task = "embedder"

    @property
    def output_dim(self) -> int:
        if self.spec.embedding_dim is None:
            raise BundleError("the embedder's manifest entry has no embedding_dim")
        return self.spec.embedding_dim

    def result_of(self, outputs: list[np.ndarray]) -> np.ndarray:
        vectors = outputs[self.output_index]
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def embed(self, image: np.ndarray, detections: Detections) -> Detections:
        """Add ``embedding`` (N, D) to the detections of one image."""
        return detections.with_data(embedding=self.run_crops(self.crops_of(image, detections)))

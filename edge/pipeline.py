"""One frame through the models: trim, gate, detect, classify, embed → a ``FrameAnalysis``.

No storage and no network here; the recorder turns analyses into rows and messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.capture.frame import Frame
from edge.capture.frame_stats import detect_info_bars, is_night, mean_brightness, trim_info_bars
from edge.detections import Detections
from edge.gate import MotionGate
from edge.runtime.models import Classifier, Detector, Embedder


class PreprocessConfig(BaseModel):
    """Burned-in info bars: fixed rows, or detected per frame."""

    model_config = ConfigDict(extra="forbid")
    trim_top: int = Field(0, ge=0, title="Rows of info bar to cut at the top")
    trim_bottom: int = Field(0, ge=0, title="Rows of info bar to cut at the bottom")
    detect_info_bars: bool = Field(False, title="Find the bars in each frame instead of fixed rows")


class DetectionConfig(BaseModel):
    """What runs on each frame."""

    model_config = ConfigDict(extra="forbid")
    confidence: float | None = Field(None, ge=0, le=1, title="Detector threshold (default: the bundle manifest's)")
    classify: bool = Field(True, title="Run the species classifier on crops")
    embed: bool = Field(True, title="Run the embedder on eligible crops")


class PrivacyConfig(BaseModel):
    """People and vehicles."""

    model_config = ConfigDict(extra="forbid")
    blur_labels: list[str] = Field(["person", "vehicle"], title="Labels whose crops are blurred in thumbnails")
    never_embed_labels: list[str] = Field(["person"], title="Labels whose embeddings are never computed or published")


@dataclass(frozen=True)
class FrameAnalysis:
    """What the models saw in one frame (boxes in full-frame pixels)."""

    frame: Frame
    detections: Detections
    labels: list[str | None]
    embedded: np.ndarray
    night: bool
    brightness: float
    motion: float
    gated: bool
    trim: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)


class Analyzer:
    """Runs the models on frames, as configured."""

    def __init__(self, detector: Detector, classifier: Classifier | None, embedder: Embedder | None,
                 gate: MotionGate, preprocess: PreprocessConfig, detection: DetectionConfig, privacy: PrivacyConfig,
                 min_crop_confidence: float):
        self.detector, self.classifier, self.embedder = detector, classifier, embedder
        self.gate, self.preprocess, self.detection, self.privacy = gate, preprocess, detection, privacy
        self.min_crop_confidence = min_crop_confidence

    def _trim(self, rgb: np.ndarray) -> tuple[int, int]:
        if self.preprocess.detect_info_bars:
            return detect_info_bars(rgb)
        return self.preprocess.trim_top, self.preprocess.trim_bottom

    def analyse(self, frame: Frame) -> FrameAnalysis:
        """Analyse one decoded frame."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        top, bottom = self._trim(frame.rgb)
        work = trim_info_bars(frame.rgb, top, bottom)
        night, brightness = is_night(work), mean_brightness(work)
        passes, motion = self.gate.passes(frame.source_id, work)
        timings["gate"] = time.perf_counter() - start
        detections = self._detect(work, top, timings) if passes else Detections.empty()
        detections, labels = self._classify(frame.rgb, detections, timings)
        detections, embedded = self._embed(frame.rgb, detections, labels, timings)
        return FrameAnalysis(frame, detections, labels, embedded, night, brightness, motion, not passes,
                             (top, bottom), timings)

    def _detect(self, work: np.ndarray, top: int, timings: dict[str, float]) -> Detections:
        start = time.perf_counter()
        detections = self.detector.detect(work, self.detection.confidence)
        if top and len(detections):
            detections = Detections(detections.xyxy + np.float32([0, top, 0, top]), detections.confidence,
                                    detections.class_id, detections.data)
        timings["detect"] = time.perf_counter() - start
        return detections

    def _classify(self, rgb: np.ndarray, detections: Detections,
                  timings: dict[str, float]) -> tuple[Detections, list[str | None]]:
        if self.classifier is None or not len(detections):
            return detections, [None] * len(detections)
        start = time.perf_counter()
        outputs = self.classifier.run_all(self.classifier.crops_of(rgb, detections))
        detections = detections.with_data(species_probs=self.classifier.result_of(outputs))
        if self.embedder is not None and self.embedder.shares_run_with(self.classifier):
            # one graph for both: the embeddings came with the probabilities
            detections = detections.with_data(embedding=self.embedder.result_of(outputs))
        labels = [self._detector_label(c) or self.classifier.labels[k]
                  for c, k in zip(detections.class_id, detections.data["species_probs"].argmax(axis=1))]
        timings["classify"] = time.perf_counter() - start
        return detections, labels

    def _detector_label(self, class_id: int) -> str | None:
        """A detector class other than ``animal`` (``person``, ``vehicle``) is the box's label: the
        species classifier only names animals, as with MegaDetector."""
        names = getattr(self.detector, "labels", None) or []
        name = names[int(class_id)] if 0 <= int(class_id) < len(names) else None
        return name if name not in (None, "animal") else None

    def eligible_for_embedding(self, detections: Detections, labels: list[str | None]) -> np.ndarray:
        """Confident crops whose label may be embedded (never people, by default)."""
        never = set(self.privacy.never_embed_labels)
        return (detections.confidence >= self.min_crop_confidence) & np.array(
            [label not in never for label in labels], bool).reshape(-1)

    def _embed(self, rgb: np.ndarray, detections: Detections, labels: list[str | None],
               timings: dict[str, float]) -> tuple[Detections, np.ndarray]:
        eligible = self.eligible_for_embedding(detections, labels)
        if self.embedder is None or not eligible.any():
            if "embedding" in detections.data:  # came with the classifier: none may leave this function
                detections = detections.with_data(embedding=np.zeros_like(detections.data["embedding"]))
            return detections, np.zeros(len(detections), bool)
        start = time.perf_counter()
        vectors = np.zeros((len(detections), self.embedder.output_dim), np.float32)
        if "embedding" in detections.data:  # computed with the classifier
            vectors[eligible] = detections.data["embedding"][eligible]
        else:
            vectors[eligible] = self.embedder.run_crops(self.embedder.crops_of(rgb, detections[eligible]))
        timings["embed"] = time.perf_counter() - start
        return detections.with_data(embedding=vectors), eligible

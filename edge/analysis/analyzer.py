"""One frame through the models: trim, gate, detect, classify, label, embed → a ``FrameAnalysis``.

No storage and no network here; the recorder turns analyses into rows and messages. Every command
that runs models (``run``, ``detect``, ``embed``, ``bench``, the demo, the bundle smoke check)
builds this one class through ``edge.app.factory.build_analyzer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from common.labels import category_of
from edge.analysis.config import DetectionConfig, PreprocessConfig, PrivacyConfig
from edge.analysis.gate import MotionGate
from edge.analysis.labels import ANIMAL, WHOLE_FRAME, LabelSpace, combine_labels, confident_animals, names_animal
from edge.analysis.tiles import second_look
from edge.capture.frame import Frame
from edge.capture.frame_stats import detect_info_bars, is_night, mean_brightness, trim_info_bars
from edge.runtime.detections import Detections
from edge.runtime.models import Classifier, Detector, Embedder

log = logging.getLogger(__name__)


class Stopwatch:
    """Seconds per stage of one frame: wall clock, and CPU (the energy a stage costs).

    CPU is the whole process's user + system time (every model thread included) when frames are
    analysed one at a time; with several frames at once it is the frame's own thread (the other
    frames' work is not this frame's), which holds every model thread too when the sessions run on
    one thread a frame, as ``bundle.frames_at_once: 0`` sets them on up to 3 cores.
    """

    def __init__(self, cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.cpu_clock = cpu_clock

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), self.cpu_clock()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + self.cpu_clock() - cpu


def label_space(detector: Sequence[str], classifier: Sequence[str] | None,
                taxonomy: Mapping[str, Sequence[str]] | None, detection: DetectionConfig) -> LabelSpace:
    """The labels a box can end with, for these models' labels and ``detection``'s rules (roll-up only
    with a classifier)."""
    return LabelSpace.of(detector, classifier or (), taxonomy if classifier else None,
                         detection.rollup_min_score if classifier else None, detection.sure_box,
                         detection.overrule_min_score)

@dataclass(frozen=True)
class FrameAnalysis:
    """What the models saw in one frame (boxes in full-frame pixels, each with its final label).

    Attributes:
        frame: the decoded frame.
        detections: boxes with ``label``, ``label_score``, ``label_source``, ``label_probs``,
            ``confident_animal`` and ``embedded`` columns (and ``species_probs`` / ``embedding`` when
            those models ran).
        night, brightness: frame statistics of the trimmed frame.
        motion: the gate's score (nan when the gate is off).
        gated: the gate skipped the models.
        timings: wall seconds per stage (``gate``, ``detect``, ``second_look``, ``classify``,
            ``whole_frame``, ``embed``).
        cpu: CPU seconds of the process per stage (same keys).
    """

    frame: Frame
    detections: Detections
    night: bool
    brightness: float
    motion: float
    gated: bool
    timings: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rgb(self) -> np.ndarray:
        """The frame's pixels (an analysed frame always has them)."""
        return self.frame.pixels


@dataclass(frozen=True)
class FrameFailure:
    """A frame that gave no analysis, and why (recorded, never dropped)."""

    frame: Frame
    reason: str


@dataclass(frozen=True)
class GatedFrame:
    """A frame past the steps that follow the frame order (trim, night, motion gate), ready for the
    models, which may run on another thread (``Analyzer.begin``, then ``Analyzer.finish``)."""

    frame: Frame
    work: np.ndarray  # the trimmed frame
    top: int  # rows trimmed off the top
    night: bool
    brightness: float
    passes: bool
    motion: float
    clock: Stopwatch


class Analyzer:
    """Runs the models on frames, as configured."""

    def __init__(self, detector: Detector, classifier: Classifier | None, embedder: Embedder | None,
                 gate: MotionGate, preprocess: PreprocessConfig, detection: DetectionConfig, privacy: PrivacyConfig,
                 min_crop_confidence: float, frames_at_once: int = 1):
        self.detector, self.classifier, self.embedder = detector, classifier, embedder
        self.frames_at_once = frames_at_once  # how many frames ``edge.analysis.pipeline`` keeps in flight
        self.cpu_clock = time.thread_time if frames_at_once > 1 else time.process_time
        self.gate, self.preprocess, self.detection, self.privacy = gate, preprocess, detection, privacy
        self.min_crop_confidence = min_crop_confidence
        self.never_embed = set(privacy.never_embed_labels)
        self.embed_only = None if detection.embed_labels is None else set(detection.embed_labels)
        learnt_whole = bool(getattr(getattr(classifier, "spec", None), "whole_frames", False))
        self.frame_context = learnt_whole if detection.frame_context is None else detection.frame_context
        self.space = label_space(detector.labels, classifier.labels if classifier else None,
                                 getattr(getattr(classifier, "spec", None), "taxonomy", None), detection)
        # a frame without a box has no detector class for the classifier to overrule (rule 8): its best class decides
        self.whole_space = replace(self.space, overrule_min_score=None)

    @property
    def labels(self) -> list[str]:
        """Every label a box (and so an event) can have."""
        return self.space.labels

    def _trim(self, rgb: np.ndarray) -> tuple[int, int]:
        if self.preprocess.detect_info_bars:
            return detect_info_bars(rgb)
        top, bottom = self.preprocess.trim_top, self.preprocess.trim_bottom
        if top + bottom >= rgb.shape[0]:  # the frame would be cut to nothing (a ZeroDivisionError further on)
            raise ValueError(f"preprocess.trim_top + trim_bottom ({top} + {bottom}) leave none of this frame's "
                             f"{rgb.shape[0]} rows: check edge.yaml")
        return top, bottom

    def process(self, frame: Frame) -> FrameAnalysis | FrameFailure:
        """What every command does with a frame: its analysis, or a failure record saying why there is
        none (it did not decode, or a model raised on it); one bad frame never stops a batch."""
        begun = self.begin(frame)
        return begun if isinstance(begun, FrameFailure) else self.finish(begun)

    def begin(self, frame: Frame) -> GatedFrame | FrameFailure:
        """The steps that follow the frame order (the motion gate compares a frame with the one before
        it): run in order, one frame at a time, before ``finish``."""
        if not frame.ok:
            return FrameFailure(frame, f"image unreadable: {frame.failure}")
        try:
            return self._gate(frame)
        except Exception as exc:  # noqa: BLE001 - any error on one frame is that frame's failure
            return self._failed(frame, exc)

    def _gate(self, frame: Frame) -> GatedFrame:
        rgb, clock = frame.pixels, Stopwatch(self.cpu_clock)
        with clock.stage("gate"):
            top, bottom = self._trim(rgb)
            work = trim_info_bars(rgb, top, bottom)
            night, brightness = is_night(work), mean_brightness(work)
            passes, motion = self.gate.passes(frame.source_id, work)
        return GatedFrame(frame, work, top, night, brightness, passes, motion, clock)

    def finish(self, begun: GatedFrame) -> FrameAnalysis | FrameFailure:
        """The models on a gated frame: safe to call for several frames at once from different threads."""
        try:
            return self._analyse(begun)
        except Exception as exc:  # noqa: BLE001 - any model error on one frame is that frame's failure
            return self._failed(begun.frame, exc)

    @staticmethod
    def _failed(frame: Frame, exc: Exception) -> FrameFailure:
        log.exception("analysing %s/%s failed", frame.source_id, frame.key)
        return FrameFailure(frame, f"analysis failed: {type(exc).__name__}: {str(exc)[:300]}")

    def analyse(self, frame: Frame) -> FrameAnalysis:
        """Analyse one decoded frame (errors raised, not recorded)."""
        return self._analyse(self._gate(frame))

    def _analyse(self, begun: GatedFrame) -> FrameAnalysis:
        rgb, work, top, passes, clock = begun.frame.pixels, begun.work, begun.top, begun.passes, begun.clock
        detections = self._detect(work, top, clock) if passes else Detections.empty()
        detections, context = self._classify(rgb, work, detections, clock)
        detections = combine_labels(detections, self.space, context)
        if passes and not len(detections):
            detections = self._whole_frame(work, top, detections, context, clock)
        privacy = self.privacy
        detections = detections.with_data(confident_animal=confident_animals(
            detections, frozenset(privacy.not_animal_labels), privacy.animal_min_score))
        detections = self._embed(rgb, detections, clock)
        return FrameAnalysis(begun.frame, detections, begun.night, begun.brightness, begun.motion, not passes,
                             clock.wall, clock.cpu)

    def _detect(self, work: np.ndarray, top: int, clock: Stopwatch) -> Detections:
        with clock.stage("detect"):
            detections = self.detector.detect(work, self.detection.confidence)
        look = self.detection.second_look
        if look.wanted(work.shape[:2], len(detections)):
            with clock.stage("second_look"):
                detections = second_look(work, detections,
                                         lambda tiles: self.detector.detect_batch(tiles, self.detection.confidence), look)
        return detections.shifted(0, top) if top else detections

    def _classify(self, rgb: np.ndarray, work: np.ndarray, detections: Detections,
                  clock: Stopwatch) -> tuple[Detections, np.ndarray | None]:
        """Each box's crop through the classifier and, with ``frame_context``, the whole trimmed frame in
        the same run (the frame's probabilities, or None)."""
        if self.classifier is None or not len(detections):
            return detections, None
        with clock.stage("classify"):
            whole = [self.classifier.whole(work)] if self.frame_context else []
            outputs = self.classifier.run_all([*whole, *self.classifier.crops_of(rgb, detections)])
            probs = self.classifier.result_of(outputs)
            context, probs = (probs[0], probs[1:]) if whole else (None, probs)
            detections = detections.with_data(species_probs=probs)
            if self.embedder is not None and self.embedder.shares_run_with(self.classifier):
                # one graph for both: the embeddings came with the probabilities (_embed keeps the eligible ones)
                detections = detections.with_data(embedding=self.embedder.result_of(outputs)[len(whole):])
        return detections, context

    def _whole_frame(self, work: np.ndarray, top: int, none: Detections, context: np.ndarray | None,
                     clock: Stopwatch) -> Detections:
        """The backup for a frame without a box: the classifier on the whole trimmed frame (as it was
        trained on whole frames). A confident class that is not empty (an animal, or a person or vehicle
        the detector missed) becomes one frame-sized box labelled by it, ``label_source``
        ``whole_frame``: never embedded (it is not a crop of one animal), and blurred unless it is
        confidently an animal."""
        if self.classifier is None or not self.detection.whole_frame:
            return none
        if context is None:
            with clock.stage("whole_frame"):
                context = self.classifier.run_crops([self.classifier.whole(work)])[0]
        probs = np.asarray(context, np.float32).reshape(1, -1)
        best = int(np.argmax(probs[0]))
        label, score = self.space.classifier[best], float(probs[0, best])
        if score < self.detection.whole_frame_min_score or not (
                names_animal(label, frozenset(self.privacy.not_animal_labels))
                or category_of(label) in ("person", "vehicle")):
            return none
        h, w = work.shape[:2]
        box = Detections(np.array([[0, top, w, top + h]], np.float32), np.array([score], np.float32),
                         np.array([self.space.detector.index(ANIMAL) if ANIMAL in self.space.detector else 0]))
        box = combine_labels(box.with_data(species_probs=probs), self.whole_space)
        return box.with_data(label_source=np.array([WHOLE_FRAME], dtype=object))

    def eligible_for_embedding(self, detections: Detections) -> np.ndarray:
        """Boxes the detector is sure of that are confidently an animal, not of a never-embed label and, where
        ``detection.embed_labels`` is set, of one of those labels."""
        never, wanted = self.never_embed, self.embed_only
        allowed = np.array([label not in never and (wanted is None or label in wanted) for label in detections.labels()],
                           bool).reshape(-1)
        crop = detections.data["label_source"] != WHOLE_FRAME
        return (detections.confidence >= self.min_crop_confidence) & allowed & detections.data["confident_animal"] & crop

    def _embed(self, rgb: np.ndarray, detections: Detections, clock: Stopwatch) -> Detections:
        eligible = self.eligible_for_embedding(detections)
        if self.embedder is None:
            return detections.with_data(embedded=np.zeros(len(detections), bool))
        vectors = np.zeros((len(detections), self.embedder.output_dim), np.float32)
        if "embedding" in detections.data:  # computed with the classifier: only the eligible rows survive
            vectors[eligible] = detections.data["embedding"][eligible]
        elif eligible.any():
            with clock.stage("embed"):
                vectors[eligible] = self.embedder.run_crops(self.embedder.crops_of(rgb, detections[eligible]))
        return detections.with_data(embedding=vectors, embedded=eligible)

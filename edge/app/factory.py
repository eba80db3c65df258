"""The one way every command builds its pipeline: config + bundle → models → ``Analyzer``.

``run``, ``detect``, ``embed``, ``bench``, the demo and the bundle smoke check all call
``build_analyzer``, so a bundle behaves the same wherever it runs; they differ only in where frames
come from and where results go.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge.analysis.analyzer import Analyzer
from edge.analysis.gate import MotionGate
from edge.app.config import EdgeConfig
from edge.runtime.backends import InferenceBackend
from edge.runtime.bundle import Bundle, load_bundle
from edge.runtime.machine import cores
from edge.runtime.models import Classifier, Detector, Embedder
from edge.storage.recorder import Identity, Recorder
from edge.storage.store import Store


def build_analyzer(config: EdgeConfig, bundle: Bundle | None = None,
                   backends: Mapping[str, InferenceBackend] | None = None) -> Analyzer:
    """The analyzer ``config`` describes, on ``bundle`` (default: loaded from ``config.bundle.path``).

    Args:
        config: the device configuration (bundle, precision, backend, preprocess, gate, detection,
            privacy, the burst threshold that makes a crop eligible for embedding).
        bundle: an already verified bundle, to avoid hashing its files twice.
        backends: task -> backend replacing a model's inference (the torch reference of
            ``trapedge bench``); everything else stays the edge's own code.

    Raises:
        BundleError, BackendUnavailable: for the caller to report in one line.
    """
    bundle = bundle if bundle is not None else load_bundle(config.bundle.path)
    detection, precision, backend = config.detection, config.bundle.precision, config.bundle.backend
    frames = config.bundle.frames_in_flight()
    if frames > 1 and getattr(backend, "threads", None) == 0:  # the cores shared out among the frames in flight
        backend = backend.model_copy(update={"threads": max(1, cores() // frames)})
    detector = Detector(bundle, precision, backend)
    classifier = Classifier(bundle, precision, backend) if detection.classify else None
    embedder = Embedder(bundle, precision, backend) if detection.embed else None
    for model in (detector, classifier, embedder):
        if model is not None and backends and model.task in backends:
            model.backend = backends[model.task]
    return Analyzer(detector, classifier, embedder, MotionGate(config.gate), config.preprocess, detection,
                    config.privacy, config.bursts.min_crop_confidence, frames_at_once=frames)


def build_recorder(config: EdgeConfig, store: Store, analyzer: Analyzer, bundle: Bundle) -> Recorder:
    """The recorder of ``config``'s device, voting over the analyzer's labels."""
    prefix = config.mqtt.prefix if config.mqtt else "trapedge"
    identity = Identity(config.device_id, config.site, prefix, bundle.spec("embedder").architecture,
                        bundle.manifest.version)
    return Recorder(store, identity, config.bursts, config.rules, config.alerts, config.privacy, analyzer.space,
                    config.suppression)

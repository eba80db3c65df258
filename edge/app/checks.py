"""What ``trapedge run`` needs beyond a config that parses, checked before it runs.

``trapedge run --validate-config`` prints each problem as one line that says what to do (exit 2);
the service logs the same at start. Checked: the bundle loads with the device's trusted keys, every
watch-listed label is a label that bundle can give (else it can never alert), and so is every label
of ``detection.embed_labels`` (else nothing is embedded for it), the store path names a SQLite
file (or one this user may create), the broker's password and TLS files are readable, the bundle carries a compact
projection when ``mqtt.encoding`` sends a kind compact, and the drop folders exist.
"""

from __future__ import annotations

from pathlib import Path

from common.sqlite import store_path_problem
from edge.analysis.analyzer import label_space
from edge.app.config import EdgeConfig
from edge.events.rules import thresholds_for
from edge.runtime.bundle import BundleError, load_bundle, read_manifest
from edge.storage.store import MIGRATIONS


def bundle_labels(config: EdgeConfig) -> tuple[str, list[str]]:
    """(``name version``, every label a box or an event can have) of the configured bundle.

    Raises:
        BundleError: the bundle does not load (missing, unsigned, tampered).
    """
    bundle = load_bundle(config.bundle.path, config.bundle.trust)
    models = bundle.manifest.models
    classifier = models.get("classifier") if config.detection.classify else None
    space = label_space(models["detector"].labels, classifier.labels if classifier else None,
                        classifier.taxonomy if classifier else None, config.detection)
    return f"{bundle.manifest.name} {bundle.manifest.version}", space.labels


def label_problems(config: EdgeConfig, name: str, labels: list[str]) -> list[str]:
    """A line for each watch-listed label, and each of ``detection.embed_labels``, the bundle cannot give, and
    for each of ``detection.embed_labels`` that privacy never lets be embedded."""
    known = ", ".join(sorted(labels, key=str.casefold))
    asked = [("rules", label, "it can never alert") for label in thresholds_for(config.rules, config.site)]
    asked += [("detection.embed_labels", label, "no box is ever embedded for it")
              for label in config.detection.embed_labels or []]
    problems = [f"{key}: {label!r} is not a label of bundle {name}, so {consequence}: use one of {known}"
                for key, label, consequence in asked if label not in labels]
    private = set(config.privacy.never_embed_labels) | set(config.privacy.not_animal_labels)
    return problems + [f"detection.embed_labels: {label!r} is never embedded (privacy.never_embed_labels or "
                       f"privacy.not_animal_labels: it may be a person): remove it"
                       for label in config.detection.embed_labels or [] if label in private]


def compact_problems(config: EdgeConfig) -> list[str]:
    """A line when ``mqtt.encoding`` asks for compact records and the bundle has no projection for them."""
    kinds = config.mqtt.encoding.compact_kinds() if config.mqtt is not None else frozenset()
    if not kinds or read_manifest(config.bundle.path).compact is not None:
        return []
    return [f"mqtt.encoding: {', '.join(sorted(kinds))} compact needs the bundle's compact projection, which "
            f"{config.bundle.path} lacks: add it with `python -m export.projection BUNDLE` or send json"]


def secret_problems(config: EdgeConfig) -> list[str]:
    """The broker's password file and TLS files, readable by this user or not."""
    if config.mqtt is None:
        return []
    files = {"mqtt.password_file": config.mqtt.password_file, "mqtt.tls.ca": config.mqtt.tls.ca,
             "mqtt.tls.cert": config.mqtt.tls.cert, "mqtt.tls.key": config.mqtt.tls.key}
    problems = []
    for key, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"{key}: cannot read {path} ({exc.strerror}): create it, readable by the service user")
    return problems


def run_problems(config: EdgeConfig) -> list[str]:
    """Every problem ``trapedge run`` would meet, one line each (empty: ready to run)."""
    problems = []
    try:
        name, labels = bundle_labels(config)
        problems += label_problems(config, name, labels)
        problems += compact_problems(config)
    except BundleError as exc:
        problems.append(f"bundle.path: {exc}")
    if problem := store_path_problem(config.store.path, MIGRATIONS, "edge store"):
        problems.append(f"store.path: {problem}")
    problems += secret_problems(config)
    for source in config.sources:
        folder = getattr(source, "path", None)
        if getattr(source, "type", None) == "folder" and folder is not None and not Path(folder).is_dir():
            problems.append(f"sources: {getattr(source, 'id', '?')}: folder {folder} does not exist: create it (or mount "
                            "the card)")
    return problems

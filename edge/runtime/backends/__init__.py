"""Inference backends as plugins: one module each, owning its key, typed config and class.

A backend whose vendor package does not import is reported as unavailable with the reason;
it never breaks the appliance.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel

PLUGINS = {
    "onnxruntime": "edge.runtime.backends.onnxruntime",
    "tensorrt": "edge.runtime.backends.tensorrt",
}


class BackendUnavailable(RuntimeError):
    """The backend's vendor package is missing on this device."""


class InferenceBackend(Protocol):
    """What every backend offers: run a float32 NCHW batch, get the outputs in manifest order."""

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...


def _plugin(key: str):
    if key not in PLUGINS:
        raise ValueError(f"unknown backend {key!r}; known: {', '.join(PLUGINS)}")
    module = importlib.import_module(PLUGINS[key])
    if module.UNAVAILABLE_REASON:
        raise BackendUnavailable(f"backend {key!r} unavailable: {module.UNAVAILABLE_REASON}")
    return module


def config_class(key: str) -> type[BaseModel]:
    """The typed config of a backend (importable even when the backend is unavailable)."""
    if key not in PLUGINS:
        raise ValueError(f"unknown backend {key!r}; known: {', '.join(PLUGINS)}")
    return importlib.import_module(PLUGINS[key]).Config


def create_backend(key: str, model_path: Path, outputs: list[str], config: BaseModel | None = None) -> InferenceBackend:
    """Instantiate backend ``key`` for one model file."""
    module = _plugin(key)
    return module.Backend(Path(model_path), outputs, config or module.Config())


def available() -> dict[str, str]:
    """Each backend key mapped to ``"ok"`` or the reason it is unavailable."""
    return {key: importlib.import_module(path).UNAVAILABLE_REASON or "ok" for key, path in PLUGINS.items()}

"""Inference backends as plugins: one module each, owning its key, typed config and class.

Every module in this package is a plugin when it defines ``KEY``, ``Config`` (a pydantic model whose
``type`` field is ``Literal[KEY]``), ``Backend``, ``PRECISIONS`` (each precision it runs, mapped to
the bundle's ONNX file it is built from), ``CONCURRENT_FRAMES`` (whether frames analysed at once
gain from running together on it) and ``UNAVAILABLE_REASON``. The registry, the config union
that edge.yaml's ``bundle.backend`` is validated against and the list of keys are all derived from
those modules, as Frigate derives its detector types. A backend whose vendor package does not import
is reported as unavailable with the reason; it never breaks the appliance.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel

from common.plugins import config_union, discover


class BackendUnavailable(RuntimeError):
    """The backend's vendor package is missing on this device."""


class InferenceBackend(Protocol):
    """What every backend offers: run an NCHW batch, get the outputs in manifest order. ``input_dtype``
    is what ``run`` takes: float32, or uint8 for a quantized graph that takes raw pixels."""

    input_dtype: type

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...


def input_dtype(backend: object) -> type:
    """The dtype ``backend.run`` takes (float32 for a backend that does not say, such as a test's stand-in)."""
    return getattr(backend, "input_dtype", np.float32)


PLUGINS: dict[str, ModuleType] = discover(__name__, __path__)

if TYPE_CHECKING:
    BackendConfig = BaseModel
else:
    BackendConfig = config_union(PLUGINS)


def plugin(key: str) -> ModuleType:
    """The plugin module of backend ``key``."""
    if key not in PLUGINS:
        raise ValueError(f"unknown backend {key!r}; known: {', '.join(PLUGINS)}")
    return PLUGINS[key]


def precisions(key: str) -> dict[str, str]:
    """Precision -> the bundle ONNX file (``fp32``/``int8``) backend ``key`` builds it from."""
    return dict(plugin(key).PRECISIONS)


def create_backend(config: BaseModel, model_path: Path, outputs: list[str], precision: str) -> InferenceBackend:
    """Instantiate the backend ``config`` describes for one model file.

    Raises:
        BackendUnavailable: the backend's vendor package does not import here.
    """
    module = plugin(config.type)  # type: ignore[attr-defined]
    if module.UNAVAILABLE_REASON:
        raise BackendUnavailable(f"backend {module.KEY!r} unavailable: {module.UNAVAILABLE_REASON}")
    return module.Backend(Path(model_path), outputs, config, precision)


def available() -> dict[str, str]:
    """Each backend key mapped to ``"ok"`` or the reason it is unavailable."""
    return {key: module.UNAVAILABLE_REASON or "ok" for key, module in PLUGINS.items()}

"""Which model bundle runs, on which backend, at which precision: ``bundle:`` in edge.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.runtime.backends import PLUGINS, BackendConfig
from edge.runtime.backends.onnxruntime import Config as OnnxRuntimeConfig

DEFAULT_PATH = Path("/var/lib/trapedge/bundles/current")


class BundleConfig(BaseModel):
    """Which model bundle runs, and how.

    ``backend`` is one backend's typed options, chosen by its ``type`` (``backend: tensorrt`` is
    short for ``backend: {type: tensorrt}``). A precision the backend cannot run is refused here,
    at config load, never quietly replaced.
    """

    model_config = ConfigDict(extra="forbid")
    path: Path = Field(DEFAULT_PATH, title="Model bundle directory")
    precision: Literal["int8", "fp16", "fp32"] = Field(
        "int8", title="What the backend runs: int8 or fp32 ONNX on onnxruntime, int8 or fp16 engines on tensorrt")
    backend: BackendConfig = Field(default_factory=OnnxRuntimeConfig, title="Inference backend and its options")

    @model_validator(mode="before")
    @classmethod
    def _backend_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threads" in data:
            raise ValueError("threads is now an option of the backend: write `backend: {type: onnxruntime, "
                             "threads: N}`")
        if isinstance(data, dict) and isinstance(data.get("backend"), str):
            data = {**data, "backend": {"type": data["backend"]}}
        return data

    @model_validator(mode="after")
    def _precision_runs(self) -> BundleConfig:
        key = self.backend.type  # type: ignore[attr-defined]
        runs = PLUGINS[key].PRECISIONS
        if self.precision not in runs:
            raise ValueError(f"backend {key} cannot run precision {self.precision}; it runs {' or '.join(runs)}")
        return self

"""Which model bundle runs, on which backend, at which precision: ``bundle:`` in edge.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.signing import DEV_PUBLIC_KEY
from edge.runtime.backends import PLUGINS, BackendConfig
from edge.runtime.backends.onnxruntime import Config as OnnxRuntimeConfig
from edge.runtime.bundle import BundleTrust
from edge.runtime.machine import AUTO_FRAMES, AUTO_MIN_MEMORY_MB, auto_frames_at_once

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
    trusted_keys: list[str] = Field(
        default_factory=lambda: [str(DEV_PUBLIC_KEY)],
        title="Ed25519 public keys whose bundle signatures this device accepts: base64 lines or .pub files. The "
              "default is the checkout's development key (for demos and tests); a deployed camera lists its own")
    allow_unsigned: bool = Field(False, title="Development only: also load bundles without manifest.sig (a WARNING "
                                              "at every start); a bad signature is refused all the same")
    install_max_mb: float = Field(1024, gt=0, title="Largest bundle `trapedge bundle install` copies or unpacks")
    frames_at_once: int = Field(
        0, ge=0, le=8,
        title="Frames whose models run at the same time, each on its own thread, results kept in order (0 = "
              f"auto: {AUTO_FRAMES} with {AUTO_FRAMES} or more cores and {AUTO_MIN_MEMORY_MB} MB or more of memory on "
              "a backend that gains from it, else 1). Each frame in flight holds its own tensors, input and pixels "
              "(20-30 MB); with onnxruntime's threads at 0 a frame gets cores / frames_at_once threads")

    @model_validator(mode="before")
    @classmethod
    def _backend_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threads" in data:
            raise ValueError("threads is now an option of the backend: write `backend: {type: onnxruntime, "
                             "threads: N}`")
        if isinstance(data, dict) and isinstance(data.get("backend"), str):
            data = {**data, "backend": {"type": data["backend"]}}
        return data

    def frames_in_flight(self) -> int:
        """``frames_at_once``, with 0 resolved for this machine and this backend."""
        if self.frames_at_once:
            return self.frames_at_once
        backend = PLUGINS[self.backend.type]  # type: ignore[attr-defined]
        return auto_frames_at_once(getattr(backend, "CONCURRENT_FRAMES", False))

    @property
    def trust(self) -> BundleTrust:
        """The keys and the unsigned rule that ``load_bundle`` checks a bundle's signature with."""
        return BundleTrust(tuple(self.trusted_keys), self.allow_unsigned)

    @model_validator(mode="after")
    def _precision_runs(self) -> BundleConfig:
        key = self.backend.type  # type: ignore[attr-defined]
        runs = PLUGINS[key].PRECISIONS
        if self.precision not in runs:
            raise ValueError(f"backend {key} cannot run precision {self.precision}; it runs {' or '.join(runs)}")
        return self


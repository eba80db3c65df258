"""Which model bundle runs, on which backend, at which precision: ``bundle:`` in edge.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.signing import DEV_PUBLIC_KEY
from edge.runtime.backends import PLUGINS, BackendConfig
from edge.runtime.backends.onnxruntime import Config as OnnxRuntimeConfig
from edge.runtime.bundle import BundleTrust

DEFAULT_PATH = Path("/var/lib/trapedge/bundles/current")
# frames_at_once: 0. On 2 x86 cores (INT8, `trapedge bench`, two runs) two frames at once with one thread
# each ran 29.9-30.9 / 27.6-28.3 frames/s (shared / many-animal frames) against 22.2-23.0 / 19.3-20.4 for
# one frame on two threads, at 9-12 % less CPU a frame: ONNX Runtime's INT8 kernels keep ~1.4 of 2 cores
# busy, and a frame's small steps one. A third frame gained 4 % more; each frame in flight holds 20-30 MB
# of its own (tensors, input, pixels), hence the memory floor (a Pi Zero 2 W has 512 MB in all).
AUTO_FRAMES = 2
AUTO_MIN_MEMORY_MB = 1024


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
        if not getattr(PLUGINS[self.backend.type], "CONCURRENT_FRAMES", False):  # type: ignore[attr-defined]
            return 1
        return AUTO_FRAMES if cores() >= AUTO_FRAMES and memory_mb() >= AUTO_MIN_MEMORY_MB else 1

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


def cores() -> int:
    """The cores this process may run on (its CPU affinity: a systemd CPUAffinity= or a container's
    cpuset, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def memory_mb() -> float:
    """The machine's memory in MB (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0.0

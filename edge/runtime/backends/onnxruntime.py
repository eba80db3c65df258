"""ONNX Runtime CPU backend (the default on Raspberry Pi and x86)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

KEY = "onnxruntime"
PRECISIONS = {"fp32": "fp32", "int8": "int8"}  # runs each ONNX file of the bundle as it is

try:
    import onnxruntime as ort

    UNAVAILABLE_REASON = ""
except ImportError as exc:  # pragma: no cover - depends on the device image
    ort = None
    UNAVAILABLE_REASON = f"onnxruntime does not import ({exc}); pip install onnxruntime"


class Config(BaseModel):
    """ONNX Runtime settings."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["onnxruntime"] = "onnxruntime"
    threads: int = Field(0, ge=0, title="Intra-op threads (0 = one per core)")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], title="Execution providers")
    memory_arena: bool = Field(False, title="Keep ORT's memory arena (faster large batches, far more RSS)")
    spin: bool = Field(False, title="Let idle worker threads spin (steals the cores from the other models' sessions)")


class Backend:
    """One ONNX model in an ``InferenceSession``."""

    def __init__(self, path: Path, outputs: list[str], config: Config, precision: str = "int8"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # without the arena a session returns its activations after each run: measured 128 MB
        # instead of 160-950 MB for the three models, at the same speed for batches of 1-4
        options.enable_cpu_mem_arena = config.memory_arena
        options.enable_mem_pattern = config.memory_arena
        # three sessions share two cores: spinning pools starve each other (detector 74 -> 35 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
        self.session = ort.InferenceSession(str(path), options, providers=config.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = outputs

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one float32 NCHW batch."""
        return self.session.run(self.outputs, {self.input_name: batch})

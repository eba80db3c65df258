"""ONNX Runtime CPU backend (the default on Raspberry Pi and x86)."""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.runtime.bundle import BundleError

log = logging.getLogger(__name__)

KEY = "onnxruntime"
PRECISIONS = {"fp32": "fp32", "int8": "int8"}  # runs each ONNX file of the bundle as it is
CONCURRENT_FRAMES = True  # a session runs calls from several threads at once
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}  # what a model may take, as numpy dtypes

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
    threads: int = Field(0, ge=0, title="Intra-op threads (0 = the cores shared out among the frames at once: one a core "
                         "with one frame, one each with two frames on two cores)")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], title="Execution providers")
    memory_arena: bool = Field(True, title="One memory arena shared by every session of the process (off: each "
                               "run's tensors come from malloc and go back to it)")
    images_per_run: int = Field(1, ge=1, le=64, title="Images one session run gets: a batch is run in parts this size, "
                                "so the arena holds one image's tensors, not a batch's (a GPU provider may want more)")
    spin: bool = Field(False, title="Let idle worker threads spin (steals the cores from the other models' sessions)")
    exact_int8: bool = Field(False, title="Multiply INT8 exactly on x86 without VNNI (ONNX Runtime's U8U8 path, ~20 % "
                             "slower there; not taken on x86 with AVX-512 VNNI, which is exact already and where the path "
                             "took 1.8x the time): set for each graph whose manifest says its weights use all 8 bits, "
                             "which such CPUs would saturate")


class Backend:
    """One ONNX model in an ``InferenceSession``."""

    def __init__(self, path: Path, outputs: list[str], config: Config, precision: str = "int8"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Peak RSS of the INT8 service (trapedge bench, shared / many-animal frames, 2 x86 cores): ORT's
        # tensors from malloc with batches of 2 crops 183-207 / 193-215 MB (glibc keeps the freed
        # pages); an arena per session 162-180 MB; one arena every session shares, one image a run,
        # 151-154 / 143-145 MB at the same frames/s. The sessions run one after another, so the
        # shared arena is the size of the largest single run, not the sum of them.
        options.enable_cpu_mem_arena = config.memory_arena
        options.enable_mem_pattern = False  # a plan per input shape, kept beside the arena
        if config.memory_arena:
            _share_one_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
        # three sessions share two cores: spinning pools starve each other (detector 74 -> 35 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
        if config.exact_int8 and not has_vnni():  # export/quantize.py: what the gates measured, on every CPU
            options.add_session_config_entry("session.x64quantprecision", "1")
        self.session = ort.InferenceSession(str(path), options, providers=config.providers)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # a quantized detector takes its pixels as uint8 (export/quantize.py's take_pixels); older bundles float32
        if model_input.type not in INPUT_TYPES:
            raise BundleError(f"{path.name} takes {model_input.type}; the edge feeds {' or '.join(INPUT_TYPES)}")
        self.input_dtype = INPUT_TYPES[model_input.type]
        self.outputs = outputs
        self.images_per_run = config.images_per_run

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one NCHW batch of ``input_dtype`` (in parts of ``images_per_run`` images)."""
        step = self.images_per_run
        if len(batch) <= step:
            return self.session.run(self.outputs, {self.input_name: batch})
        parts = [self.session.run(self.outputs, {self.input_name: batch[i : i + step]}) for i in range(0, len(batch), step)]
        return [np.concatenate([part[k] for part in parts]) for k in range(len(self.outputs))]


@functools.cache
def has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU is x86 with AVX-512 VNNI, whose U8S8 kernels sum into 32 bits, so INT8 is exact without
    the U8U8 path. ONNX Runtime takes that path wherever it is asked to, VNNI or not: on an AMD EPYC with
    AVX-512 VNNI the default bundle's crop graph took 10.6 ms a crop with it against 5.9 without (fp32 10.9),
    one thread, with the same outputs. False where it cannot tell, and for AVX-VNNI alone (no such CPU was
    measured): the path is then taken, right answers first."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as lines:
            flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags


_arena_lock = threading.Lock()
_shared_arena = False


def _share_one_arena() -> None:
    """Register one CPU arena with ONNX Runtime's environment (once a process) for the sessions to share;
    where ORT refuses (one is registered already), the sessions use that one."""
    global _shared_arena
    with _arena_lock:
        if _shared_arena:
            return
        cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # the arena grows by powers of two (strategy 0): fewer, larger chunks measured 5 MB less than
        # growing by what each request needs (strategy 1)
        try:
            ort.create_and_register_allocator(cpu, ort.OrtArenaCfg({"arena_extend_strategy": 0}))
        except Exception as exc:  # ORT raises its own Fail / RuntimeError types
            log.debug("onnxruntime kept its registered CPU allocator: %s", exc)
        _shared_arena = True

"""TensorRT backend for Jetson: runs engines built from the bundle's ONNX files.

Engines are built by ``trapedge export-tensorrt`` (``export/tensorrt.py``) on the device
itself and cached under a key of device name + TensorRT version + ONNX sha256, so a new
bundle, a JetPack upgrade or a different module never reuses a stale engine.

Not exercised on the development machines (TensorRT installs only on NVIDIA platforms);
the key and cache logic around it is tested.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from common.hashing import sha256_file

KEY = "tensorrt"
# engines of either precision are built from the bundle's fp32 ONNX (``trapedge export-tensorrt``)
PRECISIONS = {"fp16": "fp32", "int8": "fp32"}
# one execution context and its device buffers a model: frames take turns (run holds a lock), so
# ``bundle.frames_at_once: 0`` means one frame at a time here
CONCURRENT_FRAMES = False

try:
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    UNAVAILABLE_REASON = ""
except ImportError as exc:
    trt = cudart = None
    UNAVAILABLE_REASON = f"tensorrt / cuda-python do not import ({exc}); they ship with JetPack on Jetson"


class Config(BaseModel):
    """TensorRT settings."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["tensorrt"] = "tensorrt"
    engine_cache: Path = Field(Path("/var/lib/trapedge/engines"), title="Directory of built engines "
                               "(where `trapedge export-tensorrt --cache` wrote them)")
    device_name: str | None = Field(None, title="Override the GPU name used in the cache key")


def engine_key(device_name: str, trt_version: str, onnx_sha256: str, precision: str) -> str:
    """Cache key of an engine: any change of device, TensorRT or model gives a new key."""
    tag = hashlib.sha256(f"{device_name}|{trt_version}|{onnx_sha256}|{precision}".encode()).hexdigest()[:16]
    return f"{onnx_sha256[:12]}-{precision}-{tag}"


def engine_paths(cache: Path, key: str) -> tuple[Path, Path]:
    """Engine file and its metadata sidecar (metadata never goes into the engine bytes)."""
    return cache / f"{key}.engine", cache / f"{key}.json"


def current_device_name() -> str:
    """Name of CUDA device 0, as TensorRT sees it."""
    err, props = cudart.cudaGetDeviceProperties(0)
    _check(err)
    return props.name.decode() if isinstance(props.name, bytes) else str(props.name)


def _check(err: object) -> None:
    if int(err) != 0:  # type: ignore[call-overload]  # a cudaError_t enum
        raise RuntimeError(f"CUDA error {err}")


class Backend:
    """One cached TensorRT engine with device buffers sized for the largest batch seen."""

    input_dtype = np.float32  # engines are built from the fp32 ONNX, whose input is float

    def __init__(self, path: Path, outputs: list[str], config: Config, precision: str = "fp16"):
        if precision not in PRECISIONS:
            raise ValueError(f"TensorRT engines are {' or '.join(PRECISIONS)}, not {precision}")
        device = config.device_name or current_device_name()
        key = engine_key(device, trt.__version__, sha256_file(path), precision)
        engine_file, _ = engine_paths(config.engine_cache, key)
        if not engine_file.is_file():
            raise FileNotFoundError(
                f"no TensorRT engine for {path.name} ({precision}, {device}, TensorRT {trt.__version__}) "
                f"in {config.engine_cache}: build it with `trapedge export-tensorrt --bundle {path.parent}`"
            )
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine_file.read_bytes())
        self.context = self.engine.create_execution_context()
        self._lock = threading.Lock()
        self.outputs = outputs
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        err, self.stream = cudart.cudaStreamCreate()
        _check(err)
        self._buffers: dict[str, tuple[int, int]] = {}

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(cudart.cudaFree(ptr)[0])
            err, ptr = cudart.cudaMalloc(nbytes)
            _check(err)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Copy the batch in, execute, copy the outputs out (in manifest order)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            return self._run(batch)

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.context.set_input_shape(self.input_name, batch.shape)
        src = self._device_buffer(self.input_name, batch.nbytes)
        kind = cudart.cudaMemcpyKind
        _check(cudart.cudaMemcpyAsync(src, batch.ctypes.data, batch.nbytes, kind.cudaMemcpyHostToDevice, self.stream)[0])
        self.context.set_tensor_address(self.input_name, src)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = np.empty(shape, dtype=np.float32)
            self.context.set_tensor_address(name, self._device_buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, host in results.items():
            ptr = self._buffers[name][0]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind.cudaMemcpyDeviceToHost, self.stream)[0])
        _check(cudart.cudaStreamSynchronize(self.stream)[0])
        return [results[name] for name in self.outputs]

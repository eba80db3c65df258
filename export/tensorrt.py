"""``trapedge export-tensorrt``: build TensorRT FP16 and INT8 engines from a bundle's fp32 ONNX.

Runs on the Jetson itself: an engine only fits the GPU and TensorRT version that built it.
Engines go into the cache the edge's TensorRT backend reads
(``edge.runtime.backends.tensorrt``), under the same key (device name + TensorRT version +
sha256 of the fp32 ONNX + precision), each with a JSON sidecar; metadata is never prepended
to the engine bytes. An engine already in the cache is reused unless ``--force``.

INT8 engines are calibrated by TensorRT's entropy calibrator on the same real images the ONNX
INT8 export calibrates on (``export.calibration.default_images``), preprocessed exactly as the
manifest says. The calibration scales are cached next to the engine (``<key>.calib``), so a
rebuild reads them back and needs no images.

This module was NOT run on the development machine: TensorRT and cuda-python only install on
NVIDIA platforms, so the TensorRT and CUDA calls here have never executed. The pure logic around
them (build plan, cache keys, sidecar, calibration batching and cache, the refusal without
TensorRT) is tested in ``tests/test_tensorrt.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.runtime.backends.tensorrt import (
    UNAVAILABLE_REASON,
    Config,
    cudart,
    current_device_name,
    engine_key,
    engine_paths,
    trt,
)
from edge.runtime.bundle import Bundle, BundleError, load_bundle
from edge.runtime.manifest import InputSpec
from export.calibration import calibration_samples, default_images

PRECISIONS = ("fp16", "int8")
INPUT_NAME = "images"  # the input name export.onnx_export gives every model
# (min, opt, max) batch of each engine's optimisation profile: the edge detects frame by frame
# and runs crops in chunks of _CropModel.batch_size (2 on the CPU); 16 leaves a GPU room to batch more
BATCH_RANGE = {"detector": (1, 1, 4), "classifier": (1, 8, 16), "embedder": (1, 8, 16)}
CALIBRATION_BATCH = 8

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class EngineBuild:
    """One engine of the plan: what it is built from, where it goes, and whether to build it."""

    task: str
    precision: str
    onnx: Path
    onnx_sha256: str
    device: str
    trt_version: str
    input_size: tuple[int, int]
    key: str
    engine: Path
    sidecar: Path
    needs_build: bool
    fit_multiple: int | None = None  # the manifest's input.fit_multiple: canvases from this square up to input_size

    @property
    def calibration_cache(self) -> Path:
        """TensorRT's INT8 calibration cache, next to the engine."""
        return self.engine.with_suffix(".calib")

    def shapes(self) -> dict[str, Shape]:
        """The ``min``/``opt``/``max`` input shapes of the engine's optimisation profile (tuned for the whole
        input size; a fitted canvas, as small as ``fit_multiple`` a side, runs on the same engine)."""
        height, width = self.input_size
        shapes = {name: (batch, 3, height, width) for name, batch in zip(("min", "opt", "max"), BATCH_RANGE[self.task])}
        if self.fit_multiple:
            shapes["min"] = (shapes["min"][0], 3, min(height, self.fit_multiple), min(width, self.fit_multiple))
        return shapes


def plan_builds(bundle: Bundle, cache: Path, device: str, trt_version: str,
                precisions: Iterable[str] = PRECISIONS, force: bool = False) -> list[EngineBuild]:
    """Every engine a bundle needs on this device, and which of them must be built.

    Args:
        bundle: a verified bundle (its manifest's sha256 of each fp32 ONNX is the file's).
        cache: the engine cache directory.
        device: GPU name as in the cache key (``current_device_name()`` on the device).
        trt_version: ``tensorrt.__version__``.
        precisions: engine precisions, ``fp16`` and/or ``int8``.
        force: rebuild engines that are already cached.

    Returns:
        One ``EngineBuild`` per model and precision, in manifest order. An engine is cached
        when both its engine file and its sidecar exist.
    """
    builds, seen = [], set()
    for task, spec in bundle.manifest.models.items():
        onnx_sha256 = spec.files["fp32"].sha256
        for precision in precisions:
            key = engine_key(device, trt_version, onnx_sha256, precision)
            if key in seen:  # classifier and embedder exported as one graph: one engine
                continue
            seen.add(key)
            engine, sidecar = engine_paths(cache, key)
            cached = engine.is_file() and sidecar.is_file()
            builds.append(EngineBuild(task, precision, bundle.model_path(task, "fp32"), onnx_sha256, device,
                                      trt_version, tuple(spec.input.size), key, engine, sidecar, force or not cached,
                                      spec.input.fit_multiple))
    return builds


def sidecar_metadata(build: EngineBuild, built_at: datetime, build_seconds: float) -> dict[str, object]:
    """The JSON sidecar of a built engine."""
    metadata = {
        "task": build.task,
        "precision": build.precision,
        "device": build.device,
        "tensorrt_version": build.trt_version,
        "onnx": build.onnx.name,
        "onnx_sha256": build.onnx_sha256,
        "key": build.key,
        "built": built_at.isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 1),
        "input": {"name": INPUT_NAME, **{name: list(shape) for name, shape in build.shapes().items()}},
    }
    if build.precision == "int8":
        metadata["calibration"] = {"algorithm": "entropy2", "batch": CALIBRATION_BATCH,
                                   "cache": build.calibration_cache.name}
    return metadata


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write a file so that readers see either nothing or all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as fh:
        fh.write(data)
    os.replace(partial, path)


# --- calibration -------------------------------------------------------------------------


def fixed_batches(batches: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Regroup NCHW batches of any size into batches of exactly ``size`` samples, in order.

    The calibration profile has one fixed shape; a last group short of ``size`` is dropped.
    """
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch)
        while count >= size:
            joined = np.concatenate(pending)
            yield np.ascontiguousarray(joined[:size], dtype=np.float32)
            pending, count = [joined[size:]], count - size


def default_calibration(task: str, spec: InputSpec, data: Path) -> Callable[[], Iterator[np.ndarray]]:
    """A lazy source of the default calibration images of ``task``: nothing is read until called."""
    def samples() -> Iterator[np.ndarray]:
        images = default_images(data)
        paths = images.detector_calibration if task == "detector" else images.crop_calibration
        return calibration_samples(paths, spec)

    return samples


class DeviceMemory(Protocol):
    """The three device-memory operations the calibrator needs."""

    def allocate(self, nbytes: int) -> int: ...

    def copy_in(self, pointer: int, host: np.ndarray) -> None: ...

    def free(self, pointer: int) -> None: ...


class CudaMemory:
    """Device memory through cuda-python's runtime API (as the edge backend uses it)."""

    def allocate(self, nbytes: int) -> int:
        """Allocate ``nbytes`` of device memory; returns the pointer."""
        return int(_cuda(cudart.cudaMalloc(nbytes)))

    def copy_in(self, pointer: int, host: np.ndarray) -> None:
        """Copy a contiguous host array to device memory (synchronous)."""
        _cuda(cudart.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def free(self, pointer: int) -> None:
        """Release device memory."""
        _cuda(cudart.cudaFree(pointer))


def _cuda(result: tuple):
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if values else None


# Without TensorRT the calibrator is a plain class, so its logic stays testable.
_CalibratorBase = trt.IInt8EntropyCalibrator2 if trt is not None else object


class EntropyCalibrator(_CalibratorBase):
    """Feeds fixed-size calibration batches to TensorRT and keeps its scales in a cache file.

    TensorRT reads the cache first; when the cache is valid it never asks for a batch, so the
    sample source (a callable) is only called, and images only read, when calibration runs.
    An exception while producing a batch ends calibration; it is kept in ``error`` so the
    build can re-raise it instead of TensorRT swallowing it in the callback.
    """

    def __init__(self, samples: Callable[[], Iterable[np.ndarray]], shape: Shape, cache: Path,
                 memory: DeviceMemory | None = None):
        super().__init__()
        self.samples, self.shape, self.cache = samples, tuple(shape), cache
        self.memory = memory or CudaMemory()
        self.batches_fed = 0
        self.error: Exception | None = None
        self._batches: Iterator[np.ndarray] | None = None
        self._pointer = 0

    def get_batch_size(self) -> int:
        """Samples per calibration batch."""
        return self.shape[0]

    def get_batch(self, names: list[str], *_) -> list[int] | None:
        """Device pointer of the next batch for the (single) input, or None when done."""
        try:
            batch = self._next_batch()
        except Exception as exc:  # noqa: BLE001 - re-raised by the build after TensorRT returns
            self.error = exc
            return None
        if batch is None:
            return None
        if not self._pointer:
            self._pointer = self.memory.allocate(batch.nbytes)
        self.memory.copy_in(self._pointer, batch)
        self.batches_fed += 1
        return [self._pointer]

    def _next_batch(self) -> np.ndarray | None:
        if self._batches is None:
            self._batches = fixed_batches(self.samples(), self.shape[0])
        batch = next(self._batches, None)
        if batch is None and self.batches_fed == 0:
            raise RuntimeError(f"no calibration batch of {self.shape[0]} images: too few calibration images")
        if batch is not None and batch.shape != self.shape:
            raise ValueError(f"calibration batch shape {batch.shape}, the calibration profile is {self.shape}")
        return batch

    def read_calibration_cache(self) -> bytes | None:
        """The cached scales, or None when there are none yet (calibration then runs)."""
        return self.cache.read_bytes() if self.cache.is_file() else None

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        """Keep TensorRT's scales for the next build, unless calibration ended on an error.

        Scales from a calibration cut short must not be reused by the next build.
        """
        if self.error is None:
            write_atomic(self.cache, bytes(cache))

    def close(self) -> None:
        """Free the device buffer."""
        if self._pointer:
            self.memory.free(self._pointer)
            self._pointer = 0


# --- TensorRT ----------------------------------------------------------------------------


def _parse_onnx(builder, logger, path: Path):
    """The network of an ONNX file, and the parser (it owns the weights until the build is done)."""
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {path.name}: {errors}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [INPUT_NAME]:
        raise RuntimeError(f"{path.name} has inputs {names}, expected one input named {INPUT_NAME!r}")
    return network, parser


def _profile(builder, shapes: dict[str, Shape]):
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    return profile


def _builder_config(builder, build: EngineBuild, workspace_mb: int, calibrator: EntropyCalibrator | None):
    """Precision flags, workspace, the dynamic-batch profile and, for INT8, calibration."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.add_optimization_profile(_profile(builder, build.shapes()))
    config.set_flag(trt.BuilderFlag.FP16)  # INT8 engines keep FP16 for layers with no INT8 kernel
    if build.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        fixed = calibrator.shape
        config.set_calibration_profile(_profile(builder, {"min": fixed, "opt": fixed, "max": fixed}))
    return config


def build_serialized(build: EngineBuild, workspace_mb: int, calibrator: EntropyCalibrator | None = None):
    """Build one engine; returns TensorRT's serialized engine (a buffer).

    Raises:
        RuntimeError: the ONNX does not parse, the build fails, or calibration failed.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(builder, logger, build.onnx)
    config = _builder_config(builder, build, workspace_mb, calibrator)
    serialized = builder.build_serialized_network(network, config)
    del parser  # kept alive up to here on purpose
    if calibrator is not None and calibrator.error is not None:
        raise RuntimeError(f"INT8 calibration of {build.task} failed: {calibrator.error}") from calibrator.error
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build the {build.precision} engine of {build.task} (see its log above)")
    return serialized


def build_engine(build: EngineBuild, bundle: Bundle, workspace_mb: int, data: Path) -> None:
    """Build, then write the sidecar and the engine into the cache (the engine last).

    The engine appears only once complete, and never without its sidecar.
    """
    calibrator = None
    if build.precision == "int8":
        calibrator = EntropyCalibrator(default_calibration(build.task, bundle.spec(build.task).input, data),
                                       (CALIBRATION_BATCH, *build.shapes()["opt"][1:]), build.calibration_cache)
    start = time.monotonic()
    try:
        serialized = build_serialized(build, workspace_mb, calibrator)
    finally:
        if calibrator is not None:
            calibrator.close()
    metadata = sidecar_metadata(build, datetime.now(timezone.utc), time.monotonic() - start)
    write_atomic(build.sidecar, (json.dumps(metadata, indent=2) + "\n").encode())
    write_atomic(build.engine, memoryview(serialized))


# --- command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trapedge export-tensorrt``."""
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"), help="model bundle directory")
    parser.add_argument("--cache", type=Path, default=Config.model_fields["engine_cache"].default,
                        help="engine cache directory (the edge backend's engine_cache)")
    parser.add_argument("--precision", choices=["fp16", "int8", "both"], default="both", help="engines to build")
    parser.add_argument("--force", action="store_true", help="rebuild engines that are already cached")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="real images for INT8 calibration (not read when the calibration cache exists)")
    parser.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace limit in MiB")
    parser.add_argument("--device-name", help="GPU name for the cache key, if the edge config overrides it")


def run(args: argparse.Namespace) -> int:
    """Build the missing engines of a bundle; 0 when every engine is in the cache afterwards."""
    if UNAVAILABLE_REASON:
        print(f"tensorrt unavailable: {UNAVAILABLE_REASON}", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"export-tensorrt: {exc}", file=sys.stderr)
        return 2
    precisions = PRECISIONS if args.precision == "both" else (args.precision,)
    device = args.device_name or current_device_name()
    for build in plan_builds(bundle, args.cache, device, trt.__version__, precisions, args.force):
        if not build.needs_build:
            print(f"{build.task} {build.precision}: cached {build.engine}")
            continue
        try:
            build_engine(build, bundle, args.workspace_mb, args.data)
        except (RuntimeError, ValueError, OSError) as exc:
            print(f"export-tensorrt: {build.task} {build.precision} failed: {exc}", file=sys.stderr)
            return 1
        print(f"{build.task} {build.precision}: built {build.engine}")
    return 0

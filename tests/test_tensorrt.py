"""The TensorRT engine builder's logic that runs without TensorRT: plan, keys, sidecar, calibration."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge.capture.decode import list_images
from edge.runtime.backends.tensorrt import engine_key
from edge.runtime.bundle import load_bundle
from edge.runtime.manifest import InputSpec
from export import tensorrt as export_trt

DEVICE, TRT_VERSION = "Orin", "10.3.0"
INPUTS = {
    "detector": {"size": [64, 96], "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "letterbox"},
    "classifier": {"size": [32, 32], "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "crop"},
}


def write_bundle(root: Path, contents: dict[str, bytes] | None = None) -> Path:
    """A two-model bundle of dummy files whose manifest verifies (sha256 and sizes computed here)."""
    root.mkdir(parents=True, exist_ok=True)
    contents = contents or {}
    models = {}
    for task, spec_input in INPUTS.items():
        files = {}
        for precision in ("fp32", "int8"):
            name = f"{task}.{precision}.onnx"
            data = contents.get(name, f"dummy {name}".encode())
            (root / name).write_bytes(data)
            files[precision] = {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        models[task] = {"task": task, "architecture": "tiny", "files": files, "input": spec_input,
                        "outputs": ["out"], "opset": 17}
    manifest = {"name": "tiny", "version": "1", "created": "2026-01-01T00:00:00+00:00", "models": models}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(write_bundle(tmp_path / "bundle"))


# --- build plan and cache keys -------------------------------------------------------------


def test_plan_lists_every_model_and_precision_keyed_by_the_fp32_onnx(bundle, tmp_path):
    cache = tmp_path / "engines"
    plan = export_trt.plan_builds(bundle, cache, DEVICE, TRT_VERSION)
    assert [(b.task, b.precision) for b in plan] == [
        ("detector", "fp16"), ("detector", "int8"), ("classifier", "fp16"), ("classifier", "int8")]
    for build in plan:
        fp32_sha = sha(f"dummy {build.task}.fp32.onnx".encode())
        key = engine_key(DEVICE, TRT_VERSION, fp32_sha, build.precision)
        assert build.onnx == bundle.root / f"{build.task}.fp32.onnx"
        assert build.onnx_sha256 == fp32_sha
        assert (build.key, build.engine, build.sidecar) == (key, cache / f"{key}.engine", cache / f"{key}.json")
        assert build.calibration_cache == cache / f"{key}.calib"
        assert build.needs_build
    assert len({b.key for b in plan}) == 4


def test_plan_for_one_precision(bundle, tmp_path):
    plan = export_trt.plan_builds(bundle, tmp_path, DEVICE, TRT_VERSION, ["int8"])
    assert [(b.task, b.precision) for b in plan] == [("detector", "int8"), ("classifier", "int8")]


@pytest.mark.parametrize(
    ("device", "version", "contents", "same"),
    [
        (DEVICE, TRT_VERSION, {}, True),
        ("Xavier", TRT_VERSION, {}, False),
        (DEVICE, "10.7.0", {}, False),
        (DEVICE, TRT_VERSION, {"detector.fp32.onnx": b"retrained", "classifier.fp32.onnx": b"new"}, False),
        (DEVICE, TRT_VERSION, {"detector.int8.onnx": b"requantized"}, True),  # engines come from fp32 only
    ],
)
def test_key_changes_with_device_tensorrt_and_onnx(tmp_path, device, version, contents, same):
    before = export_trt.plan_builds(load_bundle(write_bundle(tmp_path / "a")), tmp_path, DEVICE, TRT_VERSION)
    after = export_trt.plan_builds(load_bundle(write_bundle(tmp_path / "b", contents)), tmp_path, device, version)
    for old, new in zip(before, after, strict=True):
        assert (old.key == new.key) is same
        assert (old.engine == new.engine) is same


def touch_cached(build: export_trt.EngineBuild, engine: bool = True, sidecar: bool = True) -> None:
    build.engine.parent.mkdir(parents=True, exist_ok=True)
    if engine:
        build.engine.write_bytes(b"engine")
    if sidecar:
        build.sidecar.write_text("{}")


@pytest.mark.parametrize(
    ("engine", "sidecar", "force", "needs_build"),
    [
        (True, True, False, False),
        (True, True, True, True),
        (True, False, False, True),  # an engine without its sidecar is not trusted
        (False, True, False, True),
    ],
)
def test_cached_engine_is_reused_unless_forced(bundle, tmp_path, engine, sidecar, force, needs_build):
    cache = tmp_path / "engines"
    for build in export_trt.plan_builds(bundle, cache, DEVICE, TRT_VERSION):
        touch_cached(build, engine, sidecar)
    plan = export_trt.plan_builds(bundle, cache, DEVICE, TRT_VERSION, force=force)
    assert [b.needs_build for b in plan] == [needs_build] * 4


def test_engine_cached_for_another_device_is_not_reused(bundle, tmp_path):
    for build in export_trt.plan_builds(bundle, tmp_path, "Xavier", TRT_VERSION):
        touch_cached(build)
    assert all(b.needs_build for b in export_trt.plan_builds(bundle, tmp_path, DEVICE, TRT_VERSION))


# --- sidecar -------------------------------------------------------------------------------


def test_sidecar_describes_the_engine(bundle, tmp_path):
    fp16, int8 = export_trt.plan_builds(bundle, tmp_path, DEVICE, TRT_VERSION)[:2]
    built = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    onnx_sha = sha(b"dummy detector.fp32.onnx")
    expected = {
        "task": "detector", "precision": "fp16", "device": "Orin", "tensorrt_version": "10.3.0",
        "onnx": "detector.fp32.onnx", "onnx_sha256": onnx_sha,
        "key": engine_key("Orin", "10.3.0", onnx_sha, "fp16"),
        "built": "2026-03-04T05:06:07+00:00", "build_seconds": 12.3,
        "input": {"name": "images", "min": [1, 3, 64, 96], "opt": [1, 3, 64, 96], "max": [4, 3, 64, 96]},
    }
    assert export_trt.sidecar_metadata(fp16, built, 12.34) == expected
    int8_meta = export_trt.sidecar_metadata(int8, built, 12.34)
    assert int8_meta["precision"] == "int8" and int8_meta["key"] == engine_key("Orin", "10.3.0", onnx_sha, "int8")
    assert int8_meta["calibration"] == {"algorithm": "entropy2", "batch": 8, "cache": f"{int8_meta['key']}.calib"}
    json.dumps(int8_meta)  # must serialise as is


def test_crop_models_get_a_chunk_sized_batch_range(bundle, tmp_path):
    classifier = export_trt.plan_builds(bundle, tmp_path, DEVICE, TRT_VERSION)[2]
    assert classifier.shapes() == {"min": (1, 3, 32, 32), "opt": (8, 3, 32, 32), "max": (16, 3, 32, 32)}


def test_a_detector_fitted_to_each_frame_gets_a_profile_down_to_the_fitting_step(bundle, tmp_path):
    """A manifest that fits the canvas to the frame (``input.fit_multiple``) sends the engine canvases from one
    step square up to the input size: the profile's minimum says so, its optimum stays the whole size."""
    detector = dataclasses.replace(export_trt.plan_builds(bundle, tmp_path, DEVICE, TRT_VERSION)[0], fit_multiple=32)
    assert detector.shapes() == {"min": (1, 3, 32, 32), "opt": (1, 3, 64, 96), "max": (4, 3, 64, 96)}


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "x.engine"
    export_trt.write_atomic(target, memoryview(b"abc"))
    export_trt.write_atomic(target, b"defg")
    assert target.read_bytes() == b"defg"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.engine"]


# --- calibration ---------------------------------------------------------------------------


def numbered(counts: list[int], hw: int = 2) -> list[np.ndarray]:
    """Batches whose samples are filled with their running index 0, 1, 2, ..."""
    batches, start = [], 0
    for count in counts:
        batches.append(np.arange(start, start + count, dtype=np.float32)[:, None, None, None]
                       * np.ones((1, 3, hw, hw), np.float32))
        start += count
    return batches


@pytest.mark.parametrize(
    ("counts", "size", "expected"),
    [
        ([1, 1, 1, 1, 1], 2, [[0, 1], [2, 3]]),
        ([3, 3, 3], 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ([8, 3], 8, [[0, 1, 2, 3, 4, 5, 6, 7]]),
        ([2], 4, []),
        ([], 2, []),
    ],
)
def test_fixed_batches_regroup_in_order_and_drop_the_remainder(counts, size, expected):
    out = list(export_trt.fixed_batches(numbered(counts), size))
    assert [b[:, 0, 0, 0].tolist() for b in out] == expected
    assert all(b.shape == (size, 3, 2, 2) and b.dtype == np.float32 and b.flags.c_contiguous for b in out)


class FakeMemory:
    """Records what the calibrator asks of device memory."""

    def __init__(self):
        self.allocated, self.copies, self.freed = [], [], []

    def allocate(self, nbytes: int) -> int:
        self.allocated.append(nbytes)
        return 0x7000

    def copy_in(self, pointer: int, host: np.ndarray) -> None:
        self.copies.append((pointer, host.copy()))

    def free(self, pointer: int) -> None:
        self.freed.append(pointer)


def calibrator(tmp_path, samples, shape=(2, 3, 2, 2)):
    memory = FakeMemory()
    return export_trt.EntropyCalibrator(samples, shape, tmp_path / "k.calib", memory), memory


def test_calibrator_copies_each_fixed_batch_into_one_device_buffer(tmp_path):
    cal, memory = calibrator(tmp_path, lambda: iter(numbered([1] * 5)))
    assert cal.get_batch_size() == 2
    assert cal.get_batch(["images"]) == [0x7000]
    assert cal.get_batch(["images"]) == [0x7000]
    assert cal.get_batch(["images"]) is None  # the fifth sample does not make a batch
    assert memory.allocated == [2 * 3 * 2 * 2 * 4]
    assert [(ptr, host[:, 0, 0, 0].tolist()) for ptr, host in memory.copies] == [(0x7000, [0, 1]), (0x7000, [2, 3])]
    assert cal.batches_fed == 2 and cal.error is None
    cal.close()
    cal.close()
    assert memory.freed == [0x7000]


@pytest.mark.parametrize(
    ("samples", "error", "message"),
    [
        (lambda: iter(numbered([1])), RuntimeError, "too few calibration images"),
        (lambda: iter(numbered([2], hw=3)), ValueError, r"\(2, 3, 3, 3\).*\(2, 3, 2, 2\)"),
        (export_trt.default_calibration("classifier", InputSpec(**INPUTS["classifier"]), Path("/nonexistent")),
         FileNotFoundError, "nonexistent"),
    ],
)
def test_calibration_failure_is_kept_for_the_build_to_raise(tmp_path, samples, error, message):
    cal, memory = calibrator(tmp_path, samples)
    assert cal.get_batch(["images"]) is None
    with pytest.raises(error, match=message):
        raise cal.error
    assert memory.copies == []


def test_calibration_cache_round_trip_without_reading_images(tmp_path):
    def no_images():
        raise AssertionError("a cached calibration must not read images")

    cal, _ = calibrator(tmp_path, no_images)
    assert cal.read_calibration_cache() is None
    cal.write_calibration_cache(memoryview(b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n"))
    assert (tmp_path / "k.calib").read_bytes() == b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n"
    rebuilt, _ = calibrator(tmp_path, no_images)
    assert rebuilt.read_calibration_cache() == b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n"


def test_default_calibration_reads_nothing_until_called(tmp_path):
    spec = InputSpec(**INPUTS["classifier"])
    samples = export_trt.default_calibration("classifier", spec, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing"):
        samples()


def test_calibration_samples_follow_the_manifest_preprocessing(data):
    paths = list_images(data / "species" / "mlwic_ca01")[:2]  # 256x256 frames
    letterboxed = InputSpec(size=(64, 96), scale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3, resize="letterbox")
    for tensor in export_trt.calibration_samples(paths, letterboxed):
        assert tensor.shape == (1, 3, 64, 96) and tensor.dtype == np.float32
        # 256x256 scaled by 0.25 fills 64x64 at the top left; the rest is padding 0 -> (0 - 0.5) / 0.5
        assert np.all(tensor[..., 64:] == -1.0)
        assert tensor[..., :64].std() > 0.05
    cropped = InputSpec(**INPUTS["classifier"])
    shapes = [t.shape for t in export_trt.calibration_samples(paths, cropped)]
    assert shapes == [(1, 3, 32, 32)] * 2


# --- command -------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export_trt.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults():
    args = parse([])
    assert (args.bundle, args.cache, args.precision, args.force, args.data) == (
        Path("bundles/default"), Path("/var/lib/trapedge/engines"), "both", False, Path("../shared/data"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_without_tensorrt_the_command_refuses_in_one_line(tmp_path, capsys):
    assert export_trt.run(parse(["--bundle", str(tmp_path), "--cache", str(tmp_path / "engines")])) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("tensorrt unavailable: ") and err.count("\n") == 1 and "tensorrt" in err[22:]
    assert not (tmp_path / "engines").exists()


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Pretend TensorRT imports; record the engines the command would build."""
    built = []
    monkeypatch.setattr(export_trt, "UNAVAILABLE_REASON", "")
    monkeypatch.setattr(export_trt, "trt", SimpleNamespace(__version__=TRT_VERSION))
    monkeypatch.setattr(export_trt, "build_engine", lambda build, *_: built.append((build.task, build.precision)))
    return built


@pytest.mark.parametrize(
    ("argv", "expected", "cached"),
    [
        ([], [], 4),
        (["--force"], [("detector", "fp16"), ("detector", "int8"), ("classifier", "fp16"), ("classifier", "int8")], 0),
        (["--device-name", "Xavier", "--precision", "int8"], [("detector", "int8"), ("classifier", "int8")], 0),
        (["--precision", "fp16"], [], 2),
    ],
)
def test_command_builds_only_what_is_not_cached(bundle, tmp_path, fake_tensorrt, argv, expected, cached, capsys):
    cache = tmp_path / "engines"
    for data in (b"dummy detector.fp32.onnx", b"dummy classifier.fp32.onnx"):
        for precision in ("fp16", "int8"):
            key = engine_key(DEVICE, TRT_VERSION, sha(data), precision)
            cache.mkdir(exist_ok=True)
            (cache / f"{key}.engine").write_bytes(b"engine")
            (cache / f"{key}.json").write_text("{}")
    argv = ["--bundle", str(bundle.root), "--cache", str(cache), "--device-name", DEVICE, *argv]
    assert export_trt.run(parse(argv)) == 0
    assert fake_tensorrt == expected
    assert capsys.readouterr().out.count(": cached ") == cached


def test_command_refuses_a_bad_bundle(tmp_path, fake_tensorrt, capsys):
    assert export_trt.run(parse(["--bundle", str(tmp_path), "--device-name", DEVICE])) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert fake_tensorrt == []


# --- the build sequence, against a stand-in for TensorRT ------------------------------------


class FakeBuilder:
    """Records what the exporter asks of TensorRT; calibrates the way TensorRT does (cache first)."""

    def __init__(self, serialized=b"ENGINE", input_name="images"):
        self.serialized, self.input_name = serialized, input_name
        self.flags, self.profiles, self.calibration_profile, self.workspace, self.batches = set(), [], None, None, 0

    def create_network(self, flags):
        assert flags == 0
        return SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(name=self.input_name))

    def create_optimization_profile(self):
        profile = SimpleNamespace(shapes=None)
        profile.set_shape = lambda name, *shapes: setattr(profile, "shapes", (name, *shapes))
        return profile

    def create_builder_config(self):
        config = SimpleNamespace(int8_calibrator=None)
        config.set_memory_pool_limit = lambda pool, size: setattr(self, "workspace", (pool, size))
        config.add_optimization_profile = self.profiles.append
        config.set_flag = self.flags.add
        config.set_calibration_profile = lambda profile: setattr(self, "calibration_profile", profile.shapes)
        return config

    def build_serialized_network(self, network, config):
        calibrator = config.int8_calibrator
        if calibrator is not None and calibrator.read_calibration_cache() is None:
            while calibrator.get_batch(["images"]) is not None:
                self.batches += 1
            calibrator.write_calibration_cache(b"scales")
        return None if self.serialized is None else bytearray(self.serialized)


@pytest.fixture
def fake_builder(monkeypatch):
    holder = SimpleNamespace(builder=FakeBuilder())

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0 if holder.parses else 1

        def parse_from_file(self, path):
            return holder.parses

        def get_error(self, i):
            return "Unsupported ONNX opset"

    holder.parses = True
    fake = SimpleNamespace(
        __version__=TRT_VERSION, Logger=lambda level: None, Builder=lambda logger: holder.builder, OnnxParser=Parser,
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"), BuilderFlag=SimpleNamespace(FP16="fp16", INT8="int8"))
    fake.Logger.WARNING = 2
    monkeypatch.setattr(export_trt, "trt", fake)
    monkeypatch.setattr(export_trt, "CudaMemory", FakeMemory)
    return holder


def test_int8_build_calibrates_on_real_images_then_reuses_the_scales(bundle, tmp_path, data, fake_builder, monkeypatch):
    build = export_trt.plan_builds(bundle, tmp_path / "engines", DEVICE, TRT_VERSION, ["int8"])[0]
    export_trt.build_engine(build, bundle, 256, data)
    builder = fake_builder.builder
    assert builder.flags == {"fp16", "int8"} and builder.workspace == ("workspace", 256 << 20)
    assert [p.shapes for p in builder.profiles] == [("images", (1, 3, 64, 96), (1, 3, 64, 96), (4, 3, 64, 96))]
    assert builder.calibration_profile == ("images", (8, 3, 64, 96), (8, 3, 64, 96), (8, 3, 64, 96))
    assert builder.batches == len(export_trt.default_images(data).detector_calibration) // 8 > 0
    assert build.engine.read_bytes() == b"ENGINE"  # no metadata in front of the engine
    assert build.calibration_cache.read_bytes() == b"scales"
    assert json.loads(build.sidecar.read_text())["key"] == build.key

    fake_builder.builder = FakeBuilder(b"ENGINE2")
    monkeypatch.setattr(export_trt, "default_images", lambda data: pytest.fail("images read despite the cache"))
    export_trt.build_engine(build, bundle, 256, data)
    assert fake_builder.builder.batches == 0 and build.engine.read_bytes() == b"ENGINE2"


def test_fp16_build_sets_no_calibration(bundle, tmp_path, fake_builder):
    build = export_trt.plan_builds(bundle, tmp_path, DEVICE, TRT_VERSION, ["fp16"])[1]
    export_trt.build_engine(build, bundle, 64, tmp_path / "no-data")
    builder = fake_builder.builder
    assert builder.flags == {"fp16"} and builder.calibration_profile is None
    assert [p.shapes for p in builder.profiles] == [("images", (1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([build.engine.name, build.sidecar.name, "bundle"])


@pytest.mark.parametrize(
    ("parses", "builder", "message"),
    [
        (False, FakeBuilder(), "cannot parse detector.fp32.onnx: Unsupported ONNX opset"),
        (True, FakeBuilder(input_name="input"), r"inputs \['input'\], expected one input named 'images'"),
        (True, FakeBuilder(serialized=None), "could not build the fp16 engine of detector"),
    ],
)
def test_failed_build_leaves_no_engine(bundle, tmp_path, fake_builder, parses, builder, message):
    fake_builder.parses, fake_builder.builder = parses, builder
    build = export_trt.plan_builds(bundle, tmp_path / "engines", DEVICE, TRT_VERSION, ["fp16"])[0]
    with pytest.raises(RuntimeError, match=message):
        export_trt.build_engine(build, bundle, 64, tmp_path)
    assert not (tmp_path / "engines").exists()


def test_calibration_error_fails_the_build(bundle, tmp_path, fake_builder):
    build = export_trt.plan_builds(bundle, tmp_path / "engines", DEVICE, TRT_VERSION, ["int8"])[0]
    with pytest.raises(RuntimeError, match="INT8 calibration of detector failed: .*missing") as info:
        export_trt.build_engine(build, bundle, 64, tmp_path / "missing")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert not build.engine.exists() and not build.calibration_cache.exists()


def test_one_engine_for_a_graph_the_classifier_and_embedder_share(bundle_dir, tmp_path):
    plan = export_trt.plan_builds(load_bundle(bundle_dir), tmp_path, DEVICE, TRT_VERSION, ["int8"])
    assert [b.task for b in plan] == ["detector", "classifier"]
    assert plan[1].onnx.name == "crops.fp32.onnx"

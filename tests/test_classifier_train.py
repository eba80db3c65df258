"""Classifier fine-tuning on real MLWIC frames, and the metrics it reports."""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext as does_not_raise
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from edge.runtime.preprocess import to_tensor
from export.onnx_export import export_onnx, torch_vs_onnx
from train.classifier import TrainConfig, evaluate, frozen_forward, load_crop, train_classifier, trainable_forward
from train.datasets import read_csv
from train.metrics import auc, classification_report, confusion_matrix, roc_curve
from train.models.classifier import CROP_INPUT
from train.splits import FRAME_NUMBER, split_records

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "efficientnet_lite0.pth"  # where the `pretrained` fixture puts it


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("y_true", "y_pred", "k", "expected", "raises"),
    [
        ([0, 1, 2, 2], [0, 2, 2, 1], 3, [[1, 0, 0], [0, 0, 1], [0, 1, 1]], does_not_raise()),
        ([1, 1], [1, 1], 2, [[0, 0], [0, 2]], does_not_raise()),
        ([], [], 2, [[0, 0], [0, 0]], does_not_raise()),
        ([0, 1], [0], 2, None, pytest.raises(ValueError)),
        ([0, 2], [0, 1], 2, None, pytest.raises(ValueError)),
        ([0, -1], [0, 1], 2, None, pytest.raises(ValueError)),
    ],
)
def test_confusion_matrix(y_true, y_pred, k, expected, raises):
    with raises:
        assert confusion_matrix(y_true, y_pred, k).tolist() == expected


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "top1", "macro_f1", "per_class"),
    [
        # a: P 2/2 R 2/3 F1 .8; b: P 1/2 R 1/2 F1 .5; c: P 1/2 R 1 F1 2/3
        ([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"], 4 / 6, (0.8 + 0.5 + 2 / 3) / 3,
         {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)}),
        # d neither true nor predicted: left out of the macro average
        ([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c", "d"], 4 / 6, (0.8 + 0.5 + 2 / 3) / 3,
         {"d": (0.0, 0.0, 0.0, 0)}),
        # b never predicted: precision 0, counted in the macro average with F1 0
        ([0, 1], [0, 0], ["a", "b"], 0.5, (2 / 3 + 0) / 2, {"a": (0.5, 1.0, 2 / 3, 1), "b": (0.0, 0.0, 0.0, 1)}),
        # b predicted but absent from the truth: F1 0, counted
        ([0, 0], [0, 1], ["a", "b"], 0.5, (2 / 3 + 0) / 2, {"a": (1.0, 0.5, 2 / 3, 2), "b": (0.0, 0.0, 0.0, 0)}),
        # an empty split (e.g. no night frames): all zero, no error
        ([], [], ["a", "b"], 0.0, 0.0, {"a": (0.0, 0.0, 0.0, 0), "b": (0.0, 0.0, 0.0, 0)}),
    ],
)
def test_classification_report(y_true, y_pred, labels, top1, macro_f1, per_class):
    report = classification_report(y_true, y_pred, labels)
    assert report["n"] == len(y_true)
    assert report["top1"] == pytest.approx(top1)
    assert report["macro_f1"] == pytest.approx(macro_f1)
    for label, (precision, recall, f1, support) in per_class.items():
        got = report["per_class"][label]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1))
        assert got["support"] == support


@pytest.mark.parametrize(
    ("y_pred", "macro_f1", "reference"),
    [
        ([0, 0, 1, 1], 1.0, 1.0),
        # a stray prediction of c, a class no frame holds: already a recall miss of b; the first
        # average counts it again as a class of F1 0, the reference one does not
        ([0, 0, 1, 2], (1.0 + 2 / 3 + 0.0) / 3, (1.0 + 2 / 3) / 2),
    ],
)
def test_macro_f1_over_the_reference_classes_counts_a_stray_label_once(y_pred, macro_f1, reference):
    report = classification_report([0, 0, 1, 1], y_pred, ["a", "b", "c"])
    assert report["macro_f1"] == pytest.approx(macro_f1)
    assert report["macro_f1_reference"] == pytest.approx(reference)


@pytest.mark.parametrize(
    ("scores", "positives", "fpr", "tpr", "area", "raises"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], [0, 0, 0.5, 0.5, 1], [0, 0.5, 0.5, 1, 1], 0.75, does_not_raise()),
        # a tie between a positive and a negative moves as one step (counts half)
        ([0.5, 0.5, 0.2], [1, 0, 0], [0, 0.5, 1], [0, 1, 1], 0.75, does_not_raise()),
        ([0.9, 0.8, 0.1], [1, 1, 0], [0, 0, 0, 1], [0, 0.5, 1, 1], 1.0, does_not_raise()),
        ([0.9, 0.1], [0, 1], [0, 1, 1], [0, 0, 1], 0.0, does_not_raise()),
        # collinear points stay (no drop_intermediate): one point per distinct score
        ([0.9, 0.8, 0.7, 0.1], [1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 1 / 3, 2 / 3, 1, 1], 1.0, does_not_raise()),
        ([0.9, 0.1], [1, 1], None, None, None, pytest.raises(ValueError)),
        ([0.9, 0.1], [1], None, None, None, pytest.raises(ValueError)),
        ([0.9, 0.1], [0, 0], None, None, None, pytest.raises(ValueError)),
    ],
)
def test_roc_curve_and_auc(scores, positives, fpr, tpr, area, raises):
    with raises:
        got_fpr, got_tpr, thresholds = roc_curve(scores, positives)
        assert got_fpr.tolist() == pytest.approx(fpr)
        assert got_tpr.tolist() == pytest.approx(tpr)
        assert thresholds[0] == np.inf and np.all(np.diff(thresholds) < 0)
        assert auc(got_fpr, got_tpr) == pytest.approx(area)


@pytest.mark.parametrize(
    "x, y",
    [
        ([0, 1, 0.5], [0, 1, 1]),  # not monotonic
        ([1, 0], [1, 1]),  # decreasing: scikit-learn would take it, here it is a reversed curve
        ([0], [1]),  # one point
        ([0, 1], [0, 1, 1]),  # lengths differ
    ],
)
def test_auc_refuses_bad_curves(x, y):
    with pytest.raises(ValueError):
        auc(x, y)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def mlwic(data: Path) -> dict:
    """MLWIC CA-01 split by burst (frame numbers: no EXIF time), seed 0."""
    records = list(read_csv(data / "species" / "mlwic_ca01" / "labels.csv"))
    splits = split_records(records, by="event", seed=0, sequence_from_filename=FRAME_NUMBER)
    return {"labels": sorted({r.label for r in records}), **splits}


@pytest.fixture(scope="module")
def quick_run(mlwic: dict, pretrained, tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("features")
    config = TrainConfig.quick(progress=False)
    model, history = train_classifier(mlwic["train"], mlwic["val"], mlwic["labels"], WEIGHTS, config, cache)
    return {"model": model, "history": history, "cache": cache, "config": config}


def test_quick_training_beats_majority_baseline(mlwic, quick_run):
    report = evaluate(quick_run["model"], mlwic["val"], mlwic["labels"])
    majority, _ = Counter(r.label for r in mlwic["train"]).most_common(1)[0]
    baseline = np.mean([r.label == majority for r in mlwic["val"]])
    print(f"quick run: val top-1 {report['top1']:.3f} (majority {baseline:.3f}), macro-F1 {report['macro_f1']:.3f}, "
          f"empty-vs-animal AUC {report['empty_vs_animal']['auc']:.3f}, {quick_run['history'].seconds:.1f} s")
    assert report["n"] == len(mlwic["val"]) and not report["failures"]
    assert report["top1"] > baseline + 0.1
    assert 0.5 < report["empty_vs_animal"]["auc"] <= 1.0


def test_model_output_contract(mlwic, quick_run):
    model = quick_run["model"]
    x = torch.rand(3, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        probs = model(x)
    assert model.labels == mlwic["labels"]
    assert probs.shape == (3, len(mlwic["labels"]))
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)


def test_exported_module_computes_what_was_trained(quick_run):
    """The whole backbone equals the cached front followed by the trained back."""
    backbone = quick_run["model"].backbone
    split = len(backbone.blocks) - quick_run["config"].trainable_blocks
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        whole = backbone(x)
        parts = trainable_forward(backbone, frozen_forward(backbone, x, split), split)
    assert torch.allclose(whole, parts, atol=1e-4)
    assert not any(type(m).__name__ == "Conv2dSame" for m in backbone.modules())  # padding frozen for export


def test_feature_cache_is_reused(mlwic, quick_run):
    first = quick_run["history"]
    n = quick_run["config"].max_train + len(mlwic["val"])
    assert (first.cache_hits, first.cache_misses) == (0, n)
    _, again = train_classifier(mlwic["train"], mlwic["val"], mlwic["labels"], WEIGHTS,
                                quick_run["config"].model_copy(update={"epochs": 1}), quick_run["cache"])
    assert (again.cache_hits, again.cache_misses) == (n, 0)


def test_feature_cache_separates_split_points(mlwic, quick_run):
    """Features cut at another block are not taken for these: a fresh folder, all misses."""
    config = quick_run["config"].model_copy(update={"epochs": 1, "trainable_blocks": 2, "max_train": 4})
    _, history = train_classifier(mlwic["train"], mlwic["val"][:4], mlwic["labels"], WEIGHTS, config,
                                  quick_run["cache"])
    assert (history.cache_hits, history.cache_misses) == (0, 8)


@pytest.mark.parametrize(
    ("overrides", "raises"),
    [
        ({}, does_not_raise()),
        ({"image_size": 256}, pytest.raises(ValidationError)),
        ({"trainable_blocks": 8}, pytest.raises(ValidationError)),
        ({"epoch": 3}, pytest.raises(ValidationError)),
    ],
)
def test_train_config(overrides, raises):
    with raises:
        TrainConfig(**overrides)


def test_unknown_label_is_refused(mlwic, pretrained):
    with pytest.raises(ValueError, match="outside"):
        train_classifier(mlwic["train"][:5], mlwic["val"][:5], ["Empty"], WEIGHTS, TrainConfig.quick(progress=False))


def test_trained_model_exports_to_onnx(mlwic, quick_run, tmp_path):
    batch = to_tensor([load_crop(r)[0] for r in mlwic["val"][:4]], CROP_INPUT)
    path = export_onnx(quick_run["model"], torch.from_numpy(batch), tmp_path / "classifier.onnx", "probs")
    assert max(diff for diff, _ in torch_vs_onnx(quick_run["model"], path, batch)) < 1e-4

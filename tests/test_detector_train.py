"""Detector fine-tuning: the YOLOX loss, SimOTA, class expansion, a quick real fine-tune and AP."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.capture.decode import decode_image
from edge.runtime.detections import Detections
from edge.runtime.yolox import box_iou, decode_yolox, make_grid
from train.detector import (
    DetectorConfig,
    average_precision,
    box_images,
    detect,
    detector_class,
    detector_loss,
    detector_records,
    evaluate_detector,
    expand_classes,
    prepare,
    set_trainable,
    split_detector_records,
    train_detector,
    train_mode,
)
from train.detector_data import split_boxes
from train.detector_eval import average_precisions
from train.models.yolox import STRIDES, load_yolox
from train.models.yolox_loss import AnchorGrid, Targets, dynamic_k_matching, simota_assign, yolox_loss
from train.records import Record
from train.splits import StaleSplitError

does_not_raise = contextlib.nullcontext
SIZE = (128, 160)  # a small input for the exact loss arithmetic
BOX = (40.0, 40.0, 104.0, 88.0)  # centre (72, 64), 64 x 48 px
# The bear in ena24_small/8831.jpg, drawn by hand on the frame (normalised xyxy). The box in
# md_annotations.json is a rough placeholder twice the bear's size, so it is no reference.
BEAR = (0.347, 0.475, 0.572, 0.697)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def constructed_output(point_box: tuple[float, float, float, float] | None, logit: float = 10.0) -> torch.Tensor:
    """Raw (1, A, 6) output: every point a tiny box with objectness and class logit -10, except
    the stride-8 point at cell (9, 8), which predicts ``point_box`` with logits ``logit``."""
    grid, strides = make_grid(SIZE, list(STRIDES))
    raw = torch.full((1, len(grid), 6), -10.0, dtype=torch.float64)  # float64: exact softplus sums
    raw[..., 2:4] = -5.0
    if point_box is not None:
        j = int(np.flatnonzero((grid[:, 0] == 9) & (grid[:, 1] == 8) & (strides[:, 0] == 8))[0])
        x1, y1, x2, y2 = point_box
        raw[0, j, :4] = torch.tensor([(x1 + x2) / 16 - 9, (y1 + y2) / 16 - 8, math.log((x2 - x1) / 8),
                                      math.log((y2 - y1) / 8)], dtype=torch.float64)
        raw[0, j, 4:] = logit
    return raw


def one_box() -> list[Targets]:
    return [Targets.from_numpy([BOX], [0])]


# ---------------------------------------------------------------- loss


def test_constructed_output_decodes_to_the_box_as_the_edge_decodes_it():
    grid, strides = make_grid(SIZE, list(STRIDES))
    boxes, scores = decode_yolox(constructed_output(BOX)[0].numpy(), grid, strides)
    best = int(scores[:, 0].argmax())
    np.testing.assert_allclose(boxes[best], BOX, atol=1e-3)


def test_exact_prediction_costs_only_the_background_logits():
    parts = yolox_loss(constructed_output(BOX), one_box(), AnchorGrid.for_size(SIZE))
    points = len(AnchorGrid.for_size(SIZE))
    assert parts.num_foreground == 1
    assert float(parts.iou) == pytest.approx(0.0, abs=1e-5)
    # every point's objectness is right by a logit of 10, and so is the foreground class
    assert float(parts.objectness) == pytest.approx(points * softplus(-10), rel=1e-3)
    assert float(parts.classification) == pytest.approx(softplus(-10), rel=1e-3)


def test_shifted_box_costs_more_than_the_exact_one():
    grid = AnchorGrid.for_size(SIZE)
    exact = yolox_loss(constructed_output(BOX), one_box(), grid)
    shifted = yolox_loss(constructed_output((48.0, 40.0, 112.0, 88.0)), one_box(), grid)  # 8 px right: IoU 0.78
    assert float(shifted.iou) == pytest.approx(5 * (1 - (56 * 48 / (2 * 64 * 48 - 56 * 48)) ** 2), rel=1e-3)
    assert float(shifted.total) > float(exact.total) + 1.0


def test_image_without_boxes_pays_only_for_false_positives():
    grid = AnchorGrid.for_size(SIZE)
    points = len(grid)
    empty = [Targets.from_numpy(np.zeros((0, 4)), np.zeros(0))]
    quiet = yolox_loss(constructed_output(None), empty, grid)
    false_positive = yolox_loss(constructed_output(BOX, logit=5.0), empty, grid)
    for parts in (quiet, false_positive):
        assert parts.num_foreground == 0 and math.isfinite(float(parts.total))
        assert float(parts.iou) == 0.0 and float(parts.classification) == 0.0
    assert float(quiet.objectness) == pytest.approx(points * softplus(-10), rel=1e-3)
    expected = (points - 1) * softplus(-10) + softplus(5.0)
    assert float(false_positive.objectness) == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def checkpoint(pretrained) -> Path:
    return pretrained["yolox_tiny_camera_trap"]


@pytest.fixture(scope="module")
def voc_elephants(data) -> list[Record]:
    """The VOC photo with five hand-boxed elephants."""
    return [r for r in detector_records(data, sources=("voc",)) if r.path.name == "2014_000002.jpg"]


def elephant_loss(model, records: list[Record], config: DetectorConfig):
    """The YOLOX loss parts of the model on the elephant photo, and the prepared image."""
    image = prepare(box_images(records, config.classes)[0], config.spec)
    x = torch.from_numpy(image.pixels.transpose(2, 0, 1)[None].astype(np.float32))
    targets = [Targets.from_numpy(image.xyxy, image.class_id)]
    return yolox_loss(model(x), targets, AnchorGrid.for_size(config.input_size)), image


def test_gradients_reach_the_head_of_the_real_model(checkpoint, voc_elephants):
    config = DetectorConfig.quick()
    model = expand_classes(load_yolox(checkpoint), config.classes).eval()
    parts, image = elephant_loss(model, voc_elephants, config)
    parts.total.backward()
    assert parts.num_foreground >= len(image.xyxy)
    for conv in (model.head.reg_preds[0], model.head.obj_preds[0], model.head.cls_preds[0]):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        assert torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("freeze", ["none", "backbone"])
def test_freeze_decides_what_a_step_trains_and_batchnorm_statistics_stay(checkpoint, voc_elephants, freeze):
    config = DetectorConfig.quick(freeze=freeze)
    model = expand_classes(load_yolox(checkpoint), config.classes)
    optimizer = torch.optim.AdamW(set_trainable(model, config.freeze), lr=1e-3)
    train_mode(model, config)
    stem, head, norm = (model.backbone.backbone.stem.conv.conv, model.head.cls_preds[0],
                        model.backbone.backbone.dark2[0].bn)
    before = [t.detach().clone() for t in (stem.weight, head.weight, norm.running_mean)]
    elephant_loss(model, voc_elephants, config)[0].total.backward()
    optimizer.step()
    assert (not torch.equal(stem.weight, before[0])) == (freeze == "none")
    assert not torch.equal(head.weight, before[1])
    assert torch.equal(norm.running_mean, before[2])  # small batches would skew them (update_bn: false)
    assert DetectorConfig().freeze == "none"


# ---------------------------------------------------------------- SimOTA


def test_simota_gives_every_real_box_a_point_inside_it(checkpoint, voc_elephants):
    config = DetectorConfig.quick()
    image = prepare(box_images(voc_elephants, config.classes)[0], config.spec)
    assert len(image.xyxy) == 5
    model = expand_classes(load_yolox(checkpoint), config.classes).eval()
    grid = AnchorGrid.for_size(config.input_size)
    with torch.no_grad():
        raw = model(torch.from_numpy(image.pixels.transpose(2, 0, 1)[None].astype(np.float32)))[0]
    assignment = simota_assign(raw, Targets.from_numpy(image.xyxy, image.class_id), grid)
    centres = grid.centres()[assignment.foreground].numpy()
    assert len(assignment.gt_index) == int(assignment.foreground.sum())
    for k, (x1, y1, x2, y2) in enumerate(image.xyxy):
        mine = centres[assignment.gt_index.numpy() == k]
        inside = (mine[:, 0] > x1) & (mine[:, 0] < x2) & (mine[:, 1] > y1) & (mine[:, 1] < y2)
        assert inside.any(), f"box {k} got no point inside it"


@pytest.mark.parametrize(
    "cost, ious, chosen, owner",
    [
        # both boxes want point 1 most (k = 1 each): the cheaper box 1 keeps it, box 0 loses it
        ([[5.0, 1.0, 9.0], [6.0, 0.5, 9.0]], [[0.5, 0.9, 0.1], [0.1, 0.9, 0.1]], [False, True, False], [1]),
        # k = int(0.9 + 0.8 + 0.7) = 2 for box 0 (points 0, 1), 1 for box 1 (point 0, cheaper for it)
        ([[1.0, 2.0, 9.0], [0.5, 9.0, 3.0]], [[0.9, 0.8, 0.7], [0.6, 0.1, 0.2]], [True, True, False], [1, 0]),
        # no conflict: box 0 takes points 0 and 1, box 1 point 2
        ([[1.0, 2.0, 9.0], [3.0, 9.0, 0.5]], [[0.9, 0.8, 0.7], [0.2, 0.1, 0.6]], [True, True, True], [0, 0, 1]),
    ],
)
def test_dynamic_k_gives_each_point_to_one_box(cost, ious, chosen, owner):
    picked, gt_index = dynamic_k_matching(torch.tensor(cost), torch.tensor(ious))
    assert picked.tolist() == chosen
    assert gt_index.tolist() == owner


# ---------------------------------------------------------------- classes


@pytest.mark.parametrize(
    "label, classes, expected, raises",
    [
        ("american_black_bear", ["animal", "person", "vehicle"], 0, does_not_raise()),
        ("Human", ["animal", "person", "vehicle"], 1, does_not_raise()),
        ("people", ["person", "animal"], 0, does_not_raise()),
        ("truck", ["animal", "person", "vehicle"], 2, does_not_raise()),
        ("empty", ["animal"], None, does_not_raise()),
        ("Human", ["animal"], 0, does_not_raise()),  # a single-class detector boxes people as its one class
        ("truck", ["animal"], 0, does_not_raise()),
        ("blank", ["animal"], None, does_not_raise()),
        ("car", ["animal", "person"], None, pytest.raises(ValueError, match="vehicle")),
        ("zebra", ["person"], None, pytest.raises(ValueError, match="animal")),
    ],
)
def test_detector_class(label, classes, expected, raises):
    with raises:
        assert detector_class(label, classes) == expected


@pytest.mark.parametrize("classes", [["animal", "person", "vehicle"], ["person", "animal"]])
def test_expand_classes_keeps_the_animal_score_on_a_real_frame(data, checkpoint, classes):
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=960).rgb
    pretrained = load_yolox(checkpoint)
    torch.manual_seed(0)
    expanded = expand_classes(load_yolox(checkpoint), classes).eval()
    size = DetectorConfig.quick().input_size
    reference, = detect(pretrained, [rgb], size, 0.25)
    found, = detect(expanded, [rgb], size, 0.25)
    assert len(reference) >= 1
    animal = classes.index("animal")
    np.testing.assert_allclose(found.xyxy, reference.xyxy, atol=1e-3)
    np.testing.assert_allclose(found.confidence, reference.confidence, atol=1e-6)
    assert (found.class_id == animal).all()
    for conv in expanded.head.cls_preds:  # new classes start at YOLOX's 1% prior
        others = [k for k in range(len(classes)) if k != animal]
        np.testing.assert_allclose(conv.bias[others].detach().numpy(), math.log(0.01 / 0.99), rtol=1e-6)


# ---------------------------------------------------------------- quick fine-tune on real boxes


@pytest.fixture(scope="module")
def fine_tuned(data, checkpoint):
    """Quick fine-tune on the VOC boxes; the model, history, split, val report and wall time.

    Not on the ENA24 boxes: md_annotations.json holds placeholder boxes around the frame centre
    (most miss the animal), and training on them teaches the detector to lose real animals.
    """
    splits = split_detector_records(detector_records(data, sources=("voc",)), seed=0)
    config = DetectorConfig.quick(progress=False)
    tick = time.perf_counter()
    model, history = train_detector(splits["train"], splits["val"], checkpoint, config)
    report = evaluate_detector(model, splits["val"], config.classes, config.input_size)
    return model, history, splits, config, report, time.perf_counter() - tick


def test_split_keeps_each_image_on_one_side(fine_tuned):
    _, _, splits, _, _, _ = fine_tuned
    train, val = ({r.path for r in splits[name]} for name in ("train", "val"))
    assert not train & val
    assert len(val) * 4 >= len(train | val)
    assert len(val) >= 2


def test_split_puts_every_dataset_on_both_sides(data):
    splits = split_detector_records(detector_records(data, sources=("voc", "mlwic")), seed=1)
    for side in ("train", "val"):
        assert {r.source for r in splits[side]} == {"mlwic", "voc"}


def test_box_split_is_leak_free_by_sequence_keeps_fixed_images_and_is_reused(data, tmp_path):
    """Missouri sequences never straddle splits; an image the species split holds out stays held out
    for the detector too; the split is saved and read back the same."""
    records = detector_records(data)
    mlwic = sorted({r.path for r in records if r.source == "mlwic"})
    fixed = {p.resolve(): "test" for p in mlwic[::2]} | {p.resolve(): "train" for p in mlwic[1::2]}
    splits = split_boxes(records, tmp_path / "boxes.csv", seed=0, fixed=fixed, root=data)
    sequences = {name: {r.event for r in rs if r.source == "missouri"} for name, rs in splits.items()}
    assert all(sequences.values()) and not (sequences["train"] & sequences["val"]) \
        and not (sequences["train"] & sequences["test"]) and not (sequences["val"] & sequences["test"])
    assert {r.path for r in splits["test"] if r.source == "mlwic"} == set(mlwic[::2])
    assert {r.source for r in splits["train"]} == {"missouri", "voc", "mlwic"}
    again = split_boxes(records, tmp_path / "boxes.csv", seed=5, fixed=fixed, root=data)
    assert {n: [r.path for r in rs] for n, rs in again.items()} == {n: [r.path for r in rs] for n, rs in splits.items()}
    # Missouri read as a species source too: the species split then decides its frames, and it must
    # give each the split the box split had saved
    held = {r.path.resolve(): name for name, rs in splits.items() for r in rs if r.source == "missouri"}
    pinned = split_boxes(records, tmp_path / "boxes.csv", seed=5, fixed=fixed | held, root=data)
    assert {n: [r.path for r in rs] for n, rs in pinned.items()} == {n: [r.path for r in rs] for n, rs in splits.items()}
    moved = next(iter(held))
    other = next(s for s in ("train", "val", "test") if s != held[moved])
    with pytest.raises(StaleSplitError, match="now in another split"):
        split_boxes(records, tmp_path / "boxes.csv", seed=5, fixed=fixed | held | {moved: other}, root=data)


def test_mlwic_boxes_are_the_checked_people_and_vehicles(data):
    """The shipped MLWIC boxes: people and vehicles only on frames labelled so (or both); animal boxes
    only on animal frames of the species *train* split (hard negatives for the person and vehicle
    classes; never a held-out frame); every frame reviewed, and the MLWIC empties as negatives."""
    import csv
    import json

    from train.config import MLWIC_BOXES, SOURCE_INDEX, TrainingConfig, read_species
    from train.splits import DEFAULT_FRACTIONS, FRAME_NUMBER, split_records

    document = json.loads(MLWIC_BOXES.read_text())
    labels = {row["file"]: row["label"] for row in csv.DictReader((data / "species/mlwic_ca01/labels.csv").open())}
    names = document["detection_categories"]
    boxed = [im for im in document["images"] if im["detections"]]
    assert set(document["info"]["review"]) == {im["file"] for im in boxed}
    people = [im for im in boxed if labels[im["file"]] in ("Human", "Vehicle")]
    animals = [im for im in boxed if labels[im["file"]] not in ("Human", "Vehicle")]
    assert {names[d["category"]] for im in people for d in im["detections"]} == {"person", "vehicle"}
    assert {names[d["category"]] for im in animals for d in im["detections"]} == {"animal"}
    assert len(people) == 55 and len(animals) == 113 and "Empty" not in {labels[im["file"]] for im in animals}
    config = TrainingConfig.default(data_root=data)  # the split `trapedge train` makes of the default data:
    records, _ = read_species(config)  # source by source, MLWIC's CSV first and on its own
    records = [r for r in records if r.extra[SOURCE_INDEX] == 0]
    split = split_records(records, config.split_by, DEFAULT_FRACTIONS, config.seed, sequence_from_filename=FRAME_NUMBER)
    train = {r.path.relative_to(data / "species/mlwic_ca01").as_posix() for r in split["train"]}
    assert all(im["file"] in train for im in animals)
    assert all(labels[im["file"]] == "Empty" for im in document["images"] if not im["detections"])
    assert sum(1 for im in document["images"] if not im["detections"]) == 343


def test_quick_fine_tune_runs_end_to_end_in_time(fine_tuned):
    _, history, _, config, _, seconds = fine_tuned
    assert seconds < 90
    assert 1 <= len(history.epochs) <= config.epochs and not history.failures


def test_fine_tuning_lowers_the_val_loss(fine_tuned, checkpoint):
    model, history, splits, config, _, _ = fine_tuned
    torch.manual_seed(config.seed)
    untuned = expand_classes(load_yolox(checkpoint), config.classes)
    before = detector_loss(untuned, splits["val"], config)
    after = detector_loss(model, splits["val"], config)
    assert after < before
    assert history.initial_val_loss == pytest.approx(before, rel=1e-4)
    assert after == pytest.approx(min(e.val_loss for e in history.epochs), rel=1e-4)


def test_evaluation_report_of_the_fine_tuned_model(fine_tuned):
    _, _, splits, _, report, _ = fine_tuned
    boxed = [r for r in splits["val"] if r.bbox is not None]
    assert report["images"] == len({r.path for r in splits["val"]})
    assert report["boxes"] == len(boxed) == report["boxes_per_class"]["animal"]
    assert set(report["ap50"]) == {"animal"}
    assert 0.0 <= report["ap50"]["animal"] <= 1.0 and report["map50"] == report["ap50"]["animal"]
    assert 0.0 <= report["recall"] <= 1.0 and report["recall_threshold"] == 0.25


def test_fine_tuned_model_still_finds_the_bear(fine_tuned, data):
    model, _, _, config, _, _ = fine_tuned
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=960).rgb
    found, = detect(model, [rgb], config.input_size, 0.25)
    h, w = rgb.shape[:2]
    bear = np.array(BEAR, np.float32) * [w, h, w, h]
    animals = found.xyxy[found.class_id == 0]
    assert len(animals) and box_iou(bear, animals).max() >= 0.5


# ---------------------------------------------------------------- AP on hand-made cases


def dets(boxes, scores=None, classes=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return Detections(boxes, np.ones(n) if scores is None else scores, np.zeros(n) if classes is None else classes)


A, B = [0, 0, 10, 10], [20, 20, 30, 30]
A_LOW = [0, 2, 10, 12]  # IoU with A 80/120 = 0.67


# COCO AP is the mean, over the 101 recall points r = 0, 0.01, ..., 1, of the best precision at
# any recall >= r (0 past the highest recall reached).
@pytest.mark.parametrize(
    "truths, predictions, expected",
    [
        ([dets([A])], [dets([A])], 1.0),  # perfect: precision 1 at every recall point
        # one of two found, the only detection right: precision 1 at r = 0 ... 0.50, then 0: 51/101
        # (VOC's all-point area gave 0.5)
        ([dets([A, B])], [dets([A])], 51 / 101),
        # a false positive ranked first: (recall, precision) (0, 0) then (1, 1/2), envelope 1/2 everywhere
        ([dets([A])], [dets([B, A], [0.9, 0.8])], 0.5),
        ([dets([A])], [dets([A, B], [0.9, 0.8])], 1.0),  # a false positive ranked after
        ([dets([A])], [dets([A, A], [0.9, 0.8])], 1.0),  # a duplicate is a false positive, after
        ([dets([A]), dets([B])], [dets([B]), dets([A])], 0.0),  # right box, wrong image
        ([dets([A])], [dets([A], classes=[1])], 0.0),  # wrong class
        ([dets([A]), dets([B])], [dets([[0, 0, 10, 14]], [0.7]), dets([B], [0.9])], 1.0),  # IoU 0.71 counts
        ([dets([A])], [dets([[0, 0, 10, 21]])], 0.0),  # IoU 0.48 does not
        # the second box's best truth (A, IoU 0.90) is taken, so it matches A_LOW (IoU 0.74): both
        # found (VOC's rule, best truth or nothing, gave 0.5)
        ([dets([A, A_LOW])], [dets([A, [0, 0.5, 10, 10.5]], [0.9, 0.8])], 1.0),
        # 99 false positives, then the hit: precision 1/100 at every recall point
        ([dets([A])], [dets([B] * 99 + [A], [0.9] * 99 + [0.1])], 1 / 100),
        # 100 false positives push the hit past maxDets 100 of its image: not counted
        ([dets([A])], [dets([B] * 100 + [A], [0.9] * 100 + [0.1])], 0.0),
        ([dets([A]), dets([], classes=[])], [dets([], classes=[]), dets([], classes=[])], 0.0),  # nothing found
        ([dets([], classes=[])], [dets([A])], None),  # no truth: no AP
        ([], [], None),  # no images
    ],
)
def test_average_precision(truths, predictions, expected):
    assert average_precision(truths, predictions, 0) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    "truths, predictions, expected, expectation",
    [
        # class 0 found, class 1 never in the truth, class 2 missed
        ([dets([A, B], classes=[0, 2])], [dets([A, B], classes=[0, 1])], {0: 1.0, 1: None, 2: 0.0},
         does_not_raise()),
        ([dets([A])], [], None, pytest.raises(ValueError)),  # not one prediction per image
    ],
)
def test_average_precisions_per_class(truths, predictions, expected, expectation):
    with expectation:
        got = average_precisions(truths, predictions, [0, 1, 2])
        assert got == {k: None if v is None else pytest.approx(v) for k, v in expected.items()}


class Oracle(torch.nn.Module):
    """A stand-in detector whose raw output decodes to given boxes (input pixels), image by image."""

    def __init__(self, boxes_per_image: list[np.ndarray], size: tuple[int, int]):
        super().__init__()
        self.queue = list(boxes_per_image)
        self.grid, self.strides = make_grid(size, list(STRIDES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._raw(self.queue.pop(0)) for _ in range(len(x))])

    def _raw(self, boxes: np.ndarray) -> torch.Tensor:
        raw = np.full((len(self.grid), 8), -20.0, np.float32)
        for j, (x1, y1, x2, y2) in enumerate(boxes):  # point j predicts box j, class animal
            s = self.strides[j, 0]
            raw[j, :4] = [(x1 + x2) / 2 / s - self.grid[j, 0], (y1 + y2) / 2 / s - self.grid[j, 1],
                          np.log((x2 - x1) / s), np.log((y2 - y1) / s)]
            raw[j, 4:6] = 20.0
        return torch.from_numpy(raw)


def input_boxes(record_boxes: np.ndarray, hw: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Normalised boxes to letterboxed (top-left) input pixels, worked out here independently."""
    h, w = hw
    ratio = min(size[0] / h, size[1] / w)
    return record_boxes * np.array([w, h, w, h]) * ratio


# with 1 of 6 boxes found, precision is 1 up to recall 1/6, i.e. at the 17 recall points 0 ... 0.16
@pytest.mark.parametrize("found_in_second, expected_ap, expected_recall", [(True, 1.0, 1.0), (False, 17 / 101, 1 / 6)])
def test_evaluate_detector_exact_ap_on_real_images(data, found_in_second, expected_ap, expected_recall):
    """Giraffe photo (1 box) found; elephant photo (5 boxes) found or missed: AP 1 or 17/101."""
    records = [r for r in detector_records(data, sources=("voc",))
               if r.path.name in ("2014_000003.jpg", "2014_000002.jpg")]
    size = (288, 384)
    images = box_images(records, ["animal", "person", "vehicle"])
    boxes = [input_boxes(im.xyxy, decode_image(im.path).rgb.shape[:2], size) for im in images]
    if not found_in_second:
        boxes = [b if len(b) == 1 else b[:0] for b in boxes]
    report = evaluate_detector(Oracle(boxes, size), records, ["animal", "person", "vehicle"], size)
    assert (report["images"], report["boxes"]) == (2, 6)
    assert report["ap50"] == {"animal": pytest.approx(expected_ap)}
    assert report["map50"] == pytest.approx(expected_ap)
    assert report["recall"] == pytest.approx(expected_recall)


def test_detector_class_refuses_records_without_class(data):
    records = detector_records(data, sources=("voc",))
    with pytest.raises(ValueError, match="animal"):
        box_images(records, ["person"])


def test_repeat_factor_sampling_shows_rare_classes_more_often():
    from train.detector import repeat_factors, repeated
    from train.detector_data import InputImage

    def image(classes):
        return InputImage(np.zeros((2, 2, 3), np.float32), np.zeros((len(classes), 4), np.float32),
                          np.array(classes, np.int64), None, (2, 2))

    images = [image([0]) for _ in range(40)] + [image([0, 1]) for _ in range(2)] + [image([]) for _ in range(8)]
    factors = repeat_factors(images, 0.5)
    assert factors[0] == 1.0 and factors[-1] == 1.0
    assert factors[40] == pytest.approx(np.sqrt(0.5 / (2 / 50)))  # the rarest class of the image counts
    epoch = repeated(images, factors, np.random.default_rng(0))
    assert sum(im is images[40] for im in epoch) in (3, 4) and len(epoch) > len(images)


@pytest.mark.parametrize(
    ("tuned", "kept", "ships", "why"),
    [
        ({"ap50": {"animal": 0.65, "person": 0.3}, "recall_by_bucket": {"animal": 0.6},
          "frames_found": {"person": {"frames": 10, "found": 4}}}, 0.95, True, ""),
        ({"ap50": {"animal": 0.55, "person": 0.3}, "recall_by_bucket": {"animal": 0.6}}, 0.95, False, "animal AP50"),
        ({"ap50": {"animal": 0.65, "person": 0.3}, "recall_by_bucket": {"animal": 0.5}}, 0.95, False, "animal recall"),
        ({"ap50": {"animal": 0.65, "person": 0.0}, "recall_by_bucket": {"animal": 0.6}}, 0.95, False, "person AP50"),
        ({"ap50": {"animal": 0.65}, "recall_by_bucket": {"animal": 0.6},
          "frames_found": {"person": {"frames": 10, "found": 0}}}, 0.95, False, "person found in 0 of 10"),
        ({"ap50": {"animal": 0.65}, "recall_by_bucket": {"animal": 0.6}}, 0.85, False, "kept 0.850"),
    ],
)
def test_detector_verdict(tuned, kept, ships, why):
    from train.cli import detector_verdict

    base = {"ap50": {"animal": 0.6, "person": 0.0}, "recall_by_bucket": {"animal": 0.55},
            "frames_found": {"person": {"frames": 10, "found": 0}}}
    ok, reasons = detector_verdict(base, tuned, kept)
    assert ok is ships and (why in " ".join(reasons) if why else not reasons)


@pytest.mark.parametrize(("boxed", "ships"), [(4, True), (3, False)])
def test_a_single_class_detector_must_box_no_fewer_person_frames(boxed, ships):
    from train.cli import detector_verdict

    scores = {"ap50": {"animal": 0.6}, "recall_by_bucket": {"animal": 0.55}}
    base = {**scores, "frames_found": {"person": {"frames": 10, "found": 4, "any_box": True}}}
    tuned = {**scores, "frames_found": {"person": {"frames": 10, "found": boxed, "any_box": True}}}
    ok, reasons = detector_verdict(base, tuned, 0.95)
    assert ok is ships and (not reasons if ships else "person boxed in 3 of 10" in reasons[0])


def test_person_frames_count_any_box_of_a_single_class_detector_and_only_person_boxes_of_three(data, checkpoint):
    import csv

    from train.cli import frames_found

    labels = {row["file"]: row["label"] for row in csv.DictReader((data / "species/mlwic_ca01/labels.csv").open())}
    people = [data / "species/mlwic_ca01" / f for f, label in sorted(labels.items()) if label == "Human"][:12]
    single = expand_classes(load_yolox(checkpoint), ["animal"]).eval()
    three = expand_classes(load_yolox(checkpoint), ["animal", "person", "vehicle"]).eval()
    boxed = frames_found(single, {"person": people}, ["animal"], (288, 384))["person"]
    named = frames_found(three, {"person": people}, ["animal", "person", "vehicle"], (288, 384))["person"]
    assert boxed["any_box"] and boxed["frames"] == named["frames"] == 12
    assert boxed["found"] > 0 and named["found"] == 0  # the new person class is untrained: it names no one yet

"""Export side: weights load exactly, gates compute the right figures and stop bad bundles."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edge.runtime.detections import Detections
from export import gates
from train.box_matching import matched_recall


def _det(boxes, classes=None):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    return Detections(boxes, np.linspace(0.9, 0.5, len(boxes)), np.zeros(len(boxes)) if classes is None else classes)


@pytest.mark.parametrize(
    ("reference", "candidate", "expected"),
    [
        ([[0, 0, 10, 10]], [[0, 0, 10, 10]], (1.0, 1)),
        ([[0, 0, 10, 10]], [[5, 0, 15, 10]], (0.0, 1)),  # IoU 1/3
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 10, 11]], (0.5, 2)),
        ([[0, 0, 10, 10], [0, 0, 10, 10.5]], [[0, 0, 10, 10]], (0.5, 2)),  # one-to-one matching
        ([], [[0, 0, 1, 1]], (1.0, 0)),
    ],
)
def test_matched_recall(reference, candidate, expected):
    assert matched_recall([_det(reference)], [_det(candidate)]) == pytest.approx(expected)


def test_recall_tolerates_scores_just_under_the_threshold():
    box = [[0, 0, 10, 10]]

    def scored(score):
        return [Detections(np.array(box, np.float32), [score], [0])]

    assert gates.recall_within_tolerance(scored(0.26), scored(0.24), 0.25) == (1.0, 1)
    assert gates.recall_within_tolerance(scored(0.26), scored(0.24), 0.25, tolerance=0.0) == (0.0, 1)
    assert gates.recall_within_tolerance(scored(0.26), scored(0.10), 0.25) == (0.0, 1)
    assert gates.recall_within_tolerance(scored(0.20), scored(0.0), 0.25) == (1.0, 0)  # not a reference box


def test_mean_box_iou_of_found_boxes():
    ref = [Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), [0.9, 0.8], [0, 0])]
    cand = [Detections(np.array([[0, 0, 10, 8], [100, 100, 110, 110]], np.float32), [0.9, 0.9], [0, 0])]
    assert gates.mean_box_iou(ref, cand, 0.25) == pytest.approx(0.8)  # the unmatched box does not count
    assert gates.mean_box_iou(ref, [Detections.empty()], 0.25) == 1.0


def test_detector_size_must_fit_the_strides():
    import argparse

    from export.cli import _size
    from train.models.yolox import detector_input

    assert _size("480x640") == (480, 640) and detector_input((480, 640)).size == (480, 640)
    for bad in ("500x640", "640", "axb"):
        with pytest.raises(argparse.ArgumentTypeError, match="multiples of 32"):
            _size(bad)


def test_recall_requires_same_class():
    assert matched_recall([_det([[0, 0, 10, 10]], [1])], [_det([[0, 0, 10, 10]], [0])])[0] == 0.0


@pytest.mark.parametrize("probs, majority, expected", [
    ([[0.1, 0.75, 0.15]], 0.7, [1]),  # Human with the majority: a person
    ([[0.1, 0.35, 0.4]], 0.7, [2]),  # split, but together 0.75: the best of them, vehicle
    ([[0.45, 0.35, 0.2]], 0.7, [0]),  # an animal's best guess is not a person
    ([[0.3, 0.4, 0.3]], 0.8, [0]),  # Human best, person + vehicle 0.7 < 0.8: the edge keeps it an animal
    ([[0.3, 0.4, 0.3]], None, [1]),  # without the rule the best class decides
])
def test_gate_categories_are_the_edges_labels(probs, majority, expected):
    from edge.analysis.labels import LabelSpace

    space = LabelSpace.of(("animal", "person", "vehicle"), ("Elk", "Human", "Vehicle"), None, 0.3,
                          overrule_min_score=majority)
    boxes = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int64))
    assert gates.edge_categories(boxes, np.array(probs), space).tolist() == expected


def test_int8_must_keep_the_people_of_a_one_class_detector():
    box = np.array([[0, 0, 100, 100], [200, 200, 260, 260]], np.float32)
    fp32 = [Detections(box, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64))]
    category = [np.array([1, 0])]  # the fp32 classifier made the first box a person
    lost = [Detections(box[1:], np.array([0.8], np.float32), np.zeros(1, np.int64))]  # INT8 lost it
    kept = [Detections(box[:1], np.array([0.2], np.float32), np.array([0]))]  # INT8 kept it, just under 0.25
    shape = [(480, 640)]
    assert gates.recall_by_category(fp32, category, lost, shape, 0.25)["classified_person"] == (0.0, 1)
    found = gates.recall_by_category(fp32, category, kept, shape, 0.25)
    assert found["classified_person"] == (1.0, 1) and "classified_vehicle" not in found
    assert [g.name for g in gates.bucket_gates({"classified_person": (0.5, 8)})] == [
        "detector.int8_recall_of_fp32.classified_person"]


def test_agreement_and_cosine():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.4, 0.6]])
    cand = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9], [0.9, 0.1]])
    assert gates.top1_agreement(ref, cand, confident=0.7) == (0.5, 2)
    assert gates.mean_cosine(np.eye(2), np.array([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx((1 + 2 ** -0.5) / 2)
    failing = gates.Gate("x", 0.9, 0.95)
    with pytest.raises(gates.GateError, match="FAIL x: 0.9"):
        gates.enforce([gates.Gate("ok", 1e-5, 1e-3, higher_is_better=False), failing])


def test_pretrained_weights_load_exactly(pretrained):
    import torch

    from train.models.classifier import create_backbone
    from train.models.yolox import load_yolox

    eff = pretrained["efficientnet_lite0"]
    backbone = create_backbone(eff)
    source = torch.load(eff, map_location="cpu", weights_only=True)
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(backbone.state_dict()["classifier.bias"], source["_fc.bias"])
    yolox = load_yolox(pretrained["yolox_tiny_camera_trap"])
    assert yolox(torch.zeros(1, 3, 640, 640)).shape == (1, 8400, 6)
    assert set(pretrained) == {"efficientnet_lite0", "yolox_tiny_camera_trap"}


def test_blank_calibration_fails_the_gates_and_writes_nothing(data, pretrained, tmp_path):
    """Calibrating the detector on blank frames must be caught, leaving no bundle behind."""
    from export.build import ExportOptions, build_bundle
    from export.calibration import default_images
    from export.cli import default_models

    blanks = []
    for i in range(4):
        blanks.append(tmp_path / f"blank{i}.jpg")
        Image.new("RGB", (1920, 1080), (i, i, i)).save(blanks[-1])
    images = default_images(data)
    images = dataclasses.replace(images, detector_calibration=blanks, crop_calibration=images.crop_calibration[::4],
                                 check_frames=images.check_frames[::5], check_crops=images.check_crops[::3])
    out = tmp_path / "bundles" / "blank"
    with pytest.raises(gates.GateError, match="detector.int8_recall_of_fp32"):
        build_bundle(default_models(pretrained["efficientnet_lite0"].parent), ExportOptions(out=out, data=data, images=images))
    assert not out.exists()
    assert list((tmp_path / "bundles").iterdir()) == []


def test_fall_back_requantizes_only_crop_graphs_that_missed_their_int8_gate():
    from export.build import BundleBuilder
    from export.quantize import EFFICIENTNET_FRONT

    builder = BundleBuilder.__new__(BundleBuilder)
    builder.files = {"detector": ("detector", ["raw"]), "classifier": ("crops", ["probs", "embedding"]),
                     "embedder": ("crops", ["probs", "embedding"])}
    builder.quantization = {t: {"fp32_extra": []} for t in builder.files}
    calls = []

    def quantize(stem, tasks, extra=None):
        calls.append((stem, sorted(tasks), extra))
        for task in tasks:
            builder.quantization[task] = {"fp32_extra": list(extra or [])}

    builder.quantize = quantize
    missed = [gates.Gate("detector.int8_recall_of_fp32", 0.5, 0.95), gates.Gate("embedder.int8_mean_cosine", 0.97, 0.98),
              gates.Gate("classifier.int8_top1_agreement", 1.0, 0.97)]
    assert builder.fall_back(missed)
    assert calls == [("crops", ["classifier", "embedder"], EFFICIENTNET_FRONT)]  # never the detector
    assert not builder.fall_back(missed)  # already in fp32 at the front: nothing more to try
    assert not builder.fall_back([gates.Gate("embedder.int8_mean_cosine", 0.99, 0.98)])


def test_a_second_measure_reuses_the_detectors_pass_until_the_detector_is_quantized_again(monkeypatch, capsys):
    """After a fall-back (crop graphs only) the check frames are not run through the detectors again."""
    from export import build
    from export.build import BundleBuilder

    builder = BundleBuilder.__new__(BundleBuilder)
    builder._checked = ({"fp32": [], "int8": [], "native": []}, [], [], ["crop"])
    assert builder._check_frames(None, None, None) is builder._checked  # no detector, bundle or frames touched
    assert "first pass" in capsys.readouterr().out
    monkeypatch.setattr(build, "quantize_int8", lambda *args, **kwargs: {})
    monkeypatch.setattr(build, "_calibration", lambda *args: iter(()))
    builder.options = SimpleNamespace(calibration={"classifier": "percentile", "detector": "percentile"})
    builder.images = SimpleNamespace(detector_calibration=[], crop_calibration=[])
    builder.work, builder.detector_input, builder.quantization = Path("unused"), build.detector_input((480, 640)), {}
    builder.quantize("crops", ["classifier"])
    assert builder._checked is not None
    builder.quantize("detector", ["detector"])
    assert builder._checked is None


def test_quantization_keeps_onnxruntimes_chatter_off_the_terminal(tmp_path, capfd):
    import numpy as np
    import torch

    from export.quantize import quantize_int8

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    torch.onnx.export(model, torch.zeros(1, 3, 16, 16), tmp_path / "m.onnx", input_names=["images"],
                      output_names=["out"], opset_version=17, dynamo=False)
    batches = (np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32) for i in range(4))
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", "embedder", batches, method="percentile")
    assert (tmp_path / "m.int8.onnx").stat().st_size > 0
    assert "Percentile" not in capfd.readouterr().out


def _raw_pixel_model(path, focus: bool = True):
    """A small detector-like graph on 0-255 pixels: a space-to-depth (as YOLOX's stem), then convs."""
    import torch

    class Stem(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(12 if focus else 3, 4, 3, padding=1)
            self.head = torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            if focus:  # exported as Reshape, Transpose, Reshape: ops that only move the pixels
                x = torch.nn.functional.pixel_unshuffle(x, 2)
            return self.head(torch.sigmoid(self.conv(x)))  # YOLOX takes 0-255 as they are

    torch.manual_seed(0)
    torch.onnx.export(Stem().eval(), torch.zeros(1, 3, 16, 16), path, input_names=["images"], output_names=["out"],
                      opset_version=17, dynamo=False, dynamic_axes={"images": {0: "batch"}})


def _pixel_batches(count: int = 4):
    rng = np.random.default_rng(1)
    for _ in range(count):
        batch = rng.integers(0, 256, (1, 3, 16, 16)).astype(np.float32)
        batch[0, 0, 0, :2] = 0, 255  # the full pixel range: minmax calibrates the input to scale 1
        yield batch


@pytest.mark.parametrize("focus", [True, False])
def test_a_graph_on_raw_pixels_takes_uint8_after_quantization_with_the_same_outputs(tmp_path, monkeypatch, focus):
    import shutil

    import onnxruntime as ort

    from export import quantize

    _raw_pixel_model(tmp_path / "m.onnx", focus)
    assert quantize.quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", "embedder", _pixel_batches(),
                                  pixels=True)["input"] == "uint8"
    assert quantize.quantize_int8(tmp_path / "m.onnx", tmp_path / "other.onnx", "embedder", _pixel_batches())["input"] \
        == "float32"  # a graph not said to take pixels is left alone
    with monkeypatch.context() as patch:  # the same quantized graph with its float input left in place
        patch.setattr(quantize, "take_pixels", lambda path: False)
        assert quantize.quantize_int8(tmp_path / "m.onnx", tmp_path / "float.onnx", "embedder",
                                      _pixel_batches(), pixels=True)["input"] == "float32"
    shutil.copy(tmp_path / "float.onnx", tmp_path / "rewritten.onnx")
    assert quantize.take_pixels(tmp_path / "rewritten.onnx")
    assert not quantize.take_pixels(tmp_path / "rewritten.onnx")  # its input is uint8 already
    floats, pixels_in = (ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
                         for name in ("float.onnx", "rewritten.onnx"))
    assert (floats.get_inputs()[0].type, pixels_in.get_inputs()[0].type) == ("tensor(float)", "tensor(uint8)")
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 16, 16)).astype(np.uint8)
    np.testing.assert_array_equal(pixels_in.run(None, {"images": pixels})[0],
                                  floats.run(None, {"images": pixels.astype(np.float32)})[0])
    from edge.runtime.backends.onnxruntime import Backend, Config

    # the edge's backend says which each file takes, so a bundle of either kind runs
    assert Backend(tmp_path / "rewritten.onnx", ["out"], Config()).input_dtype is np.uint8
    assert Backend(tmp_path / "float.onnx", ["out"], Config()).input_dtype is np.float32


def test_a_graph_whose_input_is_not_quantized_to_the_pixels_themselves_keeps_its_float_input(tmp_path):
    import torch

    from export.quantize import quantize_int8

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    torch.onnx.export(model, torch.zeros(1, 3, 16, 16), tmp_path / "m.onnx", input_names=["images"],
                      output_names=["out"], opset_version=17, dynamo=False)
    normalised = (np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32) * 2 - 1 for i in range(4))
    assert quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", "embedder", normalised, pixels=True)["input"] \
        == "float32"
    pixels_short_of_255 = (np.full((1, 3, 16, 16), 200, np.float32) for _ in range(2))  # scale 200/255, not 1
    assert quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", "embedder", pixels_short_of_255,
                         pixels=True)["input"] == "float32"


def _quantized_input_graph(path, before=(), extra_outputs=(), readers: int = 1):
    """x (float) → ``before`` nodes → QuantizeLinear(scale 1, zero 0) → ``readers`` DequantizeLinear → summed."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    nodes, inits, tensor = list(before), [], "x"
    if nodes:
        tensor = nodes[-1].output[0]
    inits += [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    nodes.append(helper.make_node("QuantizeLinear", [tensor, "s", "z"], ["q"]))
    nodes += [helper.make_node("DequantizeLinear", ["q", "s", "z"], [f"d{i}"]) for i in range(readers)]
    nodes.append(helper.make_node("Sum", [f"d{i}" for i in range(readers)], ["y"]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 4, 4]) for name in ("y", *extra_outputs)]
    graph = helper.make_graph(nodes, "g", [x], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_take_pixels_rewires_every_reader_of_the_quantized_input(tmp_path):
    import onnxruntime as ort
    from onnx import helper

    from export.quantize import take_pixels

    _quantized_input_graph(tmp_path / "m.onnx", [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2])],
                           readers=2)
    before = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(3).integers(0, 256, (1, 3, 4, 4)).astype(np.uint8)
    expected = before.run(None, {"x": pixels.astype(np.float32)})[0]
    assert take_pixels(tmp_path / "m.onnx")
    after = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(after.run(None, {"x": pixels})[0], expected)


@pytest.mark.parametrize("case", ["input is an output", "moved tensor is an output", "concat of a constant"])
def test_take_pixels_leaves_a_graph_it_cannot_rewrite_exactly(tmp_path, case):
    import onnx
    from onnx import TensorProto, helper

    from export.quantize import take_pixels

    transpose = helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2])
    if case == "input is an output":
        _quantized_input_graph(tmp_path / "m.onnx", extra_outputs=["x"])
    elif case == "moved tensor is an output":
        _quantized_input_graph(tmp_path / "m.onnx", [transpose], extra_outputs=["t"])
    else:
        _quantized_input_graph(tmp_path / "m.onnx", [helper.make_node("Concat", ["x", "c"], ["t"], axis=1)])
        model = onnx.load(str(tmp_path / "m.onnx"))
        model.graph.initializer.append(helper.make_tensor("c", TensorProto.FLOAT, [1, 1, 4, 4], [0.0] * 16))
        onnx.save(model, str(tmp_path / "m.onnx"))
    original = (tmp_path / "m.onnx").read_bytes()
    assert not take_pixels(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == original


def test_the_edge_refuses_a_model_input_it_does_not_feed_in_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edge.runtime.backends.onnxruntime import Backend, Config
    from edge.runtime.bundle import BundleError

    half = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [half],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "half.onnx"))
    with pytest.raises(BundleError, match=r"half.onnx takes tensor\(float16\); the edge feeds tensor\(float\) or"):
        Backend(tmp_path / "half.onnx", ["y"], Config())

import numpy as np
import pytest

from edge.runtime.manifest import InputSpec
from edge.runtime.preprocess import crop_region, letterbox, to_tensor


@pytest.mark.parametrize(
    ("hw", "size", "anchor", "ratio", "pad", "placed"),
    [
        ((1080, 1920), (640, 640), "top_left", 1 / 3, (0, 0), (360, 640)),
        ((1080, 1920), (640, 640), "center", 1 / 3, (0, 140), (360, 640)),
        ((1944, 2592), (640, 640), "top_left", 640 / 2592, (0, 0), (480, 640)),
        ((100, 50), (640, 640), "center", 6.4, (160, 0), (640, 320)),
        ((640, 640), (640, 640), "top_left", 1.0, (0, 0), (640, 640)),
    ],
)
def test_letterbox_geometry(hw, size, anchor, ratio, pad, placed):
    image = np.full((*hw, 3), 200, np.uint8)
    canvas, box = letterbox(image, size, pad_value=7, anchor=anchor)
    assert canvas.shape == (*size, 3)
    assert box.ratio == pytest.approx(ratio)
    assert (box.pad_x, box.pad_y) == pad
    filled = np.argwhere(canvas[..., 0] == 200)
    (top, left), (bottom, right) = filled.min(0), filled.max(0) + 1
    assert (top, left) == (pad[1], pad[0])
    assert (bottom - top, right - left) == placed
    assert (canvas == 7).sum() == 3 * (size[0] * size[1] - placed[0] * placed[1])


@pytest.mark.parametrize(
    ("hw", "canvas_hw", "placed"),
    [
        ((1080, 1920), (384, 640), (360, 640)),  # 16:9: 96 rows of padding fewer
        ((1944, 2592), (480, 640), (480, 640)),  # 4:3 fills the input: nothing changes
        ((640, 640), (480, 480), (480, 480)),  # square
        ((1920, 1080), (480, 288), (480, 270)),  # portrait
        ((10, 2000), (32, 640), (3, 640)),  # a sliver: one step high
    ],
)
def test_a_fitted_letterbox_keeps_the_scale_and_drops_the_padding_beyond_the_step(hw, canvas_hw, placed):
    image = np.full((*hw, 3), 200, np.uint8)
    full, full_box = letterbox(image, (480, 640), pad_value=7)
    fitted, box = letterbox(image, (480, 640), pad_value=7, fit_multiple=32)
    assert fitted.shape == (*canvas_hw, 3) and box == full_box
    np.testing.assert_array_equal(fitted, full[: canvas_hw[0], : canvas_hw[1]])
    assert (fitted == 200).all(axis=2).sum() == placed[0] * placed[1]


def test_letterbox_boxes_map_back_to_source():
    image = np.zeros((1080, 1920, 3), np.uint8)
    _, box = letterbox(image, (640, 640), anchor="center")
    source = np.array([[960, 540, 1920, 1080]], np.float32)
    in_input = source * box.ratio + [box.pad_x, box.pad_y, box.pad_x, box.pad_y]
    np.testing.assert_allclose(box.to_source(in_input), source, rtol=1e-6)


@pytest.mark.parametrize(
    ("xyxy", "margin", "square", "expected"),
    [
        ((10, 20, 30, 60), 0.0, False, (10, 20, 30, 60)),
        ((10, 20, 30, 60), 0.0, True, (0, 20, 40, 60)),
        ((40, 40, 60, 60), 0.5, False, (30, 30, 70, 70)),
        ((90, 90, 100, 100), 0.0, True, (90, 90, 100, 100)),
        ((-5, -5, 200, 200), 0.1, True, (0, 0, 100, 100)),
    ],
)
def test_crop_region(xyxy, margin, square, expected):
    assert crop_region(np.array(xyxy, np.float32), (100, 100), margin, square) == expected


def test_to_tensor_normalises_per_channel():
    spec = InputSpec(size=(2, 2), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5), resize="crop")
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 51
    tensor = to_tensor([image], spec)
    assert tensor.shape == (1, 3, 2, 2) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 0, 0], [1.0, -2.0, -0.6], rtol=1e-6)


def test_to_tensor_gives_a_graph_on_raw_pixels_the_pixels_themselves():
    raw = InputSpec(size=(2, 3), scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="letterbox")
    image = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14
    tensor = to_tensor([image], raw, np.uint8)
    assert tensor.dtype == np.uint8 and tensor.flags.c_contiguous
    np.testing.assert_array_equal(tensor[0], image.transpose(2, 0, 1))
    normalised = InputSpec(size=(2, 3), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="crop")
    with pytest.raises(ValueError, match="needs raw pixels"):
        to_tensor([image], normalised, np.uint8)

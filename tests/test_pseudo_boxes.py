"""Boxes made by the detector for image-labelled frames, kept only as a reviewer checked them."""

import json

import pytest

from train.pseudo_boxes import main, reviewed

BOXES = [[0.1, 0.1, 0.2, 0.3, 0.9], [0.5, 0.5, 0.2, 0.2, 0.4]]


def test_review_keeps_relabels_and_draws_boxes():
    out = reviewed(BOXES, ["1=vehicle", ["person", 0.0, 0.0, 0.5, 1.0]], "a.jpg")
    assert out == [{"category": "3", "conf": 0.4, "bbox": [0.5, 0.5, 0.2, 0.2]},
                   {"category": "2", "conf": 1.0, "bbox": [0.0, 0.0, 0.5, 1.0]}]


@pytest.mark.parametrize("entry", ["2=person", "0=giraffe", ["person", 0.8, 0.0, 0.5, 1.0], ["person", 0.1], "x"])
def test_review_refuses_what_it_cannot_mean(entry):
    with pytest.raises(ValueError, match="a.jpg"):
        reviewed(BOXES, [entry], "a.jpg")


def test_unreviewed_frames_are_left_out(data, pretrained, tmp_path):
    """With a review, only the frames it lists keep boxes; empties stay as negatives."""
    labels = tmp_path / "labels.csv"
    folder = data / "species" / "mlwic_ca01"
    labels.write_text("file,label\n" + "".join(f"{folder}/images/CA-01_{n}.jpg,{label}\n" for n, label in
                                             (("0008411", "Human"), ("0008412", "Human"), ("0006502", "Empty"))))
    review = tmp_path / "review.json"
    review.write_text(json.dumps({f"{folder}/images/CA-01_0008411.jpg": [["person", 0.86, 0.0, 0.14, 0.77]]}))
    out = tmp_path / "boxes.json"
    assert main([str(labels), "--map", "Human=person", "Empty=empty", "--checkpoint", str(pretrained["yolox_tiny_camera_trap"]),
                 "--review", str(review), "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert [(im["file"].rsplit("_", 1)[1], len(im["detections"])) for im in document["images"]] == \
        [("0008411.jpg", 1), ("0006502.jpg", 0)]
    assert document["info"]["dropped"]["rejected"] == [f"{folder}/images/CA-01_0008412.jpg"]

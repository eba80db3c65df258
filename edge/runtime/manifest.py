"""The model bundle's manifest: everything the edge needs to run a model it did not train.

The exporter writes it, the edge reads preprocessing, labels and thresholds from it and
hard-codes none of them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.compact import MAX_DIM

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
# name and version become the install directory ``<name>-<version>``: no separators, no leading dot
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Precision = Literal["fp32", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One file of the bundle and its checksum."""

    path: str = Field(title="File name relative to the bundle directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", title="Hex sha256 of the file's bytes")
    bytes: int = Field(ge=0, title="File size in bytes")

    @field_validator("path")
    @classmethod
    def _plain_relative(cls, value: str) -> str:
        if "\\" in value or "\0" in value or any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError(f"{value!r} is not a plain relative path inside the bundle (no leading /, no . or .., "
                             "no backslash)")
        return value


class InputSpec(_Strict):
    """How pixels become the model's input tensor."""

    size: tuple[int, int] = Field(title="Input height and width")
    color: Literal["RGB"] = "RGB"
    scale: float = Field(title="Pixels are multiplied by this first (1/255 or 1)")
    mean: tuple[float, float, float] = Field(title="Subtracted after scaling, per channel")
    std: tuple[float, float, float] = Field(title="Divided by after subtracting the mean")
    resize: Literal["letterbox", "crop"] = Field(
        title="letterbox: whole frame, aspect kept, padded; crop: a detection box cut out and resized"
    )
    interpolation: Literal["area", "linear", "cubic"] = "linear"
    pad_value: float = Field(0.0, title="Letterbox padding, in raw pixel units")
    pad_anchor: Literal["top_left", "center"] = "top_left"
    fit_multiple: int | None = Field(None, ge=1, title="Letterbox: the canvas is only as large as the resized image, "
                                     "each side rounded up to a multiple of this (the model's largest stride), at most "
                                     "size: a 16:9 frame runs on 384 x 640, a square one on 480 x 480. None: always size "
                                     "(the model file then takes that size alone)")
    crop_margin: float = Field(0.0, title="Crop rule: box grown by this fraction of its size per side")
    crop_square: bool = Field(True, title="Crop rule: box made square (longer side) before cutting")


class ModelSpec(_Strict):
    """One model of the bundle."""

    task: Literal["detector", "classifier", "embedder"]
    architecture: str
    files: dict[Precision, FileEntry]
    input: InputSpec
    outputs: list[str] = Field(title="Output tensor names in order")
    result: str | None = Field(None, title="Which output is this model's result (default: the first); "
                               "classifier and embedder may share one file with two outputs")
    labels: list[str] = Field(default_factory=list, title="Class names, index = class id")
    thresholds: dict[str, float] = Field(default_factory=dict)
    decode: dict[str, object] = Field(default_factory=dict, title="Decode parameters (detector)")
    embedding_dim: int | None = None
    opset: int
    quantization: dict[str, object] = Field(default_factory=dict)
    parity: dict[str, float] = Field(default_factory=dict, title="Figures measured at export")
    taxonomy: dict[str, list[str]] = Field(default_factory=dict, title="Classifier: label → its ancestors, nearest "
                                                                      "first, for the taxonomic roll-up")
    whole_frames: bool = Field(False, title="Classifier: it learnt whole frames (images without a box), so the "
                                            "frame's own classification is a vote worth adding to each crop's")


class CompactSpec(_Strict):
    """The reduced embedding and label table of compact messages (``common.compact``, constrained links).

    The projection file holds ``dim + 1`` rows of ``input_dim`` float32: the mean, then the
    components (scaled for whitening when ``whitened``); a compact vector is ``(x - mean) @ components.T``.
    """

    projection: FileEntry = Field(title="The .npy of the mean and the components")
    input_dim: int = Field(ge=1, title="The embedder's dimension")
    dim: int = Field(ge=1, le=MAX_DIM, title=f"Values of a compact embedding ({MAX_DIM} fill a 222-byte record)")
    whitened: bool = Field(title="Components divided by their standard deviation on the fitting set")
    labels: list[str] = Field(min_length=1, title="Wire label table: index -> label, every label a box can end with")
    explained_variance: float = Field(ge=0, le=1, title="Share of the fitting set's variance the components keep")
    fitted_on: dict[str, object] = Field(default_factory=dict, title="Which crops the projection was fitted on")


class Manifest(_Strict):
    """The whole bundle."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=SAFE_NAME, title="Bundle name: letters, digits, '.', '_', '-' (it names a directory)")
    version: str = Field(pattern=SAFE_NAME, title="Bundle version: letters, digits, '.', '_', '-'")
    created: str
    models: dict[Literal["detector", "classifier", "embedder"], ModelSpec]
    versions: dict[str, str] = Field(default_factory=dict, title="Package versions used to export")
    calibration: dict[str, object] = Field(default_factory=dict)
    gates: dict[str, object] = Field(default_factory=dict)
    evaluation: dict[str, object] = Field(default_factory=dict, title="What the camera did on held-out images, per "
                                                                      "source (trapedge evaluate; MODEL_CARD.md)")
    compact: CompactSpec | None = Field(None, title="Projection and label table of compact messages (absent: the "
                                                    "bundle sends JSON only)")

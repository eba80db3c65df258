"""What the analysis of each frame does: info bars, detection, privacy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edge.analysis.tiles import SecondLookConfig


class PreprocessConfig(BaseModel):
    """Burned-in info bars: fixed rows, or detected per frame."""

    model_config = ConfigDict(extra="forbid")
    trim_top: int = Field(0, ge=0, title="Rows of info bar to cut at the top")
    trim_bottom: int = Field(0, ge=0, title="Rows of info bar to cut at the bottom")
    detect_info_bars: bool = Field(False, title="Find the bars in each frame instead of fixed rows")


class DetectionConfig(BaseModel):
    """What runs on each frame."""

    model_config = ConfigDict(extra="forbid")
    confidence: float | None = Field(None, ge=0, le=1, title="Detector threshold (default: the bundle manifest's)")
    classify: bool = Field(True, title="Run the species classifier on crops")
    embed: bool = Field(True, title="Run the embedder on eligible crops")
    embed_labels: list[str] | None = Field(
        None, max_length=500, title="Only boxes with one of these labels are embedded, e.g. [leopard] on a leopard "
                                    "survey: the embedder runs and the embeddings are sent for those alone (less CPU "
                                    "and traffic); null: every box that is confidently an animal")
    frame_context: bool | None = Field(
        None, title="Classify the whole (trimmed) frame with the boxes' crops and average it into each animal box's "
                    "vote (SpeciesNet-style ensemble; label_source ensemble); a crop the classifier calls a person or "
                    "vehicle stays one. null: on when the bundle's classifier learnt whole frames (whole_frames)")
    whole_frame: bool = Field(True, title="When the detector finds no box, classify the whole (trimmed) frame: a "
                                          "confident animal class makes the frame non-empty (label_source whole_frame)")
    whole_frame_min_score: float = Field(0.5, ge=0, le=1, title="Probability the whole frame's best class needs to make a "
                                                                      "frame without a box non-empty")
    second_look: SecondLookConfig = Field(default_factory=SecondLookConfig,
                                          title="Tiles for small and far animals (edge/analysis/tiles.py)")
    sure_box: float | None = Field(
        0.3, ge=0, le=1, title="A detector box at least this confident is never labelled empty: an empty class from the "
                               "classifier rolls up to 'animal' (blurred, never embedded); null: the classifier decides")
    overrule_min_score: float | None = Field(
        0.7, ge=0, le=1, title="The probability the classifier's person and vehicle classes together need to relabel "
                               "a detector 'animal' box as a person or vehicle; below, the box rolls up to 'animal' "
                               "(blurred, never embedded); null: the classifier's best class always decides")
    rollup_min_score: float | None = Field(
        0.3, ge=0, le=1, title="Below this, a box's (and an event's) best species rolls up the bundle's taxonomy "
                               "(species → family → ... → animal) to the first level that reaches it; null: never")


class PrivacyConfig(BaseModel):
    """People and vehicles. Fails safe: only a box that is confidently an animal is embedded or shown
    unblurred; anything that may be a person is blurred and never embedded."""

    model_config = ConfigDict(extra="forbid")
    blur_labels: list[str] = Field(["person", "vehicle"], title="Labels whose crops are blurred in thumbnails")
    never_embed_labels: list[str] = Field(
        ["person"], title="Labels whose embeddings never leave the analysis (zeroed when the classifier's graph "
                          "computed them, never stored nor published)")
    not_animal_labels: list[str] = Field(
        ["person", "vehicle", "other", "empty"], title="Labels that do not say which animal it is (a person may be "
                                                       "behind them): such boxes are blurred and never embedded")
    animal_min_score: float = Field(
        0.5, ge=0, le=1, title="Score an animal's label needs for its box to count as confidently an animal "
                               "(embedded, shown unblurred); below it the box is treated as possibly a person")

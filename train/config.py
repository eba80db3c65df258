"""The training config (``trapedge train --config train.yaml``, ``make train CONFIG=...``).

One typed object, loaded with the edge's YAML loader (errors name the line and key, ``${VAR}``
works). Relative paths are taken from ``data_root``, which itself defaults to ``../shared/data``
and may be given relative to the config file. ``TrainingConfig.default(root)`` is what
``trapedge train`` runs without a config: MLWIC CA-01 species, lion and leopard re-ID, Missouri
Camera Traps, Kenyan VOC and MLWIC's checked person / vehicle boxes.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from train.datasets.inventory import Inventory, understood
from train.records import Record

BUILTIN = "builtin:"
"""A dataset path starting with this names a file shipped with trapedge, in ``train/data/``."""
MLWIC_BOXES = Path(__file__).parent / "data" / "mlwic_ca01_boxes.json"
"""People and vehicles of MLWIC CA-01 (and its empty frames): the pretrained detector's boxes given the
frame's class and checked by eye, some drawn by hand (``train.pseudo_boxes``; the review is inside)."""
MISSOURI_SEQUENCE = r"^(SEQ\d+)_"
SOURCE_INDEX = "species_source"
"""``Record.extra`` key of a species record: the index of its source in ``TrainingConfig.species``."""
MLWIC_TAXONOMY = {
    "Black Bear": ["ursidae", "carnivora", "mammalia"], "Bobcat": ["felidae", "carnivora", "mammalia"],
    "Mountain lion": ["felidae", "carnivora", "mammalia"], "Canidae": ["carnivora", "mammalia"],
    "Fox": ["Canidae", "carnivora", "mammalia"], "Striped skunk": ["mephitidae", "carnivora", "mammalia"],
    "Cattle": ["bovidae", "artiodactyla", "mammalia"], "Elk": ["cervidae", "artiodactyla", "mammalia"],
    "Wild pig": ["suidae", "artiodactyla", "mammalia"], "Squirrel": ["sciuridae", "rodentia", "mammalia"],
    "Turkey": ["phasianidae", "aves"],
}
"""MLWIC CA-01's species with their ancestors, nearest first (``Canidae`` is both a label and Fox's family)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpeciesSource(_Strict):
    """One labelled-photo source for the species classifier."""

    format: Literal["csv", "folders", "xmp", "coco", "megadetector", "camtrap_dp"] = Field(title="Dataset format")
    name: str | None = Field(None, title="Name in warnings and the inventory (default: the path)")
    path: Path = Field(title="CSV / JSON file, class-folder root, XMP-tagged image folder or Camtrap DP package folder")
    images: Path | None = Field(None, title="Folder the file's relative image paths start from (default: its folder)")
    label_columns: list[str] = Field(["label"], title="CSV: label column(s)")
    path_column: str = Field("file", title="CSV: image path column (relative or absolute paths)")
    event_column: str | None = Field(None, title="CSV: capture-event (burst) id column")
    location_column: str | None = Field(None, title="CSV: camera / location column")
    individual_column: str | None = Field(None, title="CSV: individual id column")
    time_column: str | None = Field(None, title="CSV: capture time column (ISO 8601 or EXIF 'YYYY:MM:DD HH:MM:SS')")
    class_level: int = Field(1, ge=1, title="folders: the folder level below path naming the class: 1 <class>/, "
                                            "2 <station>/<class>/ (camtrapR), 3 <station>/<camera>/<class>/")
    location_level: int | None = Field(None, ge=1, title="folders / xmp: the folder level naming the station "
                                                         "(location, for split_by: location); folders: default 1 "
                                                         "when class_level > 1")
    filename_pattern: str | None = Field(None, title="folders / xmp: regex on the file name with named groups "
                                                     "location, event, time (YYYY-MM-DD_HH-MM-SS)")
    species_tag: str = Field("Species", title="xmp: keyword group naming the species (Species|Leopard Cat)")
    individual_tag: str = Field("individual", title="xmp: keyword group naming the individual (individual|L23)")
    threshold: float = Field(0.2, ge=0, le=1, title="MegaDetector JSON: lowest box confidence kept")

    @model_validator(mode="after")
    def _station_above_class(self) -> SpeciesSource:
        if self.format == "folders" and self.location_level is not None and self.location_level >= self.class_level:
            raise ValueError(f"location_level {self.location_level} must name a folder above the class "
                             f"(below class_level {self.class_level})")
        return self


class BoxSource(_Strict):
    """One box-labelled source for the detector fine-tune."""

    format: Literal["megadetector", "voc", "coco", "yolo", "camtrap_dp"] = Field(title="Dataset format")
    name: str | None = Field(None, title="Name in reports (default: the file's or folder's name)")
    path: Path = Field(title="JSON file, VOC root (Annotations/ + JPEGImages/), YOLO root (images/ + labels/) or "
                             "Camtrap DP package folder (observations with bboxX/bboxY/bboxWidth/bboxHeight)")
    images: Path | None = Field(None, title="Folder the file's image paths are relative to")
    threshold: float = Field(0.2, ge=0, le=1, title="MegaDetector JSON: lowest box confidence kept")
    empty_files: Literal["empty", "unlabelled"] = Field(
        "empty", title="YOLO: an empty label file is an empty image (YOLO's convention) or just unlabelled")
    event_pattern: str | None = Field(None, title="YOLO: regex whose first group in the file name is the sequence "
                                                  "(e.g. '^(SEQ\\d+)_'), for leak-free splits")


class ReidSource(_Strict):
    """A folder per individual (``<root>/<individual>/<image>``)."""

    path: Path = Field(title="Root holding one folder per individual")
    name: str | None = Field(None, title="Name in the report (default: the folder)")
    filename_pattern: str | None = Field(None, title="Regex with named groups (location, time, side) for the file names; "
                                                     "'spotid' for SpotID's station_date_time names")


class TrainingConfig(_Strict):
    """Everything ``trapedge train`` reads and trains."""

    data_root: Path = Field(Path("../shared/data"), title="Relative dataset paths start here")
    out: Path = Field(Path("runs/trained"), title="Checkpoints, splits, caches and the report")
    seed: int = Field(0, title="Seed for splits, sampling and initialisation")
    species: list[SpeciesSource] = Field(default_factory=list, title="Species classifier data (empty: skip)")
    labelmap: dict[str, Any] = Field(default_factory=lambda: {"lowercase": False, "rename": {}, "drop": [],
                                                             "priority": ["Human > Empty", "* > Empty"]},
                                     title="rename / drop / priority rules (train/labelmap.py)")
    taxonomy: dict[str, list[str]] = Field(
        default_factory=dict, title="Species label → its ancestors, nearest first (genus, family, order...): when no "
                                    "species is confident the camera names the first ancestor that is")
    keep_multilabel: bool = Field(False, title="Keep images still multi-labelled after the rules (first label wins)")
    split_by: Literal["event", "location"] = Field("event", title="Species split unit: burst/capture event or camera")
    crops: Literal["boxes", "detector"] = Field("detector", title="Unboxed species images: the bundle detector's best "
                                                                  "box, as the edge classifies it ('detector'; whole "
                                                                  "where it finds none), or the whole frame ('boxes')")
    crop_bundle: Path = Field(Path("bundles/default"), title="Bundle whose detector cuts crops when crops: detector")
    reid_train: list[ReidSource] = Field(default_factory=list, title="Individuals to train the embedder on")
    reid_eval: list[ReidSource] = Field(default_factory=list, title="Held-out individuals to evaluate on")
    boxes: list[BoxSource] = Field(default_factory=list,
                                   title="Detector fine-tune data (empty: keep the pretrained detector)")
    # One class by default: people and vehicles train as boxes of it and the classifier names them (rule 8 of
    # edge.analysis.labels). A person or vehicle class of its own learns the scene when all its boxes come from one
    # camera, as the shared data's do: every three-class fine-tune here put a person or vehicle box on 22-25 of 80
    # val animal frames and was refused. [animal, person, vehicle] where such boxes come from many cameras.
    detector_classes: list[str] = Field(["animal"], min_length=1,
                                        title="Detector class names ([animal]: one class that also boxes people and "
                                              "vehicles for the classifier to name)")
    classifier: dict[str, Any] = Field(default_factory=dict, title="train.classifier.TrainConfig overrides")
    embedder: dict[str, Any] = Field(default_factory=dict, title="train.embedder.EmbedderConfig overrides")
    detector: dict[str, Any] = Field(default_factory=dict, title="train.detector.DetectorConfig overrides")

    @field_validator("classifier", "embedder", "detector")
    @classmethod
    def _trainer_overrides(cls, overrides: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each trainer's overrides checked against its own settings class when the config loads, not when
        its step starts after minutes of work; the values kept as that class reads them."""
        if not overrides:
            return overrides
        from train.classifier import TrainConfig
        from train.detector import DetectorConfig
        from train.embedder import EmbedderConfig

        settings = {"classifier": TrainConfig, "embedder": EmbedderConfig, "detector": DetectorConfig}[info.field_name]
        known = [f.name for f in fields(settings)] if is_dataclass(settings) else list(settings.model_fields)
        if unknown := sorted(set(overrides) - set(known)):
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; {settings.__name__} has: {', '.join(known)}")
        try:
            checked = TypeAdapter(settings).validate_python(overrides)
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        return {key: getattr(checked, key) for key in overrides}

    @field_validator("detector_classes")
    @classmethod
    def _animal_first(cls, classes: list[str]) -> list[str]:
        if classes[0] != "animal":
            raise ValueError("the first detector class must be 'animal' (the pretrained detector's class)")
        return classes

    @classmethod
    def default(cls, data_root: Path = Path("../shared/data"), **overrides) -> TrainingConfig:
        """The datasets shipped in ``../shared/data``."""
        return cls(
            data_root=data_root,
            species=[SpeciesSource(format="csv", path=Path("species/mlwic_ca01/labels.csv"))],
            taxonomy=MLWIC_TAXONOMY,
            reid_train=[ReidSource(path=Path("reid/lion/train"), name="lion train")],
            reid_eval=[ReidSource(path=Path("reid/lion/val"), name="lion val (held-out individuals)"),
                       ReidSource(path=Path("reid/leopard_spotid/crops"), name="leopards (never trained on)",
                                  filename_pattern="spotid")],
            boxes=[BoxSource(format="yolo", path=Path("boxes/missouri_camtraps"), name="missouri_camtraps",
                             empty_files="unlabelled", event_pattern=MISSOURI_SEQUENCE),
                   BoxSource(format="voc", path=Path("boxes/wbia_voc"), name="wbia_voc"),
                   BoxSource(format="megadetector", path=Path(BUILTIN + MLWIC_BOXES.name), images=Path("species/mlwic_ca01"),
                             name="mlwic_ca01", threshold=0.0)],
            **overrides,
        )

    def resolve(self, path: Path) -> Path:
        """``path`` under ``data_root`` unless absolute; ``builtin:NAME`` is trapedge's own ``train/data/NAME``."""
        if str(path).startswith(BUILTIN):
            return MLWIC_BOXES.parent / str(path)[len(BUILTIN):]
        return path if path.is_absolute() else self.data_root / path


def load_training_config(path: Path) -> TrainingConfig:
    """Read a training YAML; ``data_root`` relative to the file's folder.

    Raises:
        common.config_loader.ConfigError: listing every problem with its line and key.
    """
    from common.config_loader import load_config

    config = load_config(path, TrainingConfig)
    if not config.data_root.is_absolute() and "data_root" in config.model_fields_set:
        config = config.model_copy(update={"data_root": (path.parent / config.data_root)})
    return config


def _read_species(source: SpeciesSource, where: Path, images: Path | None) -> Inventory:
    """The inventory of one species source, read by its format's reader."""
    from train.datasets import read_camtrap_dp, read_coco_camera_traps, read_csv, read_folders, read_megadetector, read_xmp

    if source.format == "csv":
        return read_csv(where, images, label_columns=source.label_columns, path_column=source.path_column,
                        event_column=source.event_column, location_column=source.location_column,
                        individual_column=source.individual_column, time_column=source.time_column)
    if source.format == "folders":
        return read_folders(where, class_level=source.class_level, location_level=source.location_level,
                            filename_pattern=source.filename_pattern)
    if source.format == "xmp":
        return read_xmp(where, species_tag=source.species_tag, individual_tag=source.individual_tag,
                        location_level=source.location_level, filename_pattern=source.filename_pattern)
    if source.format == "coco":
        return read_coco_camera_traps(where, images)
    if source.format == "megadetector":
        return read_megadetector(where, images, threshold=source.threshold)
    return read_camtrap_dp(where)


def _read_boxes(source: BoxSource, where: Path, images: Path | None) -> Inventory:
    """The inventory of one box source, read by its format's reader."""
    from train.datasets import read_camtrap_dp_boxes, read_coco_camera_traps, read_megadetector, read_voc, read_yolo

    if source.format == "megadetector":
        return read_megadetector(where, images, threshold=source.threshold)
    if source.format == "voc":
        return read_voc(where)
    if source.format == "yolo":
        return read_yolo(where, empty_files=source.empty_files, event_pattern=source.event_pattern)
    if source.format == "camtrap_dp":
        return read_camtrap_dp_boxes(where)
    return read_coco_camera_traps(where, images)


def _located(config: TrainingConfig, source: SpeciesSource | BoxSource, kind: str) -> tuple[Path, Path | None]:
    """A source's file or folder and its images folder, resolved; raises FileNotFoundError if it is not there."""
    where = config.resolve(source.path)
    if not where.exists():
        raise FileNotFoundError(f"{kind} source {where} not found (data_root {config.data_root})")
    return where, config.resolve(source.images) if source.images else None


def species_inventory(config: TrainingConfig, source: SpeciesSource) -> tuple[str, Inventory]:
    """One species source's name and inventory (its records tagged ``extra["dataset"]``), as read.

    Raises:
        FileNotFoundError: the source's path does not exist.
        DatasetError: the file is not the format it claims.
    """
    where, images = _located(config, source, "species")
    name = source.name or str(source.path)
    with understood(where, source.format):
        inventory = _read_species(source, where, images)
    inventory.records = [replace(r, extra={**r.extra, "dataset": name}) for r in inventory.records]
    return name, inventory


def read_species(config: TrainingConfig) -> tuple[list[Record], list[str]]:
    """Records of every species source (labelmap and priority rules applied; ``extra[SOURCE_INDEX]``: the
    source's place in ``config.species``) and reading problems."""
    from train.labelmap import LabelMap

    records, problems = [], []
    for index, source in enumerate(config.species):
        _, inventory = species_inventory(config, source)
        records += [replace(r, extra={**r.extra, SOURCE_INDEX: index}) for r in inventory]
        problems += [f"{config.resolve(source.path)}: {p}" for p in inventory.problems]
    kept, dropped = LabelMap.from_dict(config.labelmap).apply(records, keep_multilabel=config.keep_multilabel)
    if len(dropped):
        problems.append(f"labelmap dropped {len(dropped)} record(s): {dropped.counts()}")
    return [r for r in kept if r.label is not None], problems


def read_reid(config: TrainingConfig, sources: list[ReidSource]) -> dict[str, list[Record]]:
    """Records of each re-ID source, by report name."""
    from train.datasets import SPOTID_FILENAME, read_folders

    found = {}
    for source in sources:
        root = config.resolve(source.path)
        if not root.is_dir():
            raise FileNotFoundError(f"re-ID source {root} not found (data_root {config.data_root})")
        pattern = SPOTID_FILENAME if source.filename_pattern == "spotid" else source.filename_pattern
        found[source.name or source.path.name] = list(read_folders(root, individuals=True, filename_pattern=pattern))
    return found


def box_inventory(config: TrainingConfig, source: BoxSource) -> tuple[str, Inventory]:
    """One box source's report name and inventory (records' ``source`` set to the name).

    Raises:
        FileNotFoundError: the source's path does not exist.
        DatasetError: the file is not the format it claims.
    """
    where, images = _located(config, source, "box")
    name = source.name or where.stem
    with understood(where, source.format):
        inventory = _read_boxes(source, where, images)
    inventory.records = [replace(r, source=name) for r in inventory.records]
    return name, inventory


def read_boxes(config: TrainingConfig) -> list[Record]:
    """One record per box (and one box-less record per empty image) of every box source."""
    return [r for source in config.boxes for r in box_inventory(config, source)[1]]


if __name__ == "__main__":  # `python -m train.config CONFIG`: the run folder it trains into (the Makefile's RUN)
    import sys

    print(load_training_config(Path(sys.argv[1])).out if len(sys.argv) > 1 else TrainingConfig().out)

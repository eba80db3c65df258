"""Enrol a folder-per-individual image collection: embed each image with a bundle's embedder.

``trapedge central enrol ROOT --bundle bundles/default --config central.yaml [--edges DIR] [--known] [--compact]``
stores every image under ``ROOT/<individual>/`` as a sighting (its crop as JPEG, its edge map
from ``DIR/<individual>/<same name>`` if given). With ``--known`` the images of one folder are
also linked as confirmed matches (a gallery of known individuals) and marked reviewed: they are
already identified, so they are not queued as anchors (whose own individual is never proposed);
otherwise the folder name is kept only as ground truth for evaluation and every image is queued.
A ``left`` / ``right`` word in an image's path becomes its side (``meta["side"]``): flanks are
never compared across sides. Ids are derived from the relative path, so enrolling twice stores
nothing new. With ``--compact`` the vectors are those a compact record of the bundle carries
(``central/compact.py``), so compact sightings from the field have a gallery to be matched in.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from central.ingest import Sighting
from central.sides import side_of_name
from common.files import files_under
from common.logs import escape_controls
from common.progress import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNKNOWN_TIME = "1970-01-01T00:00:00"  # an enrolled image with no EXIF or file-name time: shown as "date unknown"
# a date and time in a file name: 2019-03-01_19-49-36, 20190301_194936, 2019-03-01T19:49:36 ...
NAME_TIME = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_.]?(\d\d)[-_.]?(\d\d)[ _T-]?(\d\d)[-_.:]?(\d\d)[-_.:]?(\d\d)(?!\d)")
EXIF_DATETIME_ORIGINAL, EXIF_IFD = 36867, 0x8769
NAMESPACE = uuid.UUID("5d0c8a4e-6f0b-4b8e-9a53-0f3c1b2d7e10")


@dataclass(frozen=True)
class LabelledImage:
    """One image file and the individual (its folder) it shows."""

    individual: str
    path: Path


def folder_images(root: Path) -> list[LabelledImage]:
    """Every image in ``root/<individual>/`` (sorted), without importing the training side."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    images = [LabelledImage(folder.name, path) for folder in sorted(p for p in root.iterdir() if p.is_dir())
              for path in files_under(folder) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise FileNotFoundError(f"{root} has no images in <individual>/ folders: give a folder that holds one folder "
                                "of images per individual")
    return images


def capture_time(path: Path) -> str:
    """When the photo was taken: EXIF DateTimeOriginal, else a date and time in its file name, else
    ``UNKNOWN_TIME`` (ISO 8601, camera-local, no offset)."""
    try:
        with Image.open(path) as image:
            raw = image.getexif().get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL)
        if isinstance(raw, str):
            return datetime.strptime(raw.strip(), "%Y:%m:%d %H:%M:%S").isoformat()
    except (OSError, ValueError):
        pass
    found = NAME_TIME.search(Path(path).name)
    if found:
        try:
            return datetime(*(int(v) for v in found.groups())).isoformat()
        except ValueError:  # 2019-13-45: digits that only look like a date
            pass
    return UNKNOWN_TIME


def jpeg_of(path: Path, max_side: int = 640, quality: int = 85) -> bytes:
    """The image as an RGB JPEG no larger than ``max_side`` (what the UI and re-ranking use), decoded as the
    edge decodes a frame: upright by its EXIF orientation, 16-bit grey scaled, in bounded memory.

    Raises:
        edge.capture.decode.ImageDecodeError (or another of ``DECODE_ERRORS``): the file is not a usable image.
    """
    from edge.capture.decode import decode_image

    image = Image.fromarray(decode_image(path, max_side=max_side).rgb)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def embed_images(embedder, images: list[LabelledImage], desc: str = "embed",
                 chunk: int = 64) -> tuple[list[LabelledImage], np.ndarray]:
    """The images that decode and their (N, D) embeddings (whole images: crops already), ``chunk`` at a time so
    memory stays one chunk's whatever the collection's size. An image that does not decode is left out, named
    on stderr in one line with the reason."""
    from edge.capture.decode import DECODE_ERRORS, decode_image

    kept, crops, parts, skipped = [], [], [], []
    for image in progress(images, desc=desc, unit="image"):
        try:
            pixels = decode_image(image.path, max_side=1024).rgb
        except DECODE_ERRORS as exc:
            skipped.append(f"skipped {escape_controls(str(image.path))}: {exc or type(exc).__name__}")
            continue
        crops.append(embedder.whole(pixels))
        kept.append(image)
        if len(crops) == chunk:
            parts.append(embedder.run_crops(crops))
            crops = []
    if crops:
        parts.append(embedder.run_crops(crops))
    for line in skipped:  # after the progress, whose bar would break them up
        print(line, file=sys.stderr)
    return kept, (np.concatenate(parts) if parts else np.zeros((0, embedder.output_dim), np.float32))


def sightings_of(images: list[LabelledImage], vectors: np.ndarray, model: str, root: Path,
                 edges: Path | None = None) -> list[Sighting]:
    """A sighting per image: crop JPEG, optional edge map, the folder as ground-truth individual."""
    result = []
    for image, vector in zip(images, vectors):
        relative = image.path.relative_to(root).as_posix()
        edge = edges / relative if edges is not None else None
        side = side_of_name(relative)
        result.append(Sighting(
            id=str(uuid.uuid5(NAMESPACE, f"{model}/{relative}")), device="enrolled", event_id=image.individual,
            frame_time=capture_time(image.path), label=None, model=model, vector=vector, crop_jpeg=jpeg_of(image.path),
            name=relative, edge_jpeg=_edge_jpeg(edge) if edge is not None and edge.is_file() else None,
            individual=image.individual, meta={"side": side} if side else {}))
    return result


def _edge_jpeg(path: Path) -> bytes | None:
    """An edge map's JPEG, or None (said on stderr) when it does not decode: the photo is enrolled without it."""
    from edge.capture.decode import DECODE_ERRORS

    try:
        return jpeg_of(path)
    except DECODE_ERRORS as exc:
        print(f"edge map {escape_controls(str(path))} left out: {exc or type(exc).__name__}", file=sys.stderr)
        return None


def open_embedder(bundle_path: Path, precision: str = "int8"):
    """The bundle's embedder and the model name sightings carry (``<architecture>@<version>``)."""
    from edge.runtime.bundle import load_bundle
    from edge.runtime.models import Embedder

    bundle = load_bundle(bundle_path)
    embedder = Embedder(bundle, precision)
    return embedder, f"{bundle.manifest.models['embedder'].architecture}@{bundle.manifest.version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trapedge central enrol", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder of <individual>/ folders of crops")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--config", type=Path, required=True, help="central.yaml (its store is written)")
    parser.add_argument("--edges", type=Path, help="edge maps laid out like ROOT")
    parser.add_argument("--known", action="store_true", help="link each folder's images as confirmed")
    parser.add_argument("--compact", action="store_true",
                        help="store the vectors compact records of this bundle carry (their own gallery)")
    args = parser.parse_args(argv)
    from central.config import CentralConfig
    from central.store import CentralStore, StoreError
    from common.config_loader import ConfigError, load_config
    from edge.runtime.bundle import BundleError

    try:
        config = load_config(args.config, CentralConfig)
        found = folder_images(args.root)
        embedder, model = open_embedder(args.bundle)
    except (ConfigError, FileNotFoundError, BundleError) as exc:
        print(exc, file=sys.stderr)
        return 2
    images, vectors = embed_images(embedder, found)
    if not images:
        print(f"none of the {len(found)} images under {args.root} could be read (the reasons are above)", file=sys.stderr)
        return 2
    if vectors.shape[1] > config.ingest.max_vector_dim:  # the gallery would quarantine every one of them
        print(f"{args.bundle}'s embedder gives {vectors.shape[1]} dimensions, more than ingest.max_vector_dim "
              f"({config.ingest.max_vector_dim}): raise it in {args.config} or enrol with another bundle", file=sys.stderr)
        return 2
    if args.compact:  # the space compact sightings are matched in (central/compact.py)
        from central.compact import compact_vectors

        vectors, model = compact_vectors(args.bundle, vectors)
    sightings = sightings_of(images, vectors, model, args.root, args.edges)
    try:
        store = CentralStore(config.store.path)
    except StoreError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    sightings = claim_ids(store, sightings)
    added = sum(store.add_sighting(s) for s in sightings)
    if args.known:
        link_known(store, sightings)
    skipped = f" ({len(found) - len(images)} unreadable, skipped: named above)" if len(images) < len(found) else ""
    print(f"enrolled {added} new of {len(sightings)} images into {config.store.path}{skipped}")
    return 0


def claim_ids(store, sightings: list[Sighting]) -> list[Sighting]:
    """The sightings under ids no device's sighting holds (``CentralStore.claim_id``), each moved one named.

    An enrolled image's id is a uuid5 of its path, which a device could send first: the image then kept
    the device's sighting in its place, and ``--known`` linked that sighting to the individual."""
    claimed = [store.claim_id(s) for s in sightings]
    for before, after in zip(sightings, claimed):
        if after.id != before.id:
            print(f"{escape_controls(str(before.name))}: its id is already a device's sighting's: enrolled under "
                  f"{after.id} (a device sent an id central gives enrolled images: check the devices)", file=sys.stderr)
    return claimed


def link_known(store, sightings: list[Sighting]) -> None:
    """Confirm a chain of links through each individual's images and take them out of the review queue."""
    first: dict[str, Sighting] = {}
    for s in sightings:
        store.mark_reviewed(s.id)
        if s.individual in first:
            cosine = float(first[s.individual].vector @ s.vector)
            store.decide(first[s.individual].id, s.id, "match", cosine)
        else:
            first[s.individual] = s


if __name__ == "__main__":
    raise SystemExit(main())

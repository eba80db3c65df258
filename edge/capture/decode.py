"""Turn image files into RGB arrays, or into a clear failure — never a crash.

Handles EXIF orientation, CMYK, grayscale, palette and alpha PNGs, 16-bit and float grey images
(thermal and scientific cameras: scaled to 8 bits by their own range), truncated JPEGs
(decoded as far as possible and flagged) and huge images (decoded at reduced scale with
JPEG draft mode, and bounded by ``max_pixels`` for other formats).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.files import files_under
from edge.capture.frame import Frame, TimeSource

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
MAX_PIXELS = 80_000_000  # a JPEG above this is decoded at 1/8 scale or less (draft mode); never in full
# Formats without draft mode decode in full: the pixels as read, as RGB and as the numpy copy, ~7 bytes
# a pixel at the peak (a 1-bit PNG of 80 MP reached 825 MB). 20 MP keeps that under 150 MB, beside the
# service's ~150 MB peak (trapedge bench), inside the unit's MemoryMax=512M; no camera trap writes larger PNG/TIFF/BMP/WebP.
MAX_FULL_DECODE_PIXELS = 20_000_000
# frames are decoded with the longer side >= this: enough for the 640 letterbox and for crops,
# and JPEG draft mode then decodes 2-5 MP frames at 1/2 scale (measured 8.5 ms instead of 32 ms
# for a 2048x1536 frame)
DEFAULT_MAX_SIDE = 960
# single-channel modes of more than 8 bits: Pillow's own conversion to RGB clips every value above 255,
# so a 16-bit frame came out white (and analysed as blank) and a float one black
HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ROWS_AT_ONCE = 256  # rows scaled to 8 bits at a time: a float copy of a few rows, never of the whole image


class ImageDecodeError(Exception):
    """The file is not a usable image; the message says why in a few words."""


# what decoding a file may raise besides ImageDecodeError (Pillow's decoders on corrupt data): each is a reason
DECODE_ERRORS = (ImageDecodeError, OSError, ValueError, SyntaxError, MemoryError)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image and what decoding had to do to get it."""

    rgb: np.ndarray
    source_size: tuple[int, int]
    truncated: bool = False
    reduced: bool = False
    exif_time: datetime | None = None


def _open_file(path: Path, follow_symlinks: bool = True) -> BinaryIO:
    """The file, opened for reading; refused with a reason when it is missing, empty or a link."""
    if not follow_symlinks and path.is_symlink():
        raise ImageDecodeError("a symbolic link (only files written into the folder are read)")
    if not path.is_file():
        raise ImageDecodeError("file not found")
    if path.stat().st_size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        # O_NOFOLLOW: a file swapped for a link after the scan is refused, not read
        fd = os.open(path, os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)))
    except OSError as exc:
        raise ImageDecodeError(f"cannot open: {exc.strerror or exc}") from exc
    return os.fdopen(fd, "rb")


def _open(handle: BinaryIO) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # large but plausible: decode_image bounds it (JPEG draft mode, MAX_FULL_DECODE_PIXELS otherwise)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(handle)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__})") from exc


def _load(image: Image.Image) -> bool:
    """Load pixels; returns True when the file was truncated and only partly decoded."""
    try:
        image.load()
        return False
    except OSError as exc:
        if "truncated" not in str(exc) and "broken data stream" not in str(exc):
            raise ImageDecodeError(f"cannot decode: {exc}") from exc
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image.load()
    except OSError as exc:
        raise ImageDecodeError(f"truncated beyond recovery: {exc}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    return True


def decode_image(path: str | Path, max_side: int | None = None, follow_symlinks: bool = True,
                 max_pixels: int = MAX_FULL_DECODE_PIXELS) -> DecodedImage:
    """Decode an image file into (H, W, 3) uint8 RGB, upright per its EXIF orientation.

    Args:
        path: the file.
        max_side: if given, JPEGs larger than this are decoded at a reduced DCT scale whose
            longer side is still at least ``max_side`` (fast and memory-light on a Pi).
        follow_symlinks: False refuses a symbolic link (a watched folder reads only its own files).
        max_pixels: the most pixels a format without draft mode (PNG, TIFF...) may decode to.

    Raises:
        ImageDecodeError: for missing, empty, non-image or undecodable files.
    """
    with _open_file(Path(path), follow_symlinks) as handle:
        return _decode(_open(handle), max_side, max_pixels)


def _decode(image: Image.Image, max_side: int | None, max_pixels: int) -> DecodedImage:
    source_size = image.size
    taken = exif_time(image)
    if image.width * image.height > max_pixels and image.format != "JPEG":
        raise ImageDecodeError(f"image too large ({image.width}x{image.height}, {image.format}): formats other than "
                               f"JPEG decode in full, at most {max_pixels / 1e6:g} MP (max_pixels)")
    reduced = False
    if image.format == "JPEG":
        target = max_side or (max(image.size) if image.width * image.height <= MAX_PIXELS else 4096)
        scale = target / max(image.size)
        if scale < 1:
            # draft picks the smallest DCT scale whose size is >= the request in both axes
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            reduced = image.size != source_size
    truncated = _load(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block must not cost the picture
        pass
    if image.mode in HIGH_DEPTH_MODES:
        image = eight_bits(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return DecodedImage(np.asarray(image), source_size, truncated, reduced, taken)


def eight_bits(image: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits as 8-bit grey (``L``): its own range of values, lowest to highest,
    stretched over 0-255, as a thermal viewer's automatic gain does (a radiometric frame uses a narrow band
    of its 16 bits; a 16-bit photo that spans its range comes out close to its top 8 bits). Values that are not finite
    are black, and so is an image of one value."""
    width, height = image.size
    bands = [(top, min(top + _ROWS_AT_ONCE, height)) for top in range(0, height, _ROWS_AT_ONCE)]

    def rows(top: int, bottom: int) -> np.ndarray:  # a band's values: no copy of the whole image is ever made
        return np.asarray(image.crop((0, top, width, bottom)))

    low, high = np.inf, -np.inf  # Pillow's getextrema refuses big-endian 16-bit (I;16B)
    for top, bottom in bands:
        values = rows(top, bottom)
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    out = np.zeros((height, width), np.uint8)
    if not high > low:  # one value, or none finite
        return Image.fromarray(out, "L")
    gain = 255.0 / (high - low)
    for top, bottom in bands:
        scaled = np.nan_to_num((rows(top, bottom).astype(np.float64) - low) * gain, nan=0.0, posinf=0.0, neginf=0.0)
        out[top:bottom] = np.rint(np.clip(scaled, 0.0, 255.0))
    return Image.fromarray(out, "L")


def list_images(root: str | Path) -> list[Path]:
    """Every file under ``root`` with an image suffix, sorted (recursive)."""
    return [p for p in files_under(root) if p.suffix.lower() in IMAGE_SUFFIXES]


_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME = 306
_OFFSET_TIME_ORIGINAL = 36881
_OFFSET_TIME = 36880


def _exif_datetime(raw: object) -> datetime | None:
    """``YYYY:MM:DD HH:MM:SS`` (str or bytes, NUL-padded) as a datetime; None for anything else."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        return datetime.strptime(str(raw).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S") if raw else None
    except ValueError:  # "0000:00:00 00:00:00", blanks, other layouts
        return None


def _with_offset(time: datetime | None, raw: object) -> datetime | None:
    """``time`` with the EXIF offset ``+HH:MM`` attached when one is given; naive otherwise."""
    if time is None or not raw:
        return time
    text = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip("\x00 ")
    try:
        return time.replace(tzinfo=datetime.strptime(text, "%z").tzinfo)
    except ValueError:
        return time


def exif_time(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal, else DateTime, with its EXIF offset when the camera wrote one (else
    naive); None if both are absent or garbage."""
    try:
        exif = image.getexif()
        ifd = exif.get_ifd(_EXIF_IFD)
        original = _with_offset(_exif_datetime(ifd.get(_DATETIME_ORIGINAL)), ifd.get(_OFFSET_TIME_ORIGINAL))
        return original or _with_offset(_exif_datetime(exif.get(_DATETIME)), ifd.get(_OFFSET_TIME))
    except Exception:  # a corrupt EXIF block (struct, Unicode or TIFF errors) must not cost the picture
        return None


def file_time(path: Path) -> tuple[datetime, TimeSource]:
    """The file's mtime (local time, with its offset), or the clock when the file is gone."""
    try:
        return datetime.fromtimestamp(Path(path).stat().st_mtime).astimezone(), "mtime"
    except OSError:
        return datetime.now().astimezone(), "clock"


def read_frame(path: str | Path, source_id: str, key: str, max_side: int | None = DEFAULT_MAX_SIDE,
               follow_symlinks: bool = True, max_pixels: int = MAX_FULL_DECODE_PIXELS) -> Frame:
    """A ``Frame`` from an image file: pixels and flags, or a failure — never an exception."""
    path = Path(path)
    try:
        decoded = decode_image(path, max_side=max_side, follow_symlinks=follow_symlinks, max_pixels=max_pixels)
    except DECODE_ERRORS as exc:
        return Frame(source_id, key, *file_time(path), path=path, failure=str(exc) or type(exc).__name__)
    time_source: TimeSource
    if decoded.exif_time is not None:
        time_taken, time_source = decoded.exif_time, "exif"
    else:
        time_taken, time_source = file_time(path)
    flags = tuple(name for name, on in (("truncated", decoded.truncated), ("reduced", decoded.reduced)) if on)
    return Frame(source_id, key, time_taken, time_source, rgb=decoded.rgb, path=path, flags=flags)


def read_ahead(pool: Executor, jobs: Iterable[tuple[Path, str, str]], max_side: int | None = DEFAULT_MAX_SIDE,
               prefetch: int = 1, follow_symlinks: bool = True,
               max_pixels: int = MAX_FULL_DECODE_PIXELS) -> Iterator[Frame]:
    """``read_frame`` for each (path, source id, key), decoding ``prefetch`` files ahead in ``pool``
    so the next JPEG decodes while the caller runs the models on this one."""
    pending: deque[Future] = deque()
    for path, source_id, key in jobs:
        pending.append(pool.submit(read_frame, path, source_id, key, max_side, follow_symlinks, max_pixels))
        if len(pending) > prefetch:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()

"""The optional crop of an embedding message: decoded under a pixel limit, checked, re-encoded.

A crop is stored and later served as ``image/jpeg`` and exported as a ``.jpg``, so central keeps
only JPEGs it encoded itself: the device's bytes are decoded by Pillow (after the header says the
image is no larger than the limit, so a small file that declares a huge image is refused before
any pixel is decoded) and written again, which leaves behind anything hidden after or inside them.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from common.wire import MAX_CROP_BYTES

QUALITY = 90  # re-encoding a device's JPEG: close to its quality, no visible loss for review or SIFT
# A progressive JPEG has ~10 scans (libjpeg's default script), the edge's crops one. Each scan costs a pass
# over the whole image, so 25,000 empty ones in 258 KB held the ingest thread 7.6 s for one message.
MAX_SCANS = 64


class CropError(ValueError):
    """A crop that is not stored, and why (one line)."""


def verified_crop(crop: dict, max_pixels: int) -> bytes:
    """The crop of an embedding payload as a JPEG central encoded, after checking it decodes as declared.

    Args:
        crop: the payload's ``crop`` object (``format``, ``width``, ``height``, ``bytes``, ``base64``),
            already valid against the embedding schema.
        max_pixels: the largest width x height decoded.

    Raises:
        CropError: not base64, larger than ``MAX_CROP_BYTES``, not a JPEG, of more than ``MAX_SCANS`` scans,
            larger than ``max_pixels``, another size than declared, or not decodable.
    """
    data = _base64(crop["base64"])
    if len(data) != crop["bytes"]:
        raise CropError(f"crop declares {crop['bytes']} bytes but holds {len(data)}: the device must send its real size")
    image = _open_jpeg(data)
    width, height = image.size
    if width * height > max_pixels:
        raise CropError(f"crop is {width}x{height} pixels, more than ingest.max_crop_pixels ({max_pixels}); "
                        "raise that limit if the device is right")
    if (width, height) != (crop["width"], crop["height"]):
        raise CropError(f"crop declares {crop['width']}x{crop['height']} pixels but is {width}x{height}: "
                        "the device must send its real size")
    return _reencoded(image)


def _base64(text: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CropError(f"crop is not base64 JPEG data ({exc})") from None
    if len(data) > MAX_CROP_BYTES:
        raise CropError(f"crop is not base64 JPEG data of at most 256 KiB ({len(data)} bytes)")
    if data[:3] != b"\xff\xd8\xff":
        raise CropError("crop is not base64 JPEG data (no JPEG start marker)")
    # 0xFF 0xDA is only ever a start-of-scan marker: entropy-coded data stuffs each 0xFF with a 0x00
    if (scans := data.count(b"\xff\xda")) > MAX_SCANS:
        raise CropError(f"crop has {scans} JPEG scans, more than {MAX_SCANS}: send a baseline JPEG")
    return data


def _open_jpeg(data: bytes) -> Image.Image:
    """The image's header only (no pixels decoded yet)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit comes next
            return Image.open(io.BytesIO(data), formats=["JPEG"])
    except Exception as exc:  # a decoder on hostile bytes may raise anything; each is a reason, not a crash
        raise CropError(f"crop is not base64 JPEG data ({type(exc).__name__}: {str(exc)[:120]})") from None


def _reencoded(image: Image.Image) -> bytes:
    try:
        image.load()
        pixels = image if image.mode in ("L", "RGB") else image.convert("RGB")
        out = io.BytesIO()
        pixels.save(out, "JPEG", quality=QUALITY)
    except Exception as exc:  # truncated or corrupt scan data, as above
        raise CropError(f"crop cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})") from None
    return out.getvalue()

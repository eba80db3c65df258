"""Broken and unusual image files, written from one real camera frame as uploads really look."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# name -> what the service must make of it: "frame", "failure", or None (either, but exactly one)
EXPECTED: dict[str, str | None] = {
    "zero-byte.jpg": "failure",
    "not-an-image.jpg": "failure",
    "truncated.jpg": None,
    "cmyk.jpg": "frame",
    "grayscale.png": "frame",
    "exif-rotated.jpg": "frame",
    "one-pixel.jpg": None,
    "huge-12000x9000.jpg": "frame",
    "alpha.png": "frame",
    "png-named.jpg": "frame",
}


def write_bad_images(source: Path, folder: Path) -> dict[str, str | None]:
    """Write every kind of ``EXPECTED`` into ``folder``; returns ``EXPECTED``."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = source.read_bytes()
    image = Image.open(source).convert("RGB")
    (folder / "zero-byte.jpg").write_bytes(b"")
    (folder / "not-an-image.jpg").write_text("camera log: battery 12%\n")
    (folder / "truncated.jpg").write_bytes(raw[: int(len(raw) * 0.6)])
    image.convert("CMYK").save(folder / "cmyk.jpg")
    image.convert("L").save(folder / "grayscale.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    image.rotate(90, expand=True).save(folder / "exif-rotated.jpg", exif=exif)
    image.resize((1, 1)).save(folder / "one-pixel.jpg")
    image.resize((12000, 9000), Image.Resampling.NEAREST).save(folder / "huge-12000x9000.jpg", quality=60)
    image.convert("RGBA").save(folder / "alpha.png")
    image.save(folder / "png-named.jpg", format="PNG")
    return EXPECTED

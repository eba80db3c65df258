"""Which flank an image shows, and which images may be compared.

Left and right flanks of one animal carry different patterns: comparing them says nothing, and a
match between them is a coincidence (SpotID treats each flank as its own "individual", e.g.
``BGL09_right``). A sighting's side is ``meta["side"]`` when a device or an enrolment set it, else a
``left`` / ``right`` word in its file name or folder (``Ayo_Left_Face.png``, ``CUL66_Left/``).
Images of two different known sides are never compared; an unknown side is compared with any.
"""

from __future__ import annotations

import re

SIDES = ("left", "right")


def side_of_name(name: str | None) -> str | None:
    """``left`` or ``right`` when exactly one of them is a word of the path, else None."""
    words = set(re.split(r"[^a-z]+", (name or "").lower()))
    found = [side for side in SIDES if side in words]
    return found[0] if len(found) == 1 else None


def side_of(meta: dict, name: str | None) -> str | None:
    """The side of a sighting: its ``meta["side"]`` if valid, else from its name."""
    side = str(meta.get("side", "")).lower()
    return side if side in SIDES else side_of_name(name)


def comparable(a: str | None, b: str | None) -> bool:
    """False only for two different known sides."""
    return a is None or b is None or a == b

"""Files under a folder, the way a field team lays them out: linked folders followed, loops not."""

from __future__ import annotations

import os
from pathlib import Path


def files_under(root: Path | str) -> list[Path]:
    """Every file below ``root``, sorted, following symlinked folders (each real folder once).

    ``Path.rglob`` skips a folder that is a symlink (``deer -> /mnt/nas/deer``), so a class linked
    in from elsewhere silently vanished; ``os.walk(followlinks=True)`` alone loops forever on a link
    to a parent. Paths keep the link's name, so ``path.relative_to(root)`` names the class.
    """
    root = Path(root)
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # a link back to a folder already walked
            subfolders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        found += [path for name in names if (path := Path(folder, name)).is_file()]
    return sorted(found)

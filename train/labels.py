"""The default camera-trap label set and how ImageNet-1k classes map onto it.

The untrained bundle's classifier is an ImageNet EfficientNet-Lite0 whose 1000 softmax
probabilities are summed per group below, so it already names common camera-trap animals.
ImageNet has no deer, opossum or raccoon classes: deer tend to land in ``deer_antelope``
(ImageNet's antelopes), the others in ``other`` until a trained classifier replaces this one.
``person`` is inferred from people-only classes (ballplayer, groom, diver, clothing);
``other`` takes all remaining probability mass.
"""

from __future__ import annotations

import numpy as np

from common.labels import EMPTY_LABELS, PERSON_LABELS, VEHICLE_LABELS, category_of

__all__ = ["DEFAULT_LABELS", "DEFAULT_TAXONOMY", "EMPTY_LABELS", "IMAGENET_GROUPS", "OTHER", "PERSON_LABELS",
           "VEHICLE_LABELS",
           "category_of", "imagenet_group_matrix"]

def _span(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


IMAGENET_GROUPS: dict[str, list[int]] = {
    "fox": _span(277, 280),
    "skunk": [361],
    "leopard": [288, 289],
    "jaguar": [290],
    "tiger": [292],
    "lion": [291],
    "cheetah": [293],
    "puma": [286],
    "lynx": [287],
    "cat": _span(281, 285),
    "dog": _span(151, 268),
    "wolf_coyote": _span(269, 275),
    "hyena": [276],
    "bear": _span(294, 297),
    "mongoose": [298, 299],
    "mustelid": _span(356, 360),
    "badger": [362],
    "rabbit": _span(330, 332),
    "rodent": _span(333, 338),
    "pig": _span(341, 343),
    "cattle": _span(345, 347),
    "sheep_goat": _span(348, 350),
    "deer_antelope": _span(351, 353),
    "horse": [339],
    "zebra": [340],
    "elephant": [101, 385, 386],
    "primate": _span(365, 384),
    "marsupial": _span(104, 106),
    "bird": _span(7, 24) + _span(80, 100) + _span(127, 146),
    "reptile": _span(33, 68),
    "person": [399, 400, 414, 474, 501, 515, 608, 610, 617, 655, 808, 841, 869, 981, 982, 983],
    "vehicle": [407, 436, 444, 468, 511, 555, 561, 565, 569, 575, 586, 595, 603, 609, 627, 654, 656,
                661, 665, 670, 671, 675, 705, 717, 734, 751, 757, 779, 817, 847, 864, 866, 867, 870, 874],
}
OTHER = "other"
DEFAULT_LABELS: list[str] = [*IMAGENET_GROUPS, OTHER]


def imagenet_group_matrix(num_imagenet: int = 1000) -> np.ndarray:
    """(1000, K) 0/1 matrix: column k sums the ImageNet classes of label k; the last is ``other``."""
    matrix = np.zeros((num_imagenet, len(DEFAULT_LABELS)), np.float32)
    for k, indices in enumerate(IMAGENET_GROUPS.values()):
        matrix[indices, k] = 1.0
    matrix[matrix.sum(axis=1) == 0, -1] = 1.0
    return matrix


_CARNIVORA, _MAMMALIA = ["carnivora", "mammalia"], ["mammalia"]
DEFAULT_TAXONOMY: dict[str, list[str]] = {
    **{name: ["canidae", *_CARNIVORA] for name in ("fox", "dog", "wolf_coyote")},
    **{name: ["felidae", *_CARNIVORA] for name in ("leopard", "jaguar", "tiger", "lion", "cheetah", "puma", "lynx",
                                                    "cat")},
    "skunk": ["mephitidae", *_CARNIVORA], "mustelid": ["mustelidae", *_CARNIVORA],
    "badger": ["mustelidae", *_CARNIVORA], "bear": ["ursidae", *_CARNIVORA], "hyena": _CARNIVORA,
    "mongoose": _CARNIVORA,
    **{name: ["artiodactyla", *_MAMMALIA] for name in ("pig", "cattle", "sheep_goat", "deer_antelope")},
    **{name: ["equidae", *_MAMMALIA] for name in ("horse", "zebra")},
    **{name: _MAMMALIA for name in ("rabbit", "rodent", "elephant", "primate", "marsupial")},
    "bird": ["aves"], "reptile": ["reptilia"],
}
"""The default labels' ancestors, nearest first, for the taxonomic roll-up (``person``, ``vehicle``,
``other`` have none)."""

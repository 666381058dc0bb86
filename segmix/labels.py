"""The segmentation label space every stage shares, and how mask files map onto it.

Label maps are ``uint8``: ``0`` = background, ``1..K`` = the configured image-level classes (in
their configured order), ``255`` = ignore (uncertain or unlabelled pixels; losses and metrics skip
them). A :class:`MaskConvention` says how the values of a mask *file* map onto this space;
:data:`PSEUDO_MASK_CONVENTION` is the one the project's own mask PNGs use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["BACKGROUND_INDEX", "IGNORE_INDEX", "MASK_CONVENTIONS", "MaskConvention",
           "PSEUDO_MASK_CONVENTION", "class_pixels", "decode_mask"]

BACKGROUND_INDEX = 0
IGNORE_INDEX = 255
MASK_CONVENTIONS = ("binary", "index")


def class_pixels(mask: np.ndarray) -> np.ndarray:
    """Where a label map holds a class (bool): neither background nor ignore."""
    return (mask != BACKGROUND_INDEX) & (mask != IGNORE_INDEX)


@dataclass(frozen=True)
class MaskConvention:
    """How pixel values of a mask file map to the segmentation label space.

    * ``binary``: nonzero = the tile's (single) class, zero = background (EBHI-Seg);
    * ``index``: value ``first_class_value + i`` = class ``i`` (0-based), ``background_value`` =
      background, ``ignore_value`` = ignore (LUAD-HistoSeg / BCSS-WSSS: classes 0..3, background 4).
    """

    convention: str = "binary"
    background_value: int = 0
    first_class_value: int = 1
    ignore_value: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.convention not in MASK_CONVENTIONS:
            raise ValueError(
                f"unknown mask convention {self.convention!r}; valid: {', '.join(MASK_CONVENTIONS)}"
            )


# The masks segmix writes (pseudo masks, predictions): the label space itself.
PSEUDO_MASK_CONVENTION = MaskConvention("index", background_value=BACKGROUND_INDEX,
                                        first_class_value=1, ignore_value=IGNORE_INDEX)


def decode_mask(raw: np.ndarray, labels: Sequence[int], num_classes: int,
                convention: MaskConvention, path: Path) -> np.ndarray:
    """Raw mask values -> uint8 label map (0 background, 1..K classes, 255 ignore).

    ``path`` only names the mask in error messages."""
    if convention.convention == "binary":
        if len(labels) != 1:
            raise ValueError(
                f"{path}: a binary mask needs exactly one image-level class, the tile has"
                f" {len(labels)}; use the 'index' convention for multi-class masks"
            )
        return np.where(raw != 0, labels[0] + 1, BACKGROUND_INDEX).astype(np.uint8)
    out = np.full(raw.shape, IGNORE_INDEX, np.uint8)
    out[raw == convention.background_value] = BACKGROUND_INDEX
    class_index = raw - convention.first_class_value
    is_class = (class_index >= 0) & (class_index < num_classes) & (raw != convention.background_value)
    out[is_class] = (class_index[is_class] + 1).astype(np.uint8)
    known = is_class | (raw == convention.background_value) | (raw == convention.ignore_value)
    if not known.all():
        bad = np.unique(raw[~known])[:10].tolist()
        raise ValueError(
            f"{path}: mask values {bad} are neither background ({convention.background_value}),"
            f" ignore ({convention.ignore_value}) nor a class value"
            f" ({convention.first_class_value}..{convention.first_class_value + num_classes - 1})"
        )
    return out

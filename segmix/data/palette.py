"""Masks as palette PNGs (pixel value = class index), their colours, and overlays (the legend file
beside a mask folder is :mod:`segmix.artifacts`' :func:`~segmix.artifacts.write_legend`)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from ..io import atomic_path
from ..labels import IGNORE_INDEX
from .images import ImageReadError

__all__ = ["IGNORE_COLOR", "palette_colors", "write_mask_png", "read_mask_png", "overlay"]

IGNORE_COLOR = (128, 128, 128)
# Background black, then well-separated colours for classes 1..K (cycled past 12).
_CLASS_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                 (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128),
                 (170, 110, 40), (128, 0, 0)]


def palette_colors(num_classes: int) -> List[tuple]:
    """RGB colours of indices ``0..num_classes`` (0 = background)."""
    return [(0, 0, 0)] + [_CLASS_COLORS[i % len(_CLASS_COLORS)] for i in range(num_classes)]


def _flat_palette(num_classes: int) -> List[int]:
    colors = palette_colors(num_classes) + [(0, 0, 0)] * (256 - num_classes - 1)
    colors[IGNORE_INDEX] = IGNORE_COLOR
    return [channel for color in colors for channel in color]


def write_mask_png(path: Path, mask: np.ndarray, num_classes: int) -> None:
    """Write an ``H x W`` uint8 mask as a palette PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be H x W, got shape {mask.shape}")
    valid = (mask <= num_classes) | (mask == IGNORE_INDEX)
    if not valid.all():
        raise ValueError(f"mask values {np.unique(mask[~valid])[:5].tolist()} are outside"
                         f" 0..{num_classes} and {IGNORE_INDEX}")
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(_flat_palette(num_classes))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def read_mask_png(path: Path) -> np.ndarray:
    """The class indices of a mask PNG (palette indices for palette images)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ImageReadError(f"{path}: expected a palette or greyscale mask, got mode"
                                 f" {image.mode}")
        return np.asarray(image).copy()


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the image with class colours blended in (background left as it is).

    Integer arithmetic over bands of rows, so a large image needs little memory beyond the result.
    """
    colors = np.array(palette_colors(num_classes) + [IGNORE_COLOR], dtype=np.uint16)
    share = np.uint16(round(alpha * 256))
    result = np.array(image, dtype=np.uint8, copy=True)
    for top in range(0, mask.shape[0], 256):
        rows = mask[top:top + 256]
        index = np.where(rows == IGNORE_INDEX, num_classes + 1, np.minimum(rows, num_classes + 1))
        blended = (result[top:top + 256].astype(np.uint16) * (256 - share) + colors[index] * share
                   + 128) >> 8
        painted = rows != 0
        result[top:top + 256][painted] = blended[painted].astype(np.uint8)
    return result

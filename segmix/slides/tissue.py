"""Tissue detection on a slide thumbnail (numpy and scikit-image only).

Stained tissue is saturated, glass is not: Otsu's threshold on the HSV saturation separates them,
holes inside tissue are filled and specks dropped. A thumbnail that is all glass (nothing above
``min_saturation``) gives an empty mask rather than Otsu's split of noise.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

__all__ = ["tissue_mask", "tissue_fraction"]


def tissue_mask(rgb: np.ndarray, *, min_saturation: float = 0.05, min_object_px: int = 16,
                max_hole_px: int = 64) -> np.ndarray:
    """Boolean ``H x W`` tissue mask of an RGB uint8 thumbnail: saturation above Otsu's threshold
    (and above ``min_saturation``), holes up to ``max_hole_px`` filled, objects under
    ``min_object_px`` removed."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"tissue_mask needs an RGB image H x W x 3, got shape {rgb.shape}")
    saturation = rgb2hsv(rgb)[..., 1]
    if saturation.max() < min_saturation:
        return np.zeros(rgb.shape[:2], dtype=bool)
    threshold = max(float(threshold_otsu(saturation)), min_saturation)
    mask = saturation > threshold
    mask = remove_small_holes(mask, max_size=max_hole_px)
    return remove_small_objects(mask, max_size=max(min_object_px - 1, 0))


def tissue_fraction(mask: np.ndarray, box: tuple, scale: float) -> float:
    """The share of tissue in ``box`` = (x, y, width, height) of level-0 pixels, read from a
    thumbnail ``mask`` that is ``scale`` times level 0 (e.g. 1/64)."""
    x, y, width, height = box
    x0, y0 = int(np.floor(x * scale)), int(np.floor(y * scale))
    x1 = max(x0 + 1, int(np.ceil((x + width) * scale)))
    y1 = max(y0 + 1, int(np.ceil((y + height) * scale)))
    window = mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    return float(window.mean()) if window.size else 0.0

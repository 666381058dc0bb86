"""Where the tissue is: two detectors, because a tile and a slide thumbnail are different pictures.

* :func:`tissue_background` reads **tiles** (mostly tissue, some glass or lumen, one stain and
  scanner per batch): near-white pixels are background. A fixed white level, because a data-driven
  threshold (Otsu) would split a tile that holds little glass between two kinds of tissue. Used by
  the tissue prior of the pseudo masks and to gate every localiser's maps.
* :func:`thumbnail_tissue_mask` reads the **thumbnail of a whole slide** (mostly glass, scanners
  differ in brightness): stained tissue is saturated, glass is not, and Otsu's threshold on the
  HSV saturation adapts to the slide; holes are filled and specks dropped. A thumbnail that is all
  glass (nothing above ``min_saturation``) gives an empty mask rather than Otsu's split of noise.
  Used to find the tiles of a slide (``segmix tile``) and where to predict one.

Only torch, NumPy and scikit-image.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects
from torch import Tensor

__all__ = ["thumbnail_tissue_mask", "tissue_background", "tissue_fraction"]


def tissue_background(images: Tensor, white_level: int = 200, min_speck: int = 64) -> Tensor:
    """Near-white pixels of uint8 RGB ``images [B, 3, H, W]`` (or ``[B, H, W, 3]``) -> bool
    ``[B, H, W]``; white specks and tissue specks under ``min_speck`` pixels are removed."""
    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W] uint8, got {tuple(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    grey = images.float().mean(dim=1)  # [B, H, W]
    white = (grey > white_level).cpu().numpy()
    out = np.empty_like(white)
    for i, mask in enumerate(white):
        if min_speck:
            mask = remove_small_objects(mask, max_size=min_speck)
            mask = ~remove_small_objects(~mask, max_size=min_speck)
        out[i] = mask
    return torch.from_numpy(out).to(images.device)


def thumbnail_tissue_mask(rgb: np.ndarray, *, min_saturation: float = 0.05, min_object_px: int = 16,
                max_hole_px: int = 64) -> np.ndarray:
    """Boolean ``H x W`` tissue mask of an RGB uint8 thumbnail: saturation above Otsu's threshold
    (and above ``min_saturation``), holes up to ``max_hole_px`` filled, objects under
    ``min_object_px`` removed."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"thumbnail_tissue_mask needs an RGB image H x W x 3, got shape {rgb.shape}")
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

"""Pseudo masks from CAMs (label gating, background models, ignore band, clean-up), palette PNGs,
and segmentation metrics under both evaluation protocols. Depends on torch, NumPy, scikit-image
and Pillow only::

    from pseudo_masks import PseudoMaskConfig, cams_to_masks
    masks = cams_to_masks(cams, labels, PseudoMaskConfig(background="power", alpha=2.0))
"""

from .evaluate import PROTOCOLS, ConfusionMatrix, segmentation_metrics
from .generate import (
    BACKGROUNDS,
    IGNORE_INDEX,
    PseudoMaskConfig,
    cams_to_masks,
    tissue_background,
    trivial_masks,
)
from .palette import overlay, palette_colors, read_mask_png, write_legend, write_mask_png

__all__ = [
    "BACKGROUNDS", "IGNORE_INDEX", "PROTOCOLS", "ConfusionMatrix", "PseudoMaskConfig",
    "cams_to_masks", "overlay", "palette_colors", "read_mask_png", "segmentation_metrics",
    "tissue_background", "trivial_masks", "write_legend", "write_mask_png",
]

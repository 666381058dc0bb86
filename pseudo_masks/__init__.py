"""Pseudo masks from CAMs (label gating, background models, ignore band, clean-up) and
segmentation metrics under both evaluation protocols. Depends on torch, NumPy and scikit-image
only (the label space comes from :mod:`segmix.labels`); writing masks as palette PNGs is
:mod:`segmix.data.palette`'s job::

    from pseudo_masks import PseudoMaskConfig, cams_to_masks
    masks = cams_to_masks(cams, labels, PseudoMaskConfig(background="power", alpha=2.0))
"""

from .evaluate import PROTOCOLS, ConfusionMatrix, segmentation_metrics
from .refine import affinity_refine
from .generate import (
    BACKGROUNDS,
    IGNORE_INDEX,
    PseudoMaskConfig,
    area_pixels,
    cams_to_masks,
    class_maps,
    threshold_scores,
    trivial_masks,
)
from .threshold import (
    ScoreHistogram,
    choose_threshold,
    estimate_miou,
    expected_miou,
    two_mode_posterior,
)
from .self_training import segmenter_foreground, self_training_map
from .tissue import tissue_background

__all__ = [
    "BACKGROUNDS", "IGNORE_INDEX", "PROTOCOLS", "ConfusionMatrix", "PseudoMaskConfig",
    "ScoreHistogram", "choose_threshold", "class_maps", "estimate_miou", "expected_miou",
    "segmenter_foreground", "self_training_map", "threshold_scores", "two_mode_posterior",
    "affinity_refine", "area_pixels",
    "cams_to_masks", "segmentation_metrics", "tissue_background", "trivial_masks",
]

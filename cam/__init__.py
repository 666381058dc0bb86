"""Class activation maps from a trained classifier.

All classes of a batch in one forward pass, raw maps ``[B, K, H, W]``, several layers fused, and
test-time augmentation including shuffle TTA. Depends on torch (and ``segmix.shuffle``) only::

    from cam import create_cam, cams_with_tta, ShuffleTTA, normalize_per_class
    cams = cams_with_tta(create_cam("gradcam", model, ["conv_head"]), images,
                         flips=["horizontal"], shuffle=ShuffleTTA(patch_size=32, draws=4))
"""

from .base import FINAL_FEATURES, FUSIONS, BaseCAM, layer_grids, model_mode, normalize_per_class
from .methods import CAM, METHODS, GradCAM, GradCAMPlusPlus, LayerCAM, create_cam
from .tta import ShuffleTTA, cams_with_tta

__all__ = [
    "BaseCAM", "CAM", "FINAL_FEATURES", "FUSIONS", "GradCAM", "GradCAMPlusPlus", "LayerCAM",
    "METHODS", "ShuffleTTA", "cams_with_tta", "create_cam", "layer_grids", "model_mode",
    "normalize_per_class",
]

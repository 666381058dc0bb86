"""Optional dense-CRF refinement (Krähenbühl & Koltun 2011) of pseudo-mask scores.

Needs the extra ``crf`` (``pip install "segmix-wsss[crf]"``, which builds ``pydensecrf2`` from
source and needs a C++ compiler). Many recent pathology systems skip this step.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crf_refine", "require_crf"]


def require_crf():
    """Import the dense-CRF backend or raise an ``ImportError`` that says how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:
        raise ImportError(
            "dense CRF refinement needs the optional extra 'crf': pip install"
            " \"segmix-wsss[crf]\" (builds pydensecrf2; needs a C++ compiler), or set"
            " masks.crf=false"
        ) from error
    return dcrf


def crf_refine(image: np.ndarray, probabilities: np.ndarray, iterations: int = 5,
               gaussian_sxy: float = 3, gaussian_compat: float = 3, bilateral_sxy: float = 50,
               bilateral_srgb: float = 13, bilateral_compat: float = 10) -> np.ndarray:
    """Mean-field inference on an ``H x W x 3`` uint8 image with class probabilities ``[C, H, W]``;
    returns the refined marginals ``[C, H, W]``."""
    dcrf = require_crf()
    classes, height, width = probabilities.shape
    field = dcrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).reshape(classes, -1)
    field.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    field.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    field.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                               rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                               compat=bilateral_compat)
    marginals = np.array(field.inference(iterations), dtype=np.float32)
    return marginals.reshape(classes, height, width)

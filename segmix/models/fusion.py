"""A segmenter's pixels and a tile classifier's probabilities, read together.

The segmenter decides *where* the tissue is: a pixel is foreground where its background
probability is below the sum of its class probabilities (below 0.5), whichever class that is. The
class of a foreground pixel is the largest product of the segmenter's class probability and the
tile classifier's probability of that class raised to ``weight``: two posteriors of the same class
from independent models, multiplied (``weight`` 1), the classifier's alone as ``weight`` grows, the
segmenter's alone at 0. Where the classifier is sure of one class, the tile takes it; where it
hesitates between two, the segmenter's pixels choose between them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fuse_tile_class"]


def fuse_tile_class(probabilities: np.ndarray, class_probabilities: np.ndarray,
                    weight: float = 1.0) -> np.ndarray:
    """The fused mask, ``H x W`` uint8 (0 background, 1..K classes), of the segmenter's softmax
    ``probabilities`` ``[K + 1, H, W]`` (background first) and the tile classifier's
    ``class_probabilities`` ``[K]``, weighed by ``weight`` >= 0."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    tile = np.asarray(class_probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or tile.shape != (probabilities.shape[0] - 1,):
        raise ValueError(f"probabilities [K + 1, H, W] and class_probabilities [K] expected, got"
                         f" {probabilities.shape} and {tile.shape}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    classes = probabilities[1:]
    foreground = probabilities[0] < classes.sum(axis=0)
    # the product in logs: a large weight must not underflow every class to 0
    fused = (np.log(np.clip(classes, 1e-12, 1.0))
             + weight * np.log(np.clip(tile, 1e-12, 1.0))[:, None, None])
    return np.where(foreground, fused.argmax(axis=0) + 1, 0).astype(np.uint8)

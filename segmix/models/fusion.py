"""A segmenter's pixels and a tile classifier's probabilities, read together.

The segmenter decides *where* the tissue is: a pixel is foreground where its background
probability is below the sum of its class probabilities (below 0.5), whichever class that is. The
class of a foreground pixel is the largest product of the segmenter's class probability and the
tile classifier's probability of that class raised to ``weight``: two posteriors of the same class
from independent models, multiplied (``weight`` 1), the classifier's alone as ``weight`` grows, the
segmenter's alone at 0. Where the classifier is sure of one class, the tile takes it; where it
hesitates between two, the segmenter's pixels choose between them.

:func:`one_class_mask` reads an image known to hold one class (a tile of a single-label dataset):
the same foreground, all of it painted with one class, the class with the largest share of the
segmenter's class probability over that foreground (times the classifier's, if there is one).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["fuse_tile_class", "one_class_mask"]


def _checked(probabilities: np.ndarray, class_probabilities: Optional[Sequence[float]],
             weight: float) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """``probabilities`` as float32 ``[K + 1, H, W]``, the tile's ``[K]`` (None stays None) and
    the foreground (background below the sum of the classes); ValueError on other shapes."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    tile = None if class_probabilities is None else np.asarray(class_probabilities, np.float32)
    if probabilities.ndim != 3 or (tile is not None
                                   and tile.shape != (probabilities.shape[0] - 1,)):
        raise ValueError(f"probabilities [K + 1, H, W] and class_probabilities [K] expected, got"
                         f" {probabilities.shape} and {None if tile is None else tile.shape}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    return probabilities, tile, probabilities[0] < probabilities[1:].sum(axis=0)


def _log(values: np.ndarray) -> np.ndarray:
    """Logarithms that do not reach -inf: a large weight must not underflow every class to 0."""
    return np.log(np.clip(values, 1e-12, 1.0))


def fuse_tile_class(probabilities: np.ndarray, class_probabilities: Sequence[float],
                    weight: float = 1.0) -> np.ndarray:
    """The fused mask, ``H x W`` uint8 (0 background, 1..K classes), of the segmenter's softmax
    ``probabilities`` ``[K + 1, H, W]`` (background first) and the tile classifier's
    ``class_probabilities`` ``[K]``, weighed by ``weight`` >= 0."""
    probabilities, tile, foreground = _checked(probabilities, class_probabilities, weight)
    fused = _log(probabilities[1:]) + weight * _log(tile)[:, None, None]
    return np.where(foreground, fused.argmax(axis=0) + 1, 0).astype(np.uint8)


def one_class_mask(probabilities: np.ndarray, class_probabilities: Optional[Sequence[float]] = None,
                   weight: float = 1.0, foreground: Optional[np.ndarray] = None) -> np.ndarray:
    """The mask, ``H x W`` uint8, of an image that holds one class: the foreground of
    :func:`fuse_tile_class` (or ``foreground``, bool ``H x W``, where another rule draws it), all
    of it the class whose share of the segmenter's class probability summed over the foreground,
    times ``class_probabilities ** weight`` if given, is largest."""
    probabilities, tile, own_foreground = _checked(probabilities, class_probabilities, weight)
    if foreground is None:
        foreground = own_foreground
    elif np.shape(foreground) == own_foreground.shape:
        foreground = np.asarray(foreground, dtype=bool)
    else:
        raise ValueError(f"foreground {np.shape(foreground)} must match the probabilities' pixels"
                         f" {own_foreground.shape}")
    if not foreground.any():
        return np.zeros(foreground.shape, np.uint8)
    mass = probabilities[1:, foreground].sum(axis=1)
    score = _log(mass / mass.sum()) + (0.0 if tile is None else weight * _log(tile))
    return np.where(foreground, int(score.argmax()) + 1, 0).astype(np.uint8)

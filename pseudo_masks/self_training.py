"""Self-training's foreground map: where a trained segmenter sees tissue of any class, fused with
the localiser's map, for the next round of pseudo masks. Only torch::

    from pseudo_masks import self_training_map
    foreground = self_training_map(probabilities, localiser_map, weight=0.5)

The segmenter's foreground is ``1 - p(background)``, whichever class it names: the next round's
masks take their classes from the tile's labels (the CAMs name them within the tile's classes), so
the segmenter only has to say *where*. Its probability of the tile's own classes would say less:
where it names the wrong class (on EBHI-Seg it reads most Normal tissue as Polyp) that tissue would
count as background, and the round's val pseudo masks fell from 72.7 to 59.6 mIoU that way
(docs/benchmarks.md, "Self-training on EBHI-Seg").
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

__all__ = ["segmenter_foreground", "self_training_map"]


def segmenter_foreground(probabilities: Tensor) -> Tensor:
    """The probability ``[H, W]`` that a pixel is tissue of any class: one minus the background
    channel (index 0) of a segmenter's softmax ``probabilities`` ``[K + 1, H, W]``."""
    if probabilities.ndim != 3 or probabilities.shape[0] < 2:
        raise ValueError(f"probabilities [K + 1, H, W] with K >= 1 expected, got"
                         f" {tuple(probabilities.shape)}")
    return (1 - probabilities[0].float()).clamp(0, 1)


def self_training_map(probabilities: Tensor, localiser: Optional[Tensor], weight: float) -> Tensor:
    """The next round's foreground map ``[H, W]`` in [0, 1]: ``weight`` x the segmenter's
    :func:`segmenter_foreground` plus (1 - ``weight``) x the ``localiser``'s map (``None``: the
    segmenter's alone)."""
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    segmenter = segmenter_foreground(probabilities)
    if localiser is None:
        return segmenter
    if localiser.shape != segmenter.shape:
        raise ValueError(f"the localiser map is {tuple(localiser.shape)}, the segmenter's"
                         f" {tuple(segmenter.shape)}")
    return weight * segmenter + (1 - weight) * localiser.float()

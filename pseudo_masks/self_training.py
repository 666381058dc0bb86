"""Self-training's foreground map: what a trained segmenter calls the tile's own classes, fused with
the localiser's map, for the next round of pseudo masks. Only torch::

    from pseudo_masks import self_training_map
    foreground = self_training_map(probabilities, labels, localiser_map, weight=0.5)
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

__all__ = ["label_foreground", "self_training_map"]


def label_foreground(probabilities: Tensor, labels: Tensor) -> Tensor:
    """The probability ``[H, W]`` that a pixel is foreground of the tile's own classes: the sum of
    a segmenter's ``probabilities`` ``[K + 1, H, W]`` (0: background) over the classes ``labels``
    ``[K]`` (multi-hot) names. What it gives to a class the tile lacks counts as background."""
    if probabilities.shape[0] != labels.shape[0] + 1:
        raise ValueError(f"probabilities have {probabilities.shape[0]} channels; expected"
                         f" {labels.shape[0] + 1} (background and the {labels.shape[0]} classes)")
    present = labels.to(probabilities.device) > 0
    return probabilities[1:][present].float().sum(0).clamp(0, 1)


def self_training_map(probabilities: Tensor, labels: Tensor, localiser: Optional[Tensor],
                      weight: float) -> Tensor:
    """The next round's foreground map ``[H, W]`` in [0, 1]: ``weight`` x the segmenter's
    :func:`label_foreground` plus (1 - ``weight``) x the ``localiser``'s map (``None``: the
    segmenter's alone)."""
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    segmenter = label_foreground(probabilities, labels)
    if localiser is None:
        return segmenter
    if localiser.shape != segmenter.shape:
        raise ValueError(f"the localiser map is {tuple(localiser.shape)}, the segmenter's"
                         f" {tuple(segmenter.shape)}")
    return weight * segmenter + (1 - weight) * localiser.float()

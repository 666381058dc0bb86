"""The segmentation stage's loss: cross-entropy, optionally weighted by class rarity, plus Dice.

``class_loss_weights`` gives a cross-entropy weight per output channel from how many train tiles
hold each class (the same counts class-balanced sampling and synthesis read): foreground class
``k`` weighs ``(share of tiles) ** -power``, scaled so that the average labelled pixel of the
train split (tiles weighted by their count) keeps weight 1, and background keeps 1. Power 0 is the
plain cross-entropy. Where sampling shows the rare classes more often, the weights make each of
their pixels count more, at no extra images per epoch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["class_loss_weights", "SegmentationLoss"]


def class_loss_weights(tile_counts: Sequence[float], power: float) -> Tensor:
    """Cross-entropy weights ``[K + 1]`` (background first) for classes held by ``tile_counts``
    train tiles each (see the module); a class no tile holds weighs 1 (its pixels never occur)."""
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    counts = torch.as_tensor(tile_counts, dtype=torch.float64)
    if counts.ndim != 1 or bool((counts < 0).any()):
        raise ValueError(f"tile_counts must be a 1-D list of counts >= 0, got {tile_counts!r}")
    held = counts > 0
    weights = torch.ones_like(counts)
    if bool(held.any()):
        raw = (counts[held] / counts.sum()).pow(-float(power))
        weights[held] = raw * counts[held].sum() / (raw * counts[held]).sum()
    return torch.cat([torch.ones(1, dtype=torch.float64), weights]).float()


class SegmentationLoss(nn.Module):
    """``cross_entropy(class_weights) + dice_weight * Dice``, both ignoring ``ignore_index``;
    logits ``[B, K+1, H, W]`` against masks ``[B, H, W]``."""

    def __init__(self, ignore_index: int, dice_weight: float = 1.0,
                 class_weights: Optional[Tensor] = None) -> None:
        super().__init__()
        self.ignore_index, self.dice_weight = int(ignore_index), float(dice_weight)
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=ignore_index, from_logits=True)

    def forward(self, logits: Tensor, masks: Tensor) -> Tensor:
        loss = F.cross_entropy(logits, masks, weight=self.class_weights,
                               ignore_index=self.ignore_index)
        return loss + self.dice_weight * self.dice(logits, masks) if self.dice_weight else loss

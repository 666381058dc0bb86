"""Class-balanced synthesis for the segmentation stage: rare-class tissue pasted, with its mask, into
other tiles of the batch (the DiffMix idea of synthesising rare classes, without a diffusion model).

Each tile of a batch becomes, with probability ``probability``, the recipient of a donor drawn from
the other tiles of the batch in proportion to the rarity of its classes (``class_weights``: a
weight per class, e.g. the inverse of its share of the train tiles to a power; a donor weighs
what its rarest labelled class weighs). The donor's labelled pixels (classes 1..K of its mask;
background and ignore stay behind) replace the recipient's at the same place, in image and mask
alike, and the recipient's target becomes the class areas of its new mask. The draws come from the
caller's generator, on its device; the pasting runs where the batch is.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..shuffle import fresh_generator
from .mixers import BatchMixer, Mixed

__all__ = ["rarity_weights", "paste_rare_classes", "RareClassPaste"]


def rarity_weights(tile_counts: Sequence[float], power: float = 1.0) -> Tensor:
    """A weight per class from how many train tiles hold it: ``(share of tiles) ** -power``
    (power 0: every class alike), scaled so that the rarest class weighs 1; a class no tile holds
    weighs 0 (it cannot be donated)."""
    counts = torch.as_tensor(tile_counts, dtype=torch.float64)
    weights = torch.where(counts > 0, (counts / counts.sum()).pow(-float(power)),
                          torch.zeros_like(counts))
    return (weights / weights.max()).float() if weights.max() > 0 else weights.float()


def paste_rare_classes(images: Tensor, targets: Tensor, masks: Tensor, class_weights: Tensor,
                       probability: float, generator: torch.Generator) -> Mixed:
    """Paste donors' labelled pixels into recipients (see the module); returns the new batch with
    ``params`` ``{"donor": [B]}`` (-1 where a tile received nothing)."""
    batch, num_classes = targets.shape
    draws = generator.device
    weights = class_weights.to(targets.device, targets.dtype)
    donor_weight = ((targets > 0) * weights).amax(dim=1).double().to(draws)  # [B]
    others = donor_weight.expand(batch, batch).clone()
    others.fill_diagonal_(0)  # a tile is not its own donor
    chosen = torch.rand(batch, generator=generator, device=draws) < probability
    receiving = torch.nonzero(chosen & (others.sum(dim=1) > 0)).flatten()
    donor = torch.full((batch,), -1, dtype=torch.long, device=draws)
    if receiving.numel() == 0:
        return Mixed(images, targets, masks, {"donor": donor})
    donor[receiving] = torch.multinomial(others[receiving], 1, generator=generator).flatten()
    receiving, sources = receiving.to(images.device), donor[receiving].to(images.device)
    region = (masks[sources] >= 1) & (masks[sources] <= num_classes)  # the donors' labelled pixels
    images, masks, targets = images.clone(), masks.clone(), targets.clone()
    images[receiving] = torch.where(region.unsqueeze(1), images[sources], images[receiving])
    masks[receiving] = torch.where(region, masks[sources], masks[receiving])
    targets[receiving] = _class_areas(masks[receiving], num_classes).to(targets.dtype)
    return Mixed(images, targets, masks, {"donor": donor})


def _class_areas(masks: Tensor, num_classes: int) -> Tensor:
    """``[B, K]``: each class's share of the labelled pixels of each mask (0 where none)."""
    classes = torch.arange(1, num_classes + 1, device=masks.device).view(1, -1, 1, 1)
    pixels = (masks.unsqueeze(1) == classes).flatten(2).sum(dim=2).float()
    return pixels / pixels.sum(dim=1, keepdim=True).clamp(min=1)


class RareClassPaste(BatchMixer):
    """The segmentation batch mixer with class-balanced synthesis first: each batch gets
    :func:`paste_rare_classes`, then ``inner`` (the shuffle, or none); from epoch
    ``cooldown_from`` on nothing is pasted (the model ends on real tiles, as the shuffle does)."""

    def __init__(self, inner: BatchMixer, class_weights: Tensor, probability: float,
                 cooldown_from: Optional[int] = None) -> None:
        if not 0 <= probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.inner, self.class_weights = inner, class_weights
        self.probability, self.cooldown_from = float(probability), cooldown_from
        self.name = f"paste+{inner.name}"
        self.active = True

    def __call__(self, images, targets, masks=None, generator=None) -> Mixed:
        if masks is not None and self.active and self.probability > 0:
            generator = generator if generator is not None else fresh_generator()
            images, targets, masks, _ = paste_rare_classes(
                images, targets, masks, self.class_weights, self.probability, generator)
        return self.inner(images, targets, masks, generator)

    def start_epoch(self, epoch: int) -> Dict[str, Any]:
        self.active = self.cooldown_from is None or epoch < self.cooldown_from
        return {**self.inner.start_epoch(epoch), "paste_on": self.active}

    def end_epoch(self, epoch: int, loss: float) -> None:
        self.inner.end_epoch(epoch, loss)

    @property
    def history(self) -> List[Dict[str, Any]]:
        return self.inner.history

    def state_dict(self) -> Dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)

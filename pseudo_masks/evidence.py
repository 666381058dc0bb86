"""Evidence-removal localiser (the extremal-perturbation / max-min family): a small mask network,
trained against a frozen classifier, that marks the part of a tile holding its class evidence.

Keeping the masked region (the rest replaced by a fill) must keep the tile's class confident;
removing it (the region replaced by the fill) must bring the class down to its prior; an area
term keeps the full mask from winning both. The fill is a blur of the tile or, through the patch
shuffle, other tiles' patches (a classifier trained on mosaics reads them as other tissue). The
network reads the classifier's own features at strides 8 and 16 and the tile's colours, so it
learns where the evidence lies, not what it is (the fills: :mod:`pseudo_masks.fill`)::

    localiser = EvidenceMask(classifier)          # frozen timm classifier, eval mode
    loss, parts = evidence_loss(localiser, images, targets, tissue, fill=blur_fill(images, 16),
                                prior=class_frequency, softmax=True, area_weight=1.0)
    maps = localiser(images) * tissue             # [B, 1, H, W] foreground in [0, 1]
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EVIDENCE_FILLS", "EvidenceMask", "evidence_loss", "feature_layers"]

EVIDENCE_FILLS = ("blur", "shuffle")


def feature_layers(classifier: nn.Module) -> List[Tuple[str, int]]:
    """``(module name, channels)`` of a timm classifier's feature maps at strides 8 and 16 (its
    ``feature_info``); a ``ValueError`` names the strides it has when one is missing."""
    info = getattr(classifier, "feature_info", None)
    if not info:
        raise ValueError(f"{type(classifier).__name__} has no timm feature_info: name the layers")
    by_stride = {entry["reduction"]: (entry["module"], entry["num_chs"]) for entry in info}
    missing = [stride for stride in (8, 16) if stride not in by_stride]
    if missing:
        raise ValueError(f"{type(classifier).__name__} has no feature map at stride {missing};"
                         f" its strides: {sorted(by_stride)}")
    return [by_stride[8], by_stride[16]]


class EvidenceMask(nn.Module):
    """Foreground mask ``[B, 1, H, W]`` in [0, 1] of normalised images ``[B, 3, H, W]``.

    The classifier stays frozen and outside this module's parameters and state dict: only the head
    (1x1 projections of two feature maps and of the downsampled image, two convolutions) learns.
    ``layers``: ``(module name, channels)`` pairs, the first one's resolution is the mask's
    (default: :func:`feature_layers`).
    """

    def __init__(self, classifier: nn.Module, layers: Optional[Sequence[Tuple[str, int]]] = None,
                 hidden: int = 32) -> None:
        super().__init__()
        for parameter in classifier.parameters():
            parameter.requires_grad_(False)
        self.__dict__["classifier"] = classifier.eval()  # not a submodule: not trained, not saved
        self.layers = list(layers or feature_layers(classifier))
        self.project = nn.ModuleList(nn.Conv2d(channels, hidden, 1) for _, channels in self.layers)
        self.colour = nn.Conv2d(3, hidden, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, 1, 1))

    @torch.no_grad()
    def features(self, images: Tensor) -> List[Tensor]:
        """The classifier's activations at ``layers`` (float32)."""
        found: Dict[str, Tensor] = {}
        hooks = [self.classifier.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: found.__setitem__(name, out))
            for name, _ in self.layers]
        try:
            self.classifier(images)
        finally:
            for hook in hooks:
                hook.remove()
        return [found[name].float() for name, _ in self.layers]

    def logits(self, images: Tensor) -> Tensor:
        """Mask logits ``[B, 1, h, w]`` at the first layer's resolution."""
        features = self.features(images)
        size = features[0].shape[-2:]
        hidden = self.colour(F.adaptive_avg_pool2d(images, size))
        for project, feature in zip(self.project, features):
            hidden = hidden + F.interpolate(project(feature), size=size, mode="bilinear",
                                            align_corners=False)
        return self.head(hidden)

    def forward(self, images: Tensor) -> Tensor:
        return torch.sigmoid(F.interpolate(self.logits(images), size=images.shape[-2:],
                                           mode="bilinear", align_corners=False))


def _label_probability(logits: Tensor, targets: Tensor, softmax: bool) -> Tensor:
    scores = torch.softmax(logits.float(), dim=1) if softmax else torch.sigmoid(logits.float())
    return (scores * targets).sum(dim=1) / targets.sum(dim=1).clamp_min(1)


def evidence_loss(localiser: EvidenceMask, images: Tensor, targets: Tensor, tissue: Tensor,
                  fill: Tensor, *, prior: Tensor, softmax: bool,
                  area_weight: float) -> Tuple[Tensor, Dict[str, float]]:
    """The training loss of ``localiser`` on one batch and its parts.

    ``images`` normalised ``[B, 3, H, W]``; ``targets`` multi-hot ``[B, K]``; ``tissue`` ``[B, 1, H,
    W]`` (1 where the mask may be); ``fill`` what removed pixels become; ``prior`` ``[K]`` each
    class's share of the tiles; ``softmax`` as the classifier was trained (else sigmoid).
    keep = -log p(label | mask kept), remove = binary cross-entropy of p(label | mask removed)
    against the label's prior, area = the mask's share of the tissue.
    """
    mask = localiser(images) * tissue
    keep = localiser.classifier(mask * images + (1 - mask) * fill)
    removed = localiser.classifier((1 - mask) * images + mask * fill)
    p_keep = _label_probability(keep, targets, softmax)
    p_removed = _label_probability(removed, targets, softmax)
    target_prior = (prior.to(targets) * targets).sum(dim=1) / targets.sum(dim=1).clamp_min(1)
    keep_loss = -torch.log(p_keep.clamp_min(1e-6)).mean()
    remove_loss = F.binary_cross_entropy(p_removed.clamp(1e-6, 1 - 1e-6), target_prior)
    area = ((mask.sum(dim=(1, 2, 3)) / tissue.sum(dim=(1, 2, 3)).clamp_min(1))).mean()
    total = keep_loss + remove_loss + area_weight * area
    return total, {"keep": float(keep_loss.detach()), "remove": float(remove_loss.detach()),
                   "area": float(area.detach())}

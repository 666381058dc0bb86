"""The feature-axis localiser: the main axis along which dense features vary *inside* a tile.

Across tiles, a backbone's features vary mostly with stain, scanner and class; inside one tile they
vary mostly with the kind of tissue (on EBHI-Seg: glands against stroma). So:

1. **dense features**: feature maps of several layers of a frozen backbone, resized to the finest
   one's grid (:func:`fuse_feature_maps`);
2. **centred** (:func:`smoothed_centred`): per tile, minus the tile's mean over its tissue cells
   (what is left is the variation inside the tile); for fitting, first averaged over ``smoothing``
   x ``smoothing`` cells, so that the axis follows regions, not single nuclei;
3. **axis**: the first principal component of those cells, pooled over many tiles and standardised
   per channel (:func:`fit_feature_axis`); a cell's score (of the unsmoothed features, for sharp
   maps) is its projection on it, scaled to [0, 1] by the 1st and 99th percentiles of the fitted
   cells;
4. **naming**: a principal axis has no sign. :func:`side_evidence` asks a classifier which side
   carries the tile's class: keep the cells above the tile's median and fill the rest (a blur of
   the tile, or other tiles' patches through the shuffle kernel: :func:`shuffle_fills`), then the
   reverse; the side whose keeping holds the class probability higher is foreground.

Depends on torch and NumPy only; the classifier enters as a function (see
:data:`pseudo_masks.fill.ClassProbability`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .fill import ClassProbability

__all__ = ["FeatureAxis", "fit_feature_axis", "fuse_feature_maps", "sample_cells",
           "side_evidence", "smoothed_centred"]

PERCENTILES = (1.0, 99.0)  # the fitted cells' scores between these map to 0 and 1


def fuse_feature_maps(maps: Sequence[Tensor]) -> Tensor:
    """Feature maps ``[N, C_i, h_i, w_i]`` resized (bilinear) to the largest grid and stacked along
    channels -> ``[N, sum C_i, h, w]`` (float32)."""
    if not maps:
        raise ValueError("fuse_feature_maps needs at least one feature map")
    height = max(m.shape[-2] for m in maps)
    width = max(m.shape[-1] for m in maps)
    return torch.cat([F.interpolate(m.float(), size=(height, width), mode="bilinear",
                                    align_corners=False) for m in maps], dim=1)


def smoothed_centred(features: Tensor, tissue: Tensor, smoothing: int) -> Tensor:
    """``features [N, C, h, w]`` averaged over ``smoothing`` x ``smoothing`` cells (odd; 1 = off)
    and minus each tile's mean over its ``tissue [N, h, w]`` cells (all cells where a tile has no
    tissue)."""
    if smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"smoothing must be an odd number of cells >= 1, got {smoothing}")
    if tissue.shape != (features.shape[0], *features.shape[-2:]):
        raise ValueError(f"tissue must be [N, h, w] = {(features.shape[0], *features.shape[-2:])},"
                         f" got {tuple(tissue.shape)}")
    features = features.float()
    if smoothing > 1:
        features = F.avg_pool2d(features, smoothing, stride=1, padding=smoothing // 2,
                                count_include_pad=False)
    weight = tissue[:, None].float()
    none = weight.sum(dim=(2, 3), keepdim=True) == 0
    weight = torch.where(none, torch.ones_like(weight), weight)
    mean = (features * weight).sum(dim=(2, 3), keepdim=True) / weight.sum(dim=(2, 3), keepdim=True)
    return features - mean


def sample_cells(features: Tensor, tissue: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Up to ``count`` tissue cells of each tile of ``features [N, C, h, w]``, drawn without
    replacement -> ``[P, C]``."""
    cells = []
    for tile, keep in zip(features, tissue):
        inside = tile.permute(1, 2, 0)[keep]
        if len(inside) > count:
            inside = inside[torch.randperm(len(inside), generator=generator)[:count]]
        cells.append(inside)
    return torch.cat(cells) if cells else features.new_zeros((0, features.shape[1]))


@dataclass
class FeatureAxis:
    """A direction in feature space (per channel, already divided by the channel's spread) and the
    scores that map to 0 and 1."""

    direction: Tensor
    low: float
    high: float

    def project(self, centred: Tensor) -> Tensor:
        """Raw scores ``[N, h, w]`` of centred features ``[N, C, h, w]``."""
        if centred.shape[1] != len(self.direction):
            raise ValueError(f"features have {centred.shape[1]} channels, the axis"
                             f" {len(self.direction)}")
        return torch.einsum("nchw,c->nhw", centred.float(), self.direction.to(centred.device))

    def scores(self, centred: Tensor) -> Tensor:
        """Scores ``[N, h, w]`` in [0, 1] (1 = far on the foreground side)."""
        return ((self.project(centred) - self.low) / max(self.high - self.low, 1e-12)).clamp(0, 1)

    def flipped(self) -> "FeatureAxis":
        """The same axis pointing the other way."""
        return FeatureAxis(-self.direction, -self.high, -self.low)

    def state_dict(self) -> Dict[str, object]:
        return {"direction": self.direction.clone(), "low": self.low, "high": self.high}

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> "FeatureAxis":
        return cls(state["direction"], float(state["low"]), float(state["high"]))


def fit_feature_axis(cells: Tensor) -> FeatureAxis:
    """The first principal component of centred cells ``[P, C]`` (channels standardised), with the
    1st / 99th percentiles of the cells' scores as its 0 and 1. Its sign is arbitrary: name it
    with :func:`side_evidence`."""
    if cells.dim() != 2 or len(cells) < 2:
        raise ValueError(f"cells must be [P, C] with P >= 2, got {tuple(cells.shape)}")
    cells = cells.float()
    spread = cells.std(dim=0).clamp_min(1e-6)
    standard = cells / spread
    standard = standard - standard.mean(dim=0)
    _, _, vectors = torch.linalg.svd(standard, full_matrices=False)
    direction = vectors[0] / spread
    low, high = np.percentile((cells @ direction).numpy(), PERCENTILES).tolist()
    return FeatureAxis(direction, low, high)


def side_evidence(rgb: np.ndarray, score: np.ndarray, tissue: np.ndarray, labels: Sequence[int],
                  class_probability: ClassProbability, fill: np.ndarray) -> float:
    """How much more of the class ``labels`` a classifier sees in the high side of ``score`` than in
    the low side, in one image: ``p(labels | high side kept, low side -> fill) - p(labels | low
    side kept, high side -> fill)``, the sides split at the median of ``score`` over ``tissue``
    (all ``[H, W]``; glass is kept in both). Positive: the high side is foreground."""
    if not tissue.any():
        return 0.0
    median = np.median(score[tissue])
    high, low = tissue & (score >= median), tissue & (score < median)
    keep_high = np.where(low[..., None], fill, rgb)
    keep_low = np.where(high[..., None], fill, rgb)
    probabilities = class_probability([keep_high, keep_low], labels)
    return float(probabilities[0] - probabilities[1])

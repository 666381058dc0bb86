"""Class-agnostic prototypes: a foreground map from superpixel clusters named by the image labels.

Where a whole-tile classifier's attributions do not outline the object (its evidence is spread
over the tile, or its maps are too coarse; docs/benchmarks.md), kinds of tissue found without the
classifier can be named from the image-level labels instead:

1. **superpixels** (``skimage.segmentation.slic``) of each tile, described by stain and texture
   features (:func:`pixel_features`: CIE Lab, haematoxylin and eosin densities from
   ``skimage.color.rgb2hed``, saturation, local contrast, edge strength);
2. **prototypes**: k-means of the standardised superpixel features over the training tiles
   (:func:`fit_prototypes`), so each superpixel of any tile belongs to one of ``k`` kinds of tissue;
3. **naming**, from the image-level labels only, no mask and no hand-picked colour:

   * by **label statistics** (:func:`class_specificity`): background (plasma, red cells, stroma
     shared by every class) covers the tiles of every class alike, while the objects the labels
     are about differ between classes; a prototype's score is how unevenly its mean area share
     is spread over the classes (1 minus the normalised entropy of that spread);
   * or by **class evidence** (:func:`cluster_evidence`): the drop of the classifier's
     probability of the tile's class when all of one prototype's superpixels are replaced by the
     tile's median colour (or a blurred copy of the tile), averaged over the training tiles;

4. the **foreground map** of a tile (:meth:`Prototypes.foreground`) is each superpixel's
   prototype score, scaled to [0, 1] over the prototypes.

Measured in docs/benchmarks.md ("Prototype localiser"): on white-cell crops, label statistics
find the cell; on EBHI-Seg tiles no naming separates lesion from stroma.

Only torch, numpy and scikit-image: usable from any training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from skimage.color import rgb2hed, rgb2hsv, rgb2lab
from skimage.filters import gaussian, sobel
from skimage.segmentation import slic

from .fill import ClassProbability, median_fill

__all__ = ["FEATURE_NAMES", "FILLS", "Prototypes", "Superpixels", "class_specificity",
           "cluster_evidence", "fit_prototypes", "kmeans", "pixel_features",
           "prototype_shares", "superpixels"]

FILLS = ("median", "blur")  # what replaces a removed prototype: the median colour, a blurred copy

FEATURE_NAMES = ("L", "a", "b", "haematoxylin", "eosin", "saturation", "local contrast", "edges")


def pixel_features(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel stain and texture features of a uint8 RGB image ``[H, W, 3]`` -> float32
    ``[H, W, 8]`` in the order of :data:`FEATURE_NAMES`."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {rgb.dtype} {rgb.shape}")
    lab = rgb2lab(rgb)
    hed = rgb2hed(rgb)
    grey = lab[..., 0] / 100.0
    mean = gaussian(grey, sigma=2)
    contrast = np.sqrt(np.clip(gaussian(grey * grey, sigma=2) - mean * mean, 0, None))
    return np.stack([lab[..., 0], lab[..., 1], lab[..., 2], hed[..., 0] * 100, hed[..., 1] * 100,
                     rgb2hsv(rgb)[..., 1], contrast * 100, sobel(grey) * 100],
                    axis=-1).astype(np.float32)


@dataclass(frozen=True)
class Superpixels:
    """One image's superpixels: ``labels [H, W]`` (int32, 0..S-1), mean ``features [S, F]``, ``areas [S]``
    in pixels."""

    labels: np.ndarray
    features: np.ndarray
    areas: np.ndarray


def superpixels(rgb: np.ndarray, segments: int = 150, compactness: float = 10.0) -> Superpixels:
    """SLIC superpixels of a uint8 RGB image, each described by its mean :func:`pixel_features`."""
    labels = slic(rgb, n_segments=segments, compactness=compactness, start_label=0).astype(np.int32)
    features = pixel_features(rgb).reshape(-1, len(FEATURE_NAMES))
    flat = labels.ravel()
    count = int(flat.max()) + 1
    areas = np.bincount(flat, minlength=count).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=features[:, f], minlength=count)
                     for f in range(features.shape[1])], axis=1)
    return Superpixels(labels, (sums / np.maximum(areas, 1)[:, None]).astype(np.float32), areas)


def kmeans(points: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """Centroids ``[k, F]`` of ``points [N, F]``: k-means++ seeding (seeded), then Lloyd steps."""
    if points.dim() != 2 or points.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points [N, F], got {tuple(points.shape)}")
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    centroids = points[torch.randint(points.shape[0], (1,), generator=generator)]
    for _ in range(1, k):
        nearest = torch.cdist(points, centroids).min(dim=1).values.pow(2)
        pick = torch.multinomial(nearest / nearest.sum().clamp_min(1e-12), 1, generator=generator)
        centroids = torch.cat([centroids, points[pick]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).float()[:, None]
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


@dataclass
class Prototypes:
    """``k`` prototypes of standardised superpixel features and, once named, a foreground score
    each (higher = more class evidence)."""

    mean: torch.Tensor
    std: torch.Tensor
    centroids: torch.Tensor
    scores: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, features: np.ndarray) -> np.ndarray:
        """The prototype index of each superpixel's features ``[S, F]``."""
        standard = (torch.from_numpy(features) - self.mean) / self.std
        return torch.cdist(standard, self.centroids).argmin(dim=1).numpy()

    def prototype_map(self, pixels: Superpixels) -> np.ndarray:
        """The prototype index of every pixel ``[H, W]``."""
        return self.assign(pixels.features)[pixels.labels]

    def foreground(self, pixels: Superpixels) -> np.ndarray:
        """The foreground map ``[H, W]`` in [0, 1]: each pixel's prototype score, min-max scaled
        over the prototypes."""
        low, high = self.scores.min(), self.scores.max()
        unit = ((self.scores - low) / (high - low).clamp_min(1e-12)).numpy()
        return unit[self.prototype_map(pixels)].astype(np.float32)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "centroids": self.centroids,
                "scores": self.scores}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Prototypes":
        return cls(**{key: torch.as_tensor(state[key]) for key in ("mean", "std", "centroids",
                                                                    "scores")})


def fit_prototypes(features: Sequence[np.ndarray], k: int, *, seed: int = 0) -> Prototypes:
    """Prototypes from the superpixel features ``[S_i, F]`` of many images (not named yet: every
    score 0)."""
    points = torch.from_numpy(np.concatenate(features)).float()
    mean, std = points.mean(dim=0), points.std(dim=0).clamp_min(1e-6)
    centroids = kmeans((points - mean) / std, k, seed=seed)
    return Prototypes(mean, std, centroids, torch.zeros(k))


def prototype_shares(prototype_map: np.ndarray, k: int) -> np.ndarray:
    """The share of an image's area each of the ``k`` prototypes covers, ``[k]``."""
    return np.bincount(prototype_map.ravel(), minlength=k)[:k] / prototype_map.size


def class_specificity(shares: np.ndarray, labels: Sequence[Sequence[int]],
                      num_classes: int) -> np.ndarray:
    """Label-statistics score of each prototype, in [0, 1]: 1 minus the normalised entropy of its
    mean area share over the classes (each class's tiles averaged apart, so a frequent class
    does not dominate; a tile of several classes counts for each). 0 = the prototype covers the
    tiles of every class alike (background), 1 = it occurs in one class only.

    ``shares``: ``[N, k]`` prototype area shares of ``N`` tiles (:func:`prototype_shares`);
    ``labels``: each tile's classes (0-based)."""
    if shares.ndim != 2 or len(labels) != shares.shape[0]:
        raise ValueError(f"shares must be [N, k] with one label tuple per row, got"
                         f" {shares.shape} and {len(labels)} labels")
    by_class = np.zeros((num_classes, shares.shape[1]))
    counts = np.zeros(num_classes)
    for row, classes in zip(shares, labels):
        for c in classes:
            by_class[c] += row / len(classes)
            counts[c] += 1 / len(classes)
    seen = counts > 0
    if seen.sum() < 2:
        raise ValueError("label statistics need tiles of at least two classes")
    mean = by_class[seen] / counts[seen, None]
    spread = mean / np.maximum(mean.sum(axis=0, keepdims=True), 1e-12)
    entropy = -(spread * np.log(np.maximum(spread, 1e-12))).sum(axis=0) / np.log(seen.sum())
    return np.clip(1 - entropy, 0, 1)


def cluster_evidence(rgb: np.ndarray, prototype_map: np.ndarray, labels: Sequence[int], k: int,
                     class_probability: ClassProbability,
                     fill: Optional[np.ndarray] = None) -> np.ndarray:
    """Class evidence of each prototype in one image, ``[k]`` (0 for absent prototypes): the drop
    of the probability of the image's classes ``labels`` when every pixel of that prototype is
    replaced by ``fill`` (default: the image's median colour, :func:`median_fill`). Weigh it by
    :func:`prototype_shares` to average over images.

    ``class_probability(images, labels)`` maps uint8 RGB images ``[H, W, 3]`` to the probability
    of ``labels`` (their mean, for several) for each, ``[N]``.
    """
    fill = median_fill(rgb) if fill is None else fill
    present = np.flatnonzero(prototype_shares(prototype_map, k))
    removed = [np.where((prototype_map == c)[..., None], fill, rgb) for c in present]
    probabilities = class_probability([rgb, *removed], labels)
    drops = np.zeros(k)
    drops[present] = probabilities[0] - probabilities[1:]
    return drops

"""CAMs -> pseudo masks: label gating, a background model, an ignore band, clean-up.

Label space of the output: 0 = background, ``1..K`` = the classes, 255 = ignore (uncertain pixels;
a segmentation loss with ``ignore_index=255`` skips them).

Steps, batched in torch (clean-up per image with scikit-image):

1. **gate**: maps of classes absent from the tile's image-level label can never win;
2. **normalise** each present class's map to ``[0, 1]`` (negatives clipped, divided by its maximum);
   optionally **blend** in a class-agnostic foreground map (e.g. of a localiser) with
   ``foreground_weight`` ``w``: the strength of the best class becomes
   ``(1 - w) * cam + w * foreground`` while the CAMs still decide between present classes
   (``w = 1``: the foreground map alone decides foreground); optionally **refine** the result along
   colour edges (``refine_iterations``, :mod:`pseudo_masks.refine`), each map keeping its peak;
3. **background score**: ``threshold`` (a constant), ``power`` (``(1 - max_k cam)^alpha``, as in TPRO),
   or ``tissue`` (only the tissue prior decides background);
4. **tissue prior** (optional with the first two, implied by ``tissue``): near-white pixels
   (grey level above ``white_level``, specks under ``min_speck`` pixels removed) are background;
5. **argmax** (or, with ``crf``, the marginals of a dense CRF over the normalised scores, an
   optional extra); pixels whose best-minus-second score is below ``ignore_margin`` become 255;
6. **clean-up** (optional): class regions under ``min_region`` become 255, background holes under
   ``max_hole`` inside a class region are filled with that class; both are areas, in pixels from 1
   up and as a fraction of the tile's area below 1 (:func:`area_pixels`), so a setting carries
   over to other tile sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from skimage.morphology import remove_small_holes, remove_small_objects
from torch import Tensor

from segmix.labels import BACKGROUND_INDEX, IGNORE_INDEX

from .refine import affinity_refine
from .tissue import tissue_background

__all__ = ["PseudoMaskConfig", "BACKGROUNDS", "IGNORE_INDEX", "area_pixels", "cams_to_masks",
           "class_maps", "threshold_scores", "tissue_background", "trivial_masks"]

BACKGROUNDS = ("threshold", "power", "tissue")


@dataclass(frozen=True)
class PseudoMaskConfig:
    background: str = "threshold"
    threshold: float = 0.3
    alpha: float = 1.0
    tissue_prior: bool = False
    white_level: int = 200
    min_speck: int = 64
    ignore_margin: float = 0.0
    min_region: float = 0  # pixels, or below 1 a fraction of the tile's area (area_pixels)
    max_hole: float = 0    # pixels, or below 1 a fraction of the tile's area (area_pixels)
    crf: bool = False
    crf_iterations: int = 5
    refine_iterations: int = 0  # affinity refinement of the class maps along colour edges; 0 = off
    foreground_weight: float = 0.0  # weight of a foreground map against the CAMs; 0 = CAMs only

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; valid: {', '.join(BACKGROUNDS)}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1] (maps are normalised), got {self.threshold}")
        if not 0 <= self.foreground_weight <= 1:
            raise ValueError(f"foreground_weight must be in [0, 1], got {self.foreground_weight}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if min(self.ignore_margin, self.min_region, self.max_hole, self.min_speck,
               self.refine_iterations) < 0:
            raise ValueError("ignore_margin, min_region, max_hole, min_speck and refine_iterations"
                             " must be >= 0")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PseudoMaskConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown pseudo-mask settings {unknown}; valid: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def area_pixels(area: float, height: int, width: int) -> int:
    """An area setting in pixels of a ``height x width`` tile: ``area`` from 1 up is a pixel count,
    below 1 a fraction of the tile (``0.02`` of a 224 px tile: 1,004 pixels)."""
    if area < 0:
        raise ValueError(f"an area must be >= 0, got {area}")
    return int(area) if area >= 1 else round(area * height * width)


def _clean(mask: np.ndarray, min_region: float, max_hole: float) -> np.ndarray:
    min_region, max_hole = (area_pixels(area, *mask.shape) for area in (min_region, max_hole))
    out = mask.copy()
    for value in np.unique(mask):
        if value in (BACKGROUND_INDEX, IGNORE_INDEX):
            continue
        region = mask == value
        if max_hole:
            filled = remove_small_holes(region, max_size=max_hole)
            out[filled & (mask == BACKGROUND_INDEX)] = value
            region = filled
        if min_region:
            kept = remove_small_objects(region, max_size=min_region)
            out[region & ~kept] = IGNORE_INDEX
    return out


def _crf_scores(scores: Tensor, images: Optional[Tensor], iterations: int) -> Tensor:
    """Dense-CRF marginals of the per-pixel score distribution (absent classes stay impossible)."""
    from .crf import crf_refine, require_crf

    require_crf()
    if images is None:
        raise ValueError("the dense CRF needs the images (uint8 RGB)")
    if images.shape[1] == 3:
        images = images.permute(0, 2, 3, 1)
    possible = torch.isfinite(scores)
    weights = torch.where(possible, scores.clamp_min(0) + 1e-3, torch.zeros_like(scores))
    probabilities = weights / weights.sum(dim=1, keepdim=True)
    refined = [crf_refine(image.cpu().numpy(), p.cpu().numpy(), iterations)
               for image, p in zip(images, probabilities)]
    marginals = torch.from_numpy(np.stack(refined)).to(scores.device)
    return torch.where(possible, marginals, torch.full_like(marginals, -torch.inf))


def _blend_foreground(normalised: Tensor, present: Tensor, foreground: Optional[Tensor],
                      weight: float) -> Tensor:
    """Class maps whose best value is ``(1 - weight) * best + weight * foreground``, in the same
    proportions between the present classes (equal where every present map is 0)."""
    if foreground is None:
        raise ValueError("foreground_weight > 0 needs a foreground map per image")
    if foreground.shape != (normalised.shape[0], *normalised.shape[-2:]):
        raise ValueError(f"foreground must be [B, H, W] = {(normalised.shape[0], *normalised.shape[-2:])},"
                         f" got {tuple(foreground.shape)}")
    best = normalised.amax(dim=1, keepdim=True)
    share = torch.where(best > 0, normalised / best.clamp_min(1e-6), present.float().expand_as(normalised))
    strength = (1 - weight) * best + weight * foreground[:, None].to(normalised)
    return share * strength * present


def class_maps(cams: Tensor, labels: Tensor, config: PseudoMaskConfig = PseudoMaskConfig(),
               images: Optional[Tensor] = None, foreground: Optional[Tensor] = None) -> Tensor:
    """The class maps ``[B, K, H, W]`` in [0, 1] that :func:`cams_to_masks` compares with the
    background: the present classes' CAMs normalised by their peak, blended with the foreground
    map and refined as ``config`` says (0 for absent classes). Their maximum over classes is the
    score a ``threshold`` background cuts."""
    if cams.dim() != 4:
        raise ValueError(f"cams must be [B, K, H, W], got {tuple(cams.shape)}")
    if labels.shape != cams.shape[:2]:
        raise ValueError(f"labels must be [B, K] = {tuple(cams.shape[:2])}, got {tuple(labels.shape)}")
    present = labels.bool()[:, :, None, None]
    positive = cams.float().clamp_min(0) * present
    peak = positive.amax(dim=(-2, -1), keepdim=True)
    normalised = positive / peak.clamp_min(1e-6)
    if config.foreground_weight:
        normalised = _blend_foreground(normalised, present, foreground, config.foreground_weight)
    if config.refine_iterations:
        normalised = _refine_keeping_peaks(normalised, present, images, config.refine_iterations)
    return normalised


def _refine_keeping_peaks(maps: Tensor, present: Tensor, images: Optional[Tensor],
                          iterations: int) -> Tensor:
    """``maps`` refined along the colour edges of ``images``, each class map scaled back to the
    peak it had before (refinement averages, so it would lower a peak the threshold is set for)."""
    if images is None:
        raise ValueError("affinity refinement needs the images (uint8 RGB)")
    used = present.flatten(1).any(dim=0)  # classes of no tile in the batch stay 0, unrefined
    refined = torch.zeros_like(maps)
    refined[:, used] = affinity_refine(images, maps[:, used], iterations)
    refined = refined * present
    before = maps.amax(dim=(-2, -1), keepdim=True)
    return refined * before / refined.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)


def threshold_scores(cams: Tensor, labels: Tensor, config: PseudoMaskConfig = PseudoMaskConfig(),
                     images: Optional[Tensor] = None,
                     foreground: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The score a ``threshold`` background cuts (:func:`class_maps`' maximum over classes,
    ``[B, H, W]``) and where that cut decides (bool ``[B, H, W]``: inside the tissue with the
    tissue prior, everywhere without)."""
    scores = class_maps(cams, labels, config, images, foreground).amax(dim=1)
    if not config.tissue_prior:
        return scores, torch.ones_like(scores, dtype=torch.bool)
    if images is None:
        raise ValueError("the tissue prior needs the images (uint8 RGB)")
    return scores, ~tissue_background(images, config.white_level, config.min_speck)


def cams_to_masks(cams: Tensor, labels: Tensor, config: PseudoMaskConfig = PseudoMaskConfig(),
                  images: Optional[Tensor] = None, foreground: Optional[Tensor] = None) -> Tensor:
    """Raw CAMs ``[B, K, H, W]`` and multi-hot labels ``[B, K]`` -> uint8 masks ``[B, H, W]``.

    ``images`` (uint8 RGB, same size) are needed for the tissue prior, the affinity refinement
    and the dense CRF; ``foreground`` (``[B, H, W]`` in [0, 1]) when ``foreground_weight`` > 0.
    """
    present = labels.bool()[:, :, None, None]
    normalised = class_maps(cams, labels, config, images, foreground)
    scores = torch.where(present, normalised, torch.full_like(normalised, -torch.inf))

    best_class = normalised.amax(dim=1, keepdim=True)
    if config.background == "threshold":
        background = torch.full_like(best_class, config.threshold)
    elif config.background == "power":
        background = (1 - best_class).clamp_min(0).pow(config.alpha)
    else:  # tissue: only the tissue prior makes background
        background = torch.full_like(best_class, -1.0)
    if config.tissue_prior or config.background == "tissue":
        if images is None:
            raise ValueError("the tissue prior needs the images (uint8 RGB)")
        white = tissue_background(images, config.white_level, config.min_speck)
        background = torch.where(white[:, None].to(background.device), torch.full_like(background, 2.0),
                                 background)
    scores = torch.cat([background, scores], dim=1)
    if config.crf:
        scores = _crf_scores(scores, images, config.crf_iterations)
    top = scores.topk(2, dim=1).values if scores.shape[1] > 1 else torch.cat(
        [scores, torch.full_like(scores, -torch.inf)], dim=1)
    masks = scores.argmax(dim=1).to(torch.uint8)
    if config.ignore_margin > 0:
        masks[(top[:, 0] - top[:, 1]) < config.ignore_margin] = IGNORE_INDEX
    if config.min_region or config.max_hole:
        cleaned = [_clean(m, config.min_region, config.max_hole) for m in masks.cpu().numpy()]
        masks = torch.from_numpy(np.stack(cleaned)).to(cams.device)
    return masks


def trivial_masks(labels: Tensor, height: int, width: int, images: Optional[Tensor] = None,
                  white_level: int = 200, min_speck: int = 64) -> Tensor:
    """References without learning, for single-label tiles: every pixel = the tile's class, or
    (with ``images``) the tissue prior only: near-white = background, the rest = the class."""
    if not bool((labels.sum(dim=1) == 1).all()):
        raise ValueError("trivial masks need exactly one class per tile")
    masks = (labels.argmax(dim=1) + 1).to(torch.uint8)[:, None, None].expand(-1, height, width).clone()
    if images is not None:
        masks[tissue_background(images, white_level, min_speck)] = BACKGROUND_INDEX
    return masks

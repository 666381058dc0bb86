"""Test-time augmentation for CAMs: flips, scales and **shuffle TTA**.

Shuffle TTA runs the classifier on batches shuffled with the shared patch-shuffle kernel and brings
each patch's maps back to its own image with the exact inverse (``segmix.shuffle.invert_params``).
Evidence then has to be found locally, patch by patch, instead of in the single most discriminative
spot, which widens the maps (SegMix's point: plain CAMs cover too small an area).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segmix.shuffle import PatchSize, apply_params, invert_params, sample_params

__all__ = ["ShuffleTTA", "cams_with_tta"]

CamFunction = Callable[[Tensor], Tensor]
FLIPS = {"horizontal": (-1,), "vertical": (-2,)}


@dataclass(frozen=True)
class ShuffleTTA:
    """``draws`` shuffled copies of the batch (``mode``, ``patch_size``, ``fix_ratio`` as in
    :func:`segmix.shuffle.sample_params`). With ``batch``/``group`` a batch of one image is not
    mixed at all: use ``random`` or ``self`` for single images."""

    patch_size: PatchSize = 32
    fix_ratio: float = 0.0
    draws: int = 4
    mode: str = "batch"
    group_size: Optional[int] = None


def _flipped(cam: CamFunction, images: Tensor, dims: Sequence[int]) -> Tensor:
    return cam(images.flip(dims)).flip(dims)


def _scaled(cam: CamFunction, images: Tensor, scale: float) -> Tensor:
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(cam(resized), size=(height, width), mode="bilinear", align_corners=False)


def cams_with_tta(cam: CamFunction, images: Tensor, *, flips: Sequence[str] = (),
                  scales: Sequence[float] = (1.0,), shuffle: Optional[ShuffleTTA] = None,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Mean of ``cam`` over the views: every scale (1.0 = the image itself), every flip of the
    original, and ``shuffle.draws`` shuffled copies. ``cam`` maps ``[B, C, H, W]`` images to
    ``[B, K, H, W]`` maps (a :class:`cam.BaseCAM`)."""
    unknown = [f for f in flips if f not in FLIPS]
    if unknown:
        raise ValueError(f"unknown flips {unknown}; valid: {', '.join(FLIPS)}")
    if not scales:
        raise ValueError("scales must not be empty (1.0 keeps the image as it is)")
    total: Optional[Tensor] = None
    views = 0

    def add(maps: Tensor) -> None:
        nonlocal total, views
        total = maps if total is None else total + maps
        views += 1

    for scale in scales:
        add(cam(images) if scale == 1.0 else _scaled(cam, images, float(scale)))
    for flip in flips:
        add(_flipped(cam, images, FLIPS[flip]))
    if shuffle is not None:
        batch, _, height, width = images.shape
        for _ in range(shuffle.draws):
            params = sample_params(batch, height, width, patch_size=shuffle.patch_size,
                                   fix_ratio=shuffle.fix_ratio, mode=shuffle.mode,
                                   group_size=shuffle.group_size, generator=generator,
                                   device=images.device)
            add(invert_params(cam(apply_params(images, params)), params))
    return total / views

"""What a removed region of a tile becomes, for every localiser that measures class evidence by
removing part of a tile, and the classifier's answer they measure it with.

The fills come in two kinds because they run in two places:

* on **batches of float tensors** (``[B, C, H, W]``, on the training device), while a mask head
  trains: :func:`blur_fill` (a separable Gaussian in torch, 3 sigma wide) and :func:`shuffle_fill`
  (every patch taken from another tile of the batch through the shuffle kernel);
* on **uint8 RGB tiles** (``H x W x 3`` NumPy arrays, as read from files), whose filled copies go to
  the classifier one by one: :func:`blurred` (scikit-image's Gaussian, 4 sigma wide, rounded back
  to uint8), :func:`median_fill` (the tile's median colour) and :func:`shuffle_fills` (the shuffle
  fill at the classifier's input size, resized back to each tile's size).

The two blurs differ in their kernel's reach and rounding; each localiser's saved files were fitted
with one, so both stay. Only torch, NumPy, scikit-image and the shuffle kernel.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import gaussian
from torch import Tensor

from segmix.shuffle import ShuffleParams, apply_params

__all__ = ["ClassProbability", "blur_fill", "blurred", "median_fill", "shuffle_fill",
           "shuffle_fills"]

# (uint8 RGB images, the tile's class indices) -> the classifier's mean probability of those
# classes per image, ``[N]``: how localisers measure the class evidence a region holds.
ClassProbability = Callable[[List[np.ndarray], Sequence[int]], np.ndarray]


def blur_fill(images: Tensor, sigma: float) -> Tensor:
    """A separable Gaussian blur of ``images [B, C, H, W]`` (reflected borders)."""
    radius = min(int(math.ceil(3 * sigma)), images.shape[-2] - 1, images.shape[-1] - 1)
    if sigma <= 0 or radius < 1:
        return images.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def shuffle_fill(images: Tensor, patch_size: int,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Every ``patch_size`` patch of each image replaced, through the shuffle kernel, by the patch at
    the same place of another image of the batch (never its own: each grid position shifts the
    batch by its own random offset in ``[1, B)``); needs a batch of at least 2."""
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if batch < 2:
        raise ValueError("the shuffle fill takes patches from other tiles: needs a batch of 2+")
    if height % patch_size or width % patch_size:
        raise ValueError(f"the shuffle fill's patch size {patch_size} must divide the image size"
                         f" {height}x{width}")
    positions = (height // patch_size) * (width // patch_size)
    offsets = torch.randint(1, batch, (positions,), generator=generator)
    source_image = (torch.arange(batch).view(-1, 1) + offsets.view(1, -1)) % batch
    source = source_image * positions + torch.arange(positions).view(1, -1)
    params = ShuffleParams(source.to(images.device), torch.zeros(positions, dtype=torch.bool,
                                                                 device=images.device),
                           height, width, (patch_size, patch_size), "batch")
    return apply_params(images, params)


def median_fill(rgb: np.ndarray) -> np.ndarray:
    """An image of the same size in the image's per-channel median colour: what is left of a
    region when its shape and texture are removed and no colour of the rest spreads into it."""
    return np.broadcast_to(np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8), rgb.shape)


def blurred(rgb: np.ndarray, sigma: float = 16.0) -> np.ndarray:
    """The image blurred channel by channel (colour kept, texture gone), uint8."""
    soft = gaussian(rgb, sigma=sigma, channel_axis=-1, preserve_range=True)
    return np.clip(np.rint(soft), 0, 255).astype(np.uint8)


def shuffle_fills(images: Sequence[np.ndarray], size: Tuple[int, int], patch_size: int,
                  generator: torch.Generator) -> List[np.ndarray]:
    """Each uint8 RGB tile's fill from the other tiles of ``images`` (2 or more): the tiles resized
    to ``size`` (the classifier's input), every ``patch_size`` patch taken from another tile at the
    same place (:func:`shuffle_fill`), resized back to each tile's size."""
    batch = torch.cat([F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                                     size=tuple(size), mode="bilinear", align_corners=False,
                                     antialias=True) for image in images])
    filled = shuffle_fill(batch, patch_size, generator)
    return [F.interpolate(fill[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
            .round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            for fill, image in zip(filled, images)]

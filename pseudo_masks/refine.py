"""Affinity refinement of score maps along colour edges, without parameters to learn.

After PAMR (Araslanov & Roth, CVPR 2020): every pixel's score becomes a weighted mean of its
neighbours' scores at several dilations, the weights a softmax over the neighbours of how close
their colour is to its own (colour distance divided by the local colour spread), repeated a few
times. Scores flow along regions of similar colour and stop at edges: a coarse map (a CAM at stride
16 or 32) is pulled onto the borders of cells and glands. It moves evidence, it cannot create it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["affinity_refine", "DILATIONS"]

DILATIONS = (1, 2, 4, 8, 12, 24)


def _neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, N, H, W]``: the 8 neighbours at every dilation (edges replicated)."""
    height, width = x.shape[-2:]
    stacks = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        stacks += [padded[:, :, d + dy:d + dy + height, d + dx:d + dx + width]
                   for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]
    return torch.stack(stacks, dim=2)


def affinity_refine(images: Tensor, maps: Tensor, iterations: int = 10,
                    dilations: Sequence[int] = DILATIONS, sharpness: float = 10.0) -> Tensor:
    """Refine ``maps [B, K, H, W]`` along the colour edges of ``images`` (uint8 or float RGB,
    ``[B, 3, H, W]`` or ``[B, H, W, 3]``, same size); ``iterations`` rounds of neighbour
    averaging. Each round is a convex combination, so values stay within the maps' range."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if images.dim() == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and maps {tuple(maps.shape)} must share"
                         " batch, height and width")
    if iterations == 0:
        return maps
    colour = images.to(maps.device, torch.float32)
    around = _neighbours(colour, dilations)                                   # [B, 3, N, H, W]
    spread = around.std(dim=2, keepdim=True)
    distance = (around - colour.unsqueeze(2)).abs() / (spread + 1e-6)
    weights = torch.softmax(-sharpness * distance.mean(dim=1), dim=1)        # [B, N, H, W]
    refined = maps.float()
    for _ in range(iterations):
        refined = (_neighbours(refined, dilations) * weights.unsqueeze(1)).sum(dim=2)
    return refined.to(maps.dtype)

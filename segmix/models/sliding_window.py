"""Sliding-window inference for images of any size, in memory bounded by one band of windows.

A segmentation model trained on fixed-size tiles predicts a larger image window by window; the
windows overlap, and their logits are blended with a weight that falls off towards each window's
border (``gaussian``, as nnU-Net does, or ``uniform``), so that seams disappear. Rows of windows are
processed top to bottom and every finished band of rows is turned into class indices (and, if asked,
probabilities) at once: the working memory is one band of ``window height x image width`` logits,
whatever the image height, and the image is normalised one window at a time.

Needs torch and numpy only, so it can be imported into any inference loop::

    mask, probabilities = sliding_window_predict(model, rgb, window=224, mean=..., std=...)
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..shuffle import size_pair

__all__ = ["FLIPS", "BLENDS", "window_starts", "blend_weights", "sliding_window_predict"]

FLIPS = ("horizontal", "vertical")
BLENDS = ("gaussian", "uniform")
Size = Union[int, Sequence[int]]


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Start offsets of windows covering ``0..length``: every ``stride``, the last one flush with
    the end (``[0]`` when the window covers everything)."""
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def blend_weights(height: int, width: int, blend: str = "gaussian") -> torch.Tensor:
    """``[height, width]`` weights of one window's logits: a Gaussian with sigma = 1/8 of the window
    (never below 1e-3 of its peak, so corners still count) or all ones."""
    if blend == "uniform":
        return torch.ones(height, width)
    if blend != "gaussian":
        raise ValueError(f"unknown blend {blend!r}; valid: {', '.join(BLENDS)}")

    def bump(n: int) -> torch.Tensor:
        position = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (position / (n / 8)) ** 2)

    weights = bump(height)[:, None] * bump(width)[None, :]
    return (weights / weights.max()).clamp_min(1e-3).float()


def _flip_dims(flips: Sequence[str]) -> List[Tuple[int, ...]]:
    unknown = [f for f in flips if f not in FLIPS]
    if unknown:
        raise ValueError(f"unknown flips {unknown}; valid: {', '.join(FLIPS)}")
    dims = {"horizontal": (-1,), "vertical": (-2,)}
    return [()] + [dims[f] for f in flips]


def _model_logits(model: nn.Module, batch: torch.Tensor, flip_dims: List[Tuple[int, ...]]) -> torch.Tensor:
    """The model's logits for ``batch``, averaged over the flips (each flipped back)."""
    total = None
    for dims in flip_dims:
        logits = model(batch.flip(dims) if dims else batch)
        if logits.shape[-2:] != batch.shape[-2:]:
            raise ValueError(f"the model returned maps of size {tuple(logits.shape[-2:])} for an"
                             f" input of {tuple(batch.shape[-2:])}; sliding-window prediction needs"
                             " full-resolution logits")
        logits = logits.float().flip(dims) if dims else logits.float()
        total = logits if total is None else total.add_(logits)
    return total.div_(len(flip_dims))


@torch.no_grad()
def sliding_window_predict(
    model: nn.Module,
    image: np.ndarray,
    *,
    window: Size,
    mean: Sequence[float],
    std: Sequence[float],
    overlap: float = 0.25,
    blend: str = "gaussian",
    flips: Sequence[str] = (),
    batch_size: int = 8,
    probabilities: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    on_row: Optional[Callable[[int, int], None]] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Class indices ``[H, W]`` (uint8) of an ``H x W x 3`` uint8 RGB image, and its softmax
    probabilities ``[C, H, W]`` (float16) when ``probabilities`` is true.

    ``window`` is the model's input size (an image smaller than it is padded by reflection);
    neighbouring windows share ``overlap`` of their size. ``flips`` adds flipped copies of every
    window (test-time augmentation). ``model`` must be in eval mode and map ``[N, 3, h, w]`` to
    ``[N, C, h, w]`` logits; it runs on ``device`` (default: where its parameters are).
    ``on_row(done, total)`` is called after each row of windows (e.g. to drive a progress bar).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    window_h, window_w = size_pair(window, "window")
    flip_dims = _flip_dims(flips)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)
    height, width = image.shape[:2]
    crop_h, crop_w = min(window_h, height), min(window_w, width)
    stride_h = max(1, math.floor(window_h * (1 - overlap)))
    stride_w = max(1, math.floor(window_w * (1 - overlap)))
    rows, columns = window_starts(height, window_h, stride_h), window_starts(width, window_w, stride_w)
    weights = blend_weights(window_h, window_w, blend).to(device)[:crop_h, :crop_w]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255

    mask = np.empty((height, width), np.uint8)
    probs: Optional[np.ndarray] = None
    # Logit and weight sums of rows [top, top + crop_h); two buffers swap as the band slides down.
    band = spare = None
    band_weight, spare_weight = (torch.zeros(crop_h, width, device=device) for _ in range(2))
    for row_index, top in enumerate(rows):
        for first in range(0, len(columns), batch_size):
            lefts = columns[first:first + batch_size]
            crops = np.stack([image[top:top + crop_h, left:left + crop_w] for left in lefts])
            batch = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()
            batch = (batch - mean_t) / std_t
            if (crop_h, crop_w) != (window_h, window_w):
                mode = "reflect" if window_h < 2 * crop_h and window_w < 2 * crop_w else "replicate"
                batch = F.pad(batch, (0, window_w - crop_w, 0, window_h - crop_h), mode=mode)
            logits = _model_logits(model, batch, flip_dims)[:, :, :crop_h, :crop_w]
            if band is None:
                if logits.shape[1] > 256:
                    raise ValueError(f"the model predicts {logits.shape[1]} classes; masks hold 256")
                band, spare = (torch.zeros(logits.shape[1], crop_h, width, device=device)
                               for _ in range(2))
            for left, window_logits in zip(lefts, logits):
                band[:, :, left:left + crop_w].addcmul_(window_logits, weights)
                band_weight[:, left:left + crop_w] += weights
        # Rows above the next window row get no more windows: finish them and slide the band down.
        bottom = rows[row_index + 1] if row_index + 1 < len(rows) else height
        done = bottom - top
        finished = band[:, :done].div_(band_weight[:done])
        mask[top:bottom] = finished.argmax(dim=0).to(torch.uint8).cpu().numpy()
        if probabilities:
            if probs is None:
                probs = np.empty((band.shape[0], height, width), np.float16)
            probs[:, top:bottom] = torch.softmax(finished, dim=0).half().cpu().numpy()
        spare[:, :crop_h - done] = band[:, done:]
        spare[:, crop_h - done:] = 0
        spare_weight[:crop_h - done] = band_weight[done:]
        spare_weight[crop_h - done:] = 0
        band, spare, band_weight, spare_weight = spare, band, spare_weight, band_weight
        if on_row is not None:
            on_row(row_index + 1, len(rows))
    return mask, probs

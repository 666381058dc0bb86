"""The targets of a shuffled batch: each image's area taken from each source image, and the labels
mixed by it (:func:`mix_labels`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .params import ShuffleParams, _check_label_mode

__all__ = ["patch_counts", "area_weights", "mix_labels"]


def _labels_as_matrix(labels: Tensor, batch_size: int, num_classes: int) -> Tensor:
    """Class indices ``[B]`` or multi-hot/soft ``[B, K]`` as a float ``[B, K]`` matrix."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(
                f"class-index labels of shape [B] must be integers, got dtype {labels.dtype}"
            )
        if labels.shape[0] != batch_size:
            raise ValueError(f"labels have {labels.shape[0]} entries for a batch of {batch_size}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"class indices must be in [0, {num_classes}), got values in"
                f" [{int(labels.min())}, {int(labels.max())}]"
            )
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if labels.dim() == 2:
        if tuple(labels.shape) != (batch_size, num_classes):
            raise ValueError(
                f"multi-hot labels must have shape [B, K] = [{batch_size}, {num_classes}],"
                f" got {tuple(labels.shape)}"
            )
        return labels if labels.dtype.is_floating_point else labels.float()
    raise ValueError(
        f"labels must be class indices [B] or multi-hot [B, K], got shape {tuple(labels.shape)}"
    )


def patch_counts(params: ShuffleParams) -> Tensor:
    """``[B, B]`` float matrix: entry ``(b, s)`` counts the patches image ``b`` takes from ``s``."""
    batch, n = params.batch_size, params.num_patches
    counts = torch.zeros(batch, batch, device=params.device)
    return counts.scatter_add_(1, params.source_image, torch.ones(batch, n, device=params.device))


def area_weights(params: ShuffleParams) -> Tensor:
    """``[B, B]`` matrix: entry ``(b, s)`` is the fraction of image ``b``'s area taken from ``s``."""
    return patch_counts(params) / params.num_patches


def mix_labels(
    labels: Tensor, params: ShuffleParams, num_classes: int, *, mode: str = "area"
) -> Tensor:
    """Targets of the shuffled batch, as a float ``[B, K]`` tensor on the labels' device.

    * class indices ``[B]``: ``area`` gives the fraction of each image's area per class (sums to 1);
    * multi-hot or soft ``[B, K]``: ``area`` gives the area-weighted multi-hot, ``presence`` gives 1
      where any source image that contributes a patch has the class.
    """
    _check_label_mode(mode)
    matrix = _labels_as_matrix(labels, params.batch_size, num_classes)
    # Sum whole patch counts first and divide once: exact for multi-hot labels, so an area target
    # never exceeds 1 through rounding (N shares of 1/N can add up to 1 + eps).
    counted = patch_counts(params.to(matrix.device)).to(matrix.dtype) @ matrix
    if mode == "presence":
        return (counted > 0).to(matrix.dtype)
    return counted / params.num_patches


""":class:`PatchShuffle`: images, labels and masks of a training batch shuffled in one call."""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .apply import apply_params
from .labels import _labels_as_matrix, mix_labels
from .params import (
    PatchSize,
    ShuffleParams,
    _check_label_mode,
    _check_mode,
    _check_ratio,
    fresh_generator,
    normalize_patch_size,
    sample_params,
)

__all__ = ["ShuffleResult", "PatchShuffle"]


class ShuffleResult(NamedTuple):
    """What :class:`PatchShuffle` returns; unpacks as ``images, labels, masks, params``."""

    images: Tensor
    labels: Tensor
    masks: Optional[Tensor]
    params: Optional[ShuffleParams]


class PatchShuffle:
    """Shuffle images, labels and (optionally) masks of a batch in one call.

    ``patch_size`` and ``fix_ratio`` may be changed between epochs (e.g. by a
    :class:`segmix.curriculum.ShuffleCurriculum`); ``enabled = False`` switches the op off.
    Labels always come back as a float ``[B, K]`` target matrix, shuffled or not, so the loss sees
    one format. ``p`` is the probability that a given batch is shuffled at all.

    Example::

        op = PatchShuffle(patch_size=32, fix_ratio=0.5, mode="batch", num_classes=4)
        images, targets, masks, params = op(images, labels, masks)
    """

    def __init__(
        self,
        patch_size: PatchSize,
        fix_ratio: float,
        mode: str,
        num_classes: int,
        p: float = 1.0,
        group_size: Optional[int] = None,
        label_mode: str = "area",
    ) -> None:
        self.patch_size = patch_size
        self.fix_ratio = fix_ratio
        self.mode = _check_mode(mode)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.p = p
        self.group_size = group_size
        self.label_mode = _check_label_mode(label_mode)
        self.enabled = True

    @property
    def patch_size(self) -> Tuple[int, int]:
        return self._patch_size

    @patch_size.setter
    def patch_size(self, value: PatchSize) -> None:
        self._patch_size = normalize_patch_size(value)

    @property
    def fix_ratio(self) -> float:
        return self._fix_ratio

    @fix_ratio.setter
    def fix_ratio(self, value: float) -> None:
        self._fix_ratio = _check_ratio(value)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {value!r}")
        self._p = float(value)

    def __repr__(self) -> str:
        return (
            f"PatchShuffle(patch_size={self.patch_size}, fix_ratio={self.fix_ratio},"
            f" mode={self.mode!r}, num_classes={self.num_classes}, p={self.p},"
            f" group_size={self.group_size}, label_mode={self.label_mode!r},"
            f" enabled={self.enabled})"
        )

    def __call__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> ShuffleResult:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
        batch, _, height, width = images.shape
        targets = _labels_as_matrix(labels, batch, self.num_classes)
        if masks is not None:
            if not isinstance(masks, Tensor) or masks.dim() not in (3, 4):
                raise ValueError("masks must be a [B, H, W] or [B, C, H, W] tensor")
            if (masks.shape[0], masks.shape[-2], masks.shape[-1]) != (batch, height, width):
                raise ValueError(
                    f"masks have batch/height/width {(masks.shape[0], *masks.shape[-2:])}, images"
                    f" have {(batch, height, width)}"
                )
        if generator is None:
            generator = fresh_generator()
        skip = not self.enabled or (
            self.p < 1.0
            and torch.rand((), generator=generator, device=generator.device).item() >= self.p
        )
        if skip:
            return ShuffleResult(images, targets, masks, None)
        params = sample_params(
            batch, height, width, patch_size=self.patch_size, fix_ratio=self.fix_ratio,
            mode=self.mode, group_size=self.group_size, generator=generator,
            device=images.device,
        )
        mixed = mix_labels(targets, params, self.num_classes, mode=self.label_mode)
        shuffled_masks = apply_params(masks, params) if masks is not None else None
        return ShuffleResult(apply_params(images, params), mixed, shuffled_masks, params)

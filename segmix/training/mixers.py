"""Batch-level augmentations behind one interface: ``segmix`` (patch shuffle + feedback curriculum),
``none``, ``cutmix`` and ``mixup``, so a baseline and the method run from the same config.

Each works on float targets ``[B, K]`` (soft or multi-hot) and returns the params it drew, so a
training loop can log or replay the mix it applied. CutMix and MixUp are small own versions
rather than torchvision's or timm's (which now take soft multi-label targets too) because they
must move a segmentation mask with the image (CutMix) and draw from the caller's seeded
``torch.Generator`` (exact resume), which neither offers.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..curriculum import ShuffleCurriculum
from ..shuffle import PatchShuffle, ShuffleParams, fresh_generator

__all__ = ["BatchMixer", "NoMixing", "ShuffleMixing", "CutMix", "MixUp", "Mixed", "PairParams",
           "MIXERS"]

MIXERS = ("segmix", "none", "cutmix", "mixup")


class PairParams(NamedTuple):
    """What CutMix / MixUp drew: image ``i`` was mixed with ``permutation[i]`` at strength ``lam``
    (CutMix: the pasted box ``(top, bottom, left, right)``)."""

    permutation: Tensor
    lam: float
    box: Optional[Tuple[int, int, int, int]] = None


class Mixed(NamedTuple):
    """A mixed batch; ``params`` is what was drawn (``None``: the batch was left as it is)."""

    images: Tensor
    targets: Tensor
    masks: Optional[Tensor]
    params: Union[ShuffleParams, PairParams, None]


class BatchMixer:
    """Interface: ``images, targets, masks, params = mixer(images, targets, masks, generator)`` per
    batch, ``start_epoch``/``end_epoch`` around each epoch, state for checkpoints."""

    name = "none"

    def __call__(self, images: Tensor, targets: Tensor, masks: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Mixed:
        return Mixed(images, targets, masks, None)

    def start_epoch(self, epoch: int) -> Dict[str, Any]:
        """Prepare the epoch; returns the settings in force (logged with the epoch's metrics)."""
        return {}

    def end_epoch(self, epoch: int, loss: float) -> None:
        """Feed back the epoch's mean training loss."""

    @property
    def history(self) -> List[Dict[str, Any]]:
        return []

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class NoMixing(BatchMixer):
    name = "none"


class ShuffleMixing(BatchMixer):
    """The patch shuffle with the (patch size, fix ratio) the curriculum sets for the epoch.

    ``shuffle`` holds the op's other settings (``mode``, ``num_classes``, ``p``, ``group_size``,
    ``label_mode``: the arguments of :class:`segmix.shuffle.PatchShuffle`). From epoch
    ``cooldown_from`` on (the last ``cooldown_epochs`` of a run) nothing is shuffled and the
    curriculum is not stepped: the model ends on the unshuffled images it will be used on.
    """

    name = "segmix"

    def __init__(self, curriculum: ShuffleCurriculum, cooldown_from: Optional[int] = None,
                 **shuffle: Any) -> None:
        self.curriculum, self.cooldown_from = curriculum, cooldown_from
        self.shuffle = shuffle
        self.op()  # checks the settings now, not at the first batch
        self.active = True

    def op(self) -> PatchShuffle:
        """The shuffle op at the curriculum's current setting."""
        setting = self.curriculum.setting
        return PatchShuffle(setting.patch_size, setting.fix_ratio, **self.shuffle)

    def __call__(self, images, targets, masks=None, generator=None) -> Mixed:
        if not self.active:
            return Mixed(images, targets, masks, None)
        return Mixed(*self.op()(images, targets, masks, generator=generator))

    def start_epoch(self, epoch: int) -> Dict[str, Any]:
        self.active = self.cooldown_from is None or epoch < self.cooldown_from
        setting = self.curriculum.setting
        patch = setting.patch_size
        return {"shuffle_on": self.active, "shuffle_level": setting.level,
                "shuffle_fix_ratio": setting.fix_ratio,
                "shuffle_patch_size": patch if isinstance(patch, int) else f"{patch[0]}x{patch[1]}"}

    def end_epoch(self, epoch: int, loss: float) -> None:
        if self.active:
            self.curriculum.step(epoch, loss)

    @property
    def history(self) -> List[Dict[str, Any]]:
        return self.curriculum.history

    def state_dict(self) -> Dict[str, Any]:
        return {"curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curriculum.load_state_dict(state["curriculum"])


def _beta(alpha: float, generator: torch.Generator) -> float:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


class _PairMixer(BatchMixer):
    """Mixes each image with another of the batch (a random permutation), with probability ``p``."""

    def __init__(self, alpha: float = 1.0, p: float = 1.0) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.alpha, self.p = float(alpha), float(p)

    def __call__(self, images, targets, masks=None, generator=None) -> Mixed:
        generator = generator if generator is not None else fresh_generator()
        if float(torch.rand((), generator=generator, device=generator.device)) >= self.p:
            return Mixed(images, targets, masks, None)
        permutation = torch.randperm(images.shape[0], generator=generator, device=generator.device)
        lam = _beta(self.alpha, generator)
        return self._mix(images, targets, masks, permutation.to(images.device), lam, generator)

    def _mix(self, images: Tensor, targets: Tensor, masks: Optional[Tensor], permutation: Tensor,
             lam: float, generator: torch.Generator) -> Mixed:
        """Mix each image with ``images[permutation]`` at strength ``lam`` ~ Beta(alpha, alpha)."""
        raise NotImplementedError


class CutMix(_PairMixer):
    """Paste a box of another image (and its mask); targets weighted by the box's area."""

    name = "cutmix"

    def _mix(self, images, targets, masks, permutation, lam, generator) -> Mixed:
        height, width = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        box_h, box_w = int(height * cut), int(width * cut)
        cy = int(torch.randint(0, height, (1,), generator=generator, device=generator.device))
        cx = int(torch.randint(0, width, (1,), generator=generator, device=generator.device))
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = images[permutation][..., top:bottom, left:right]
        if masks is not None:
            masks = masks.clone()
            masks[..., top:bottom, left:right] = masks[permutation][..., top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / (height * width)
        return Mixed(images, kept * targets + (1.0 - kept) * targets[permutation], masks,
                     PairParams(permutation, lam, (top, bottom, left, right)))


class MixUp(_PairMixer):
    """Blend each image with another; targets blended alike. Not defined for hard masks."""

    name = "mixup"

    def __call__(self, images, targets, masks=None, generator=None) -> Mixed:
        if masks is not None:
            raise ValueError("mixup blends pixels, which has no meaning for hard masks; use"
                             " segmix or cutmix for segmentation")
        return super().__call__(images, targets, None, generator)

    def _mix(self, images, targets, masks, permutation, lam, generator) -> Mixed:
        return Mixed(lam * images + (1 - lam) * images[permutation],
                     lam * targets + (1 - lam) * targets[permutation], None,
                     PairParams(permutation, lam))

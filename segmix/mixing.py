"""Batch-level augmentations behind one interface: ``segmix`` (patch shuffle + feedback curriculum),
``none``, ``cutmix`` and ``mixup``, so a baseline and the method run from the same config.

Each works on float targets ``[B, K]`` (soft or multi-hot), so multi-label datasets mix correctly;
torchvision's and timm's CutMix/MixUp take class indices only, hence these small versions.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .curriculum import ShuffleCurriculum
from .shuffle import PatchShuffle

__all__ = ["BatchMixer", "NoMixing", "ShuffleMixing", "CutMix", "MixUp", "build_mixer", "MIXERS"]

MIXERS = ("segmix", "none", "cutmix", "mixup")
Batch = Tuple[Tensor, Tensor, Optional[Tensor]]


class BatchMixer:
    """Interface: ``images, targets, masks = mixer(images, targets, masks, generator)`` per batch,
    ``start_epoch``/``end_epoch`` around each epoch, state for checkpoints."""

    name = "none"

    def __call__(self, images: Tensor, targets: Tensor, masks: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Batch:
        return images, targets, masks

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
    """The patch shuffle, its (patch size, fix ratio) set by the curriculum each epoch.

    From epoch ``cooldown_from`` on (the last ``cooldown_epochs`` of a run) nothing is shuffled and
    the curriculum is not stepped: the model ends on the unshuffled images it will be used on.
    """

    name = "segmix"

    def __init__(self, op: PatchShuffle, curriculum: ShuffleCurriculum,
                 cooldown_from: Optional[int] = None) -> None:
        self.op, self.curriculum, self.cooldown_from = op, curriculum, cooldown_from
        self.active = True

    def __call__(self, images, targets, masks=None, generator=None) -> Batch:
        if not self.active:
            return images, targets, masks
        result = self.op(images, targets, masks, generator=generator)
        return result.images, result.labels, result.masks

    def start_epoch(self, epoch: int) -> Dict[str, Any]:
        self.active = self.cooldown_from is None or epoch < self.cooldown_from
        setting = self.curriculum.setting
        self.op.patch_size, self.op.fix_ratio = setting.patch_size, setting.fix_ratio
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


def _fresh(generator: Optional[torch.Generator]) -> torch.Generator:
    if generator is not None:
        return generator
    generator = torch.Generator()
    generator.seed()
    return generator


class _PairMixer(BatchMixer):
    """Mixes each image with another of the batch (a random permutation), with probability ``p``."""

    def __init__(self, alpha: float = 1.0, p: float = 1.0) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.alpha, self.p = float(alpha), float(p)

    def __call__(self, images, targets, masks=None, generator=None) -> Batch:
        generator = _fresh(generator)
        if float(torch.rand((), generator=generator, device=generator.device)) >= self.p:
            return images, targets, masks
        permutation = torch.randperm(images.shape[0], generator=generator, device=generator.device)
        lam = _beta(self.alpha, generator)
        return self._mix(images, targets, masks, permutation.to(images.device), lam, generator)

    def _mix(self, images: Tensor, targets: Tensor, masks: Optional[Tensor], permutation: Tensor,
             lam: float, generator: torch.Generator) -> Batch:
        """Mix each image with ``images[permutation]`` at strength ``lam`` ~ Beta(alpha, alpha)."""
        raise NotImplementedError


class CutMix(_PairMixer):
    """Paste a box of another image (and its mask); targets weighted by the box's area."""

    name = "cutmix"

    def _mix(self, images, targets, masks, permutation, lam, generator) -> Batch:
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
        return images, kept * targets + (1.0 - kept) * targets[permutation], masks


class MixUp(_PairMixer):
    """Blend each image with another; targets blended alike. Not defined for hard masks."""

    name = "mixup"

    def __call__(self, images, targets, masks=None, generator=None) -> Batch:
        if masks is not None:
            raise ValueError("mixup blends pixels, which has no meaning for hard masks; use"
                             " segmix or cutmix for segmentation")
        return super().__call__(images, targets, None, generator)

    def _mix(self, images, targets, masks, permutation, lam, generator) -> Batch:
        return (lam * images + (1 - lam) * images[permutation],
                lam * targets + (1 - lam) * targets[permutation], None)


def build_mixer(config: Mapping[str, Any], num_classes: int, image_size: Tuple[int, int],
                total_epochs: int) -> BatchMixer:
    """The mixer an ``augment`` config section describes (see configs/ for the keys)."""
    name = config.get("name", "none")
    if name == "none":
        return NoMixing()
    if name == "cutmix":
        return CutMix(config.get("alpha", 1.0), config.get("p", 1.0))
    if name == "mixup":
        return MixUp(config.get("alpha", 1.0), config.get("p", 1.0))
    if name != "segmix":
        raise ValueError(f"unknown augment.name {name!r}; valid: {', '.join(MIXERS)}")
    schedule = dict(config.get("curriculum") or {})
    curriculum = ShuffleCurriculum(
        image_size, schedule.get("strategy", "loss_hold"), total_epochs=total_epochs,
        warmup_epochs=schedule.get("warmup_epochs", 0),
        patch_sizes=schedule.get("patch_sizes"), fix_ratios=schedule.get("fix_ratios"),
        base=schedule.get("base", 16), loss_threshold=schedule.get("loss_threshold"),
        threshold_decay=schedule.get("threshold_decay", 0.933),
        start_level=schedule.get("start_level", 0),
    )
    first = curriculum.setting
    op = PatchShuffle(first.patch_size, first.fix_ratio, config.get("mode", "batch"), num_classes,
                      p=config.get("p", 1.0), group_size=config.get("group_size"),
                      label_mode=config.get("label_mode", "area"))
    cooldown = int(config.get("cooldown_epochs", 0))
    if not 0 <= cooldown < total_epochs:
        raise ValueError(f"cooldown_epochs must be in [0, epochs), got {cooldown} for"
                         f" {total_epochs} epochs")
    return ShuffleMixing(op, curriculum, total_epochs - cooldown if cooldown else None)

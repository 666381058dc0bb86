"""CAM methods: each defines only how one layer's activations (and class gradients) combine.

* :class:`CAM`: the linear head's weights on the final feature map (Zhou et al. 2016); no gradients.
* :class:`GradCAM`: channel weights = spatial mean of the gradients (Selvaraju et al. 2017).
* :class:`GradCAMPlusPlus`: weights from positive gradients with the second/third-order alpha
  coefficients (Chattopadhyay et al. 2018).
* :class:`LayerCAM`: positive gradients weight each activation element (Jiang et al. 2021).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Type

import torch
from torch import Tensor, nn

from .base import BaseCAM

__all__ = ["CAM", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "METHODS", "create_cam"]


class CAM(BaseCAM):
    """Class activation maps from the linear classifier head: ``sum_c W[k, c] * A[c]`` (raw,
    signed). Needs the final feature map (no target layers) and a linear ``get_classifier()``."""

    needs_gradients = False

    def __init__(self, model: nn.Module, target_layers: Optional[Sequence[str]] = None,
                 **kwargs) -> None:
        if target_layers:
            raise ValueError("CAM uses the classifier head on the final feature map; it takes no"
                             " target_layers (use gradcam, gradcam++ or layercam for other layers)")
        super().__init__(model, None, **kwargs)
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        if not isinstance(head, nn.Linear):
            raise ValueError(f"CAM needs a linear classifier head, {type(model).__name__} has"
                             f" {type(head).__name__}")
        self.head = head

    def combine(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        return torch.einsum("kc,bchw->bkhw", self.head.weight.detach(), activations)


class GradCAM(BaseCAM):
    def combine(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        weights = gradients.mean(dim=(-2, -1))  # [B, K, C]
        return torch.einsum("bkc,bchw->bkhw", weights, activations).clamp_min(0)


class GradCAMPlusPlus(BaseCAM):
    def combine(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        squared = gradients.pow(2)
        total = activations.sum(dim=(-2, -1))[:, None, :, None, None]  # [B, 1, C, 1, 1]
        alpha = squared / (2 * squared + total * squared * gradients + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * gradients.clamp_min(0)).sum(dim=(-2, -1))  # [B, K, C]
        return torch.einsum("bkc,bchw->bkhw", weights, activations).clamp_min(0)


class LayerCAM(BaseCAM):
    def combine(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        return (gradients.clamp_min(0) * activations.unsqueeze(1)).sum(dim=2).clamp_min(0)


METHODS: Dict[str, Type[BaseCAM]] = {
    "cam": CAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM,
}


def create_cam(method: str, model: nn.Module, target_layers: Optional[Sequence[str]] = None,
               **kwargs) -> BaseCAM:
    """A CAM method by name (``cam``, ``gradcam``, ``gradcam++``, ``layercam``)."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(METHODS)}")
    return METHODS[method](model, target_layers, **kwargs)

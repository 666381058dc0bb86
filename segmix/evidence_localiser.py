"""The evidence-removal localiser over tile files: train the mask head of
:mod:`pseudo_masks.evidence` on labelled tiles, and map any tile with it (``segmix localise``,
``localiser.method: evidence``)."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pseudo_masks import tissue_background
from pseudo_masks.evidence import EvidenceMask, blur_fill, evidence_loss, shuffle_fill

from .data import Sample, model_transform, read_rgb
from .models.factory import uses_softmax

__all__ = ["COLLAPSED_AREA", "EvidenceLocaliser", "train_evidence", "warn_if_collapsed"]

COLLAPSED_AREA = 0.02  # an evidence mask on less than this share of the tissue, or more, carries no place


class EvidenceLocaliser:
    """The trained mask head with the classifier's input transform: ``maps(samples)`` gives each
    tile's foreground map at its own size, gated by the tissue prior."""

    def __init__(self, head: EvidenceMask, info: Dict[str, Any], device: torch.device) -> None:
        self.head, self.device = head.eval(), device
        self.transform = model_transform(info)

    def tensors(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB tiles resized and normalised as the classifier was trained, stacked."""
        return torch.stack([self.transform(image=image)["image"] for image in images])

    @torch.no_grad()
    def maps(self, samples: List[Sample]) -> List[np.ndarray]:
        """Each sample's foreground map in [0, 1] at its tile's size, gated by the tissue prior."""
        images = [read_rgb(sample.image) for sample in samples]
        masks = self.head(self.tensors(images).to(self.device)).float().cpu()
        out = []
        for image, mask in zip(images, masks):
            size = image.shape[:2]
            mask = F.interpolate(mask[None], size=size, mode="bilinear", align_corners=False)[0, 0]
            tissue = ~tissue_background(torch.from_numpy(image)[None])[0]
            out.append((mask * tissue).numpy())
        return out


def warn_if_collapsed(area: float, area_weight: float) -> None:
    """Warn when the trained mask covers (almost) none or all of the tissue: such maps carry no
    place (docs/benchmarks.md, "Evidence-removal localiser")."""
    if area < COLLAPSED_AREA:
        warnings.warn(
            f"localise: the evidence mask collapsed to nothing ({100 * area:.1f}% of the tissue):"
            f" either localiser.area_weight ({area_weight:g}) prices area above the class"
            " evidence, or the classifier's evidence cannot be localised (an undertrained or weak"
            f" classifier). Try localiser.area_weight={area_weight / 3:.3g} or a converged"
            " classifier.", stacklevel=2)
    elif area > 1 - COLLAPSED_AREA:
        warnings.warn(
            f"localise: the evidence mask covers all the tissue ({100 * area:.1f}%):"
            f" localiser.area_weight ({area_weight:g}) is too low to make it choose; try"
            f" localiser.area_weight={3 * area_weight:.3g}.", stacklevel=2)


def train_evidence(localiser: EvidenceLocaliser, samples: List[Sample], settings: Dict[str, Any],
                   info: Dict[str, Any], num_classes: int) -> List[Dict[str, float]]:
    """Train ``localiser``'s head on ``samples`` with the ``localiser`` settings of a config
    (``fill``, ``blur_sigma``, ``patch_size``, ``epochs``, ``lr``, ``area_weight``, ``batch_size``,
    ``seed``; ``fill`` resolved) for the classifier described by ``info``; returns the mean losses
    of every epoch."""
    head, device = localiser.head, localiser.device
    images = localiser.tensors([read_rgb(s.image) for s in tqdm(samples, desc="evidence tiles",
                                                                  unit="tile")])
    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    rgb = ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    tissue = (~tissue_background(rgb))[:, None].float()
    targets = torch.zeros(len(samples), num_classes)
    for row, sample in enumerate(samples):
        targets[row, list(sample.labels)] = 1
    prior = targets.mean(dim=0)
    fill, batch_size = settings["fill"], int(settings["batch_size"])
    generator = torch.Generator().manual_seed(int(settings["seed"]))
    head.train()
    optimizer = torch.optim.Adam(head.parameters(), lr=float(settings["lr"]))
    softmax, history = uses_softmax(info), []
    epochs = int(settings["epochs"])

    def area_weight(epoch: int) -> float:
        """Ramped up over the first half of the epochs: the mask first learns to keep the
        evidence, then to leave what it does not need (a full-strength price from the first step
        can empty it before it has found anything)."""
        return float(settings["area_weight"]) * min(1.0, (epoch + 1) / max(1, epochs // 2))

    for epoch in range(epochs):
        order = torch.randperm(len(samples), generator=generator)
        sums: Dict[str, float] = {"keep": 0.0, "remove": 0.0, "area": 0.0}
        seen = 0
        bar = tqdm(range(0, len(samples), batch_size), unit="batch",
                   desc=f"evidence epoch {epoch + 1}/{epochs}")
        for start in bar:
            index = order[start:start + batch_size]
            if fill == "shuffle" and len(index) < 2:
                continue
            x = images[index].to(device)
            filled = (shuffle_fill(x, int(settings["patch_size"]), generator) if fill == "shuffle"
                      else blur_fill(x, float(settings["blur_sigma"])))
            loss, parts = evidence_loss(head, x, targets[index].to(device),
                                        tissue[index].to(device), filled, prior=prior,
                                        softmax=softmax, area_weight=area_weight(epoch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in parts.items():
                sums[key] += value * len(index)
            seen += len(index)
            bar.set_postfix({key: f"{value:.3f}" for key, value in parts.items()})
        row = {"epoch": epoch, **{key: value / max(seen, 1) for key, value in sums.items()}}
        history.append(row)
        print(f"evidence epoch {epoch + 1}: keep {row['keep']:.4f}, remove {row['remove']:.4f},"
              f" area {row['area']:.3f}", flush=True)
    return history

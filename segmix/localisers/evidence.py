"""The evidence-removal localiser over tile files (``localiser.method: evidence``): the mask head of
:mod:`pseudo_masks.evidence` trained against the frozen classifier on labelled tiles, and a
foreground map for any tile."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pseudo_masks.evidence import EVIDENCE_FILLS, EvidenceMask, evidence_loss
from pseudo_masks.fill import blur_fill, shuffle_fill
from pseudo_masks.tissue import tissue_background

from ..artifacts import EVIDENCE_FILE
from ..data import Sample, model_transform, read_rgb
from ..io import write_csv
from ..models.factory import uses_softmax
from .base import (
    Localiser,
    LocaliserSettings,
    check_shuffle_patch,
    draw_maps,
    load_classifier,
)

__all__ = ["COLLAPSED_AREA", "EvidenceLocaliser", "EvidenceSettings", "train_evidence",
           "warn_if_collapsed"]

COLLAPSED_AREA = 0.02  # an evidence mask on less than this share of the tissue, or more, carries no place


@dataclass(frozen=True)
class EvidenceSettings(LocaliserSettings):
    epochs: int          # passes over the fit tiles
    lr: float            # Adam learning rate of the mask head
    area_weight: float   # price of the mask's share of the tissue (ramped up)


class EvidenceLocaliser(Localiser):
    """The mask head on the frozen classifier with the classifier's input transform: a tile's map
    is the head's mask at the tile's size, gated by the tissue prior (``evidence.csv`` holds the
    losses per epoch, ``evidence.png`` a few tiles beside their maps)."""

    method = "evidence"
    file_name = EVIDENCE_FILE
    fills = EVIDENCE_FILLS[::-1]  # shuffle first: the default
    build_keys = ("fill", "blur_sigma", "patch_size", "epochs", "lr", "area_weight", "fit_tiles",
                  "seed")
    settings_type = EvidenceSettings

    def __init__(self, settings: EvidenceSettings, classes: List[str], head: EvidenceMask,
                 info: Dict[str, Any], device: torch.device, built_with: Dict[str, Any]) -> None:
        self.settings, self.classes, self.built_with = settings, classes, built_with
        self.head, self.info, self.device = head.eval(), info, device
        self.transform = model_transform(info)
        self.history: List[Dict[str, float]] = []

    @classmethod
    def build(cls, config: Dict[str, Any], classes: List[str]) -> "EvidenceLocaliser":
        settings = cls.settings_of(config["localiser"])
        classifier = load_classifier(config, classes)
        check_shuffle_patch(settings, classifier, config["classifier"])
        with torch.random.fork_rng(devices=[]):  # the head's start depends on the seed alone
            torch.manual_seed(settings.seed)
            head = EvidenceMask(classifier.network).to(classifier.device)
        return cls(settings, classes, head, classifier.info, classifier.device,
                   cls.build_settings(config["localiser"]))

    def tensors(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB tiles resized and normalised as the classifier was trained, stacked."""
        return torch.stack([self.transform(image=image)["image"] for image in images])

    def fit(self, samples: List[Sample], output_dir: Path) -> None:
        self.history = train_evidence(self, samples, len(self.classes))
        self.head.eval()
        warn_if_collapsed(self.history[-1]["area"], self.settings.area_weight)
        write_csv(output_dir / "evidence.csv", self.history)
        draw_maps(output_dir / "evidence.png", samples[:4], self.maps)

    @torch.no_grad()
    def maps(self, samples: List[Sample]) -> List[np.ndarray]:
        images = [read_rgb(sample.image) for sample in samples]
        masks = self.head(self.tensors(images).to(self.device)).float().cpu()
        out = []
        for image, mask in zip(images, masks):
            size = image.shape[:2]
            mask = F.interpolate(mask[None], size=size, mode="bilinear", align_corners=False)[0, 0]
            tissue = ~tissue_background(torch.from_numpy(image)[None])[0]
            out.append((mask * tissue).numpy())
        return out

    def state(self) -> Dict[str, Any]:
        return {"head": self.head.state_dict()}

    def record(self) -> Dict[str, Any]:
        return {"history": self.history}

    def load_state(self, saved: Dict[str, Any]) -> None:
        self.head.load_state_dict(saved["head"])
        self.history = saved["history"]

    def summary(self) -> Dict[str, Any]:
        return {"fill": self.settings.fill, "final_losses": self.history[-1]}


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


def train_evidence(localiser: EvidenceLocaliser, samples: List[Sample],
                   num_classes: int) -> List[Dict[str, float]]:
    """Train ``localiser``'s head on ``samples`` with its settings; returns the mean losses of
    every epoch."""
    head, device, info, settings = localiser.head, localiser.device, localiser.info, localiser.settings
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
    fill, batch_size = settings.fill, settings.batch_size
    generator = torch.Generator().manual_seed(settings.seed)
    head.train()
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr)
    softmax, history = uses_softmax(info), []
    epochs = settings.epochs

    def area_weight(epoch: int) -> float:
        """Ramped up over the first half of the epochs: the mask first learns to keep the
        evidence, then to leave what it does not need (a full-strength price from the first step
        can empty it before it has found anything)."""
        return settings.area_weight * min(1.0, (epoch + 1) / max(1, epochs // 2))

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
            filled = (shuffle_fill(x, settings.patch_size, generator) if fill == "shuffle"
                      else blur_fill(x, settings.blur_sigma))
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

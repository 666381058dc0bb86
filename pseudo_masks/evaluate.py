"""Segmentation metrics from a confusion matrix, under both protocols of the field.

Index 0 is background, ``1..K`` the classes; ground-truth pixels of 255 are not scored. A predicted
255 (ignore) on a scored pixel counts as a miss for the true class (a false negative) and as a
false positive for no class, so a mask cannot gain by ignoring hard pixels.

* ``with_background``: every scored pixel counts; background is one of the ``K + 1`` classes;
* ``ignore_background``: pixels whose ground truth is background are not scored, and only the
  ``K`` classes enter the means (the protocol of several LUAD-HistoSeg / BCSS-WSSS papers).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from segmix.labels import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "PROTOCOLS", "segmentation_metrics"]

PROTOCOLS = ("with_background", "ignore_background")


class ConfusionMatrix:
    """Counts ``[K + 1, K + 2]``: rows = truth (0..K), columns = prediction (0..K, then ignore)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes + 1, num_classes + 2, dtype=torch.int64)

    def update(self, prediction: Tensor, truth: Tensor) -> None:
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)}"
                             " differ in shape")
        prediction, truth = prediction.reshape(-1).long().cpu(), truth.reshape(-1).long().cpu()
        scored = truth != IGNORE_INDEX
        prediction, truth = prediction[scored], truth[scored]
        k = self.num_classes
        if truth.numel() and int(truth.max()) > k:
            raise ValueError(f"truth values up to {int(truth.max())}, expected 0..{k} or 255")
        bad = (prediction > k) & (prediction != IGNORE_INDEX)
        if bad.any():
            raise ValueError(f"prediction values {prediction[bad].unique()[:5].tolist()} are"
                             f" outside 0..{k} and 255")
        prediction = torch.where(prediction == IGNORE_INDEX, torch.full_like(prediction, k + 1),
                                 prediction)
        self.counts += torch.bincount(truth * (k + 2) + prediction,
                                      minlength=(k + 1) * (k + 2)).view(k + 1, k + 2)


def _foreground_iou(counts: Tensor, k: int) -> float:
    """Binary IoU of "any class" vs background over all scored pixels (ignore = a miss)."""
    tp = counts[1:, 1 : k + 1].sum()
    fp = counts[0, 1 : k + 1].sum()
    fn = counts[1:, 0].sum() + counts[1:, k + 1].sum()
    union = tp + fp + fn
    return float(tp / union) if union > 0 else float("nan")


def segmentation_metrics(matrix: ConfusionMatrix, protocol: str = "with_background",
                         class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Per-class IoU and Dice, mIoU, FwIoU, mean Dice and pixel accuracy under ``protocol``, and
    the binary foreground IoU (classes merged, all scored pixels).

    Classes that occur neither in the scored truth nor in the predictions are left out of the
    means (their IoU is ``nan``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    counts = matrix.counts.double()
    full = counts
    if protocol == "ignore_background":
        counts = counts.clone()
        counts[0] = 0
    k = matrix.num_classes
    square = counts[:, : k + 1]
    tp = square.diag()
    truth_total = counts.sum(dim=1)          # includes predicted-ignore
    predicted_total = square.sum(dim=0)
    fp, fn = predicted_total - tp, truth_total - tp
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1),
                       torch.full_like(tp, float("nan")))
    classes = list(range(k + 1)) if protocol == "with_background" else list(range(1, k + 1))
    chosen = torch.tensor(classes)
    frequency = truth_total[chosen] / truth_total[chosen].sum().clamp_min(1)
    valid = ~torch.isnan(iou[chosen])
    names: List[str] = ["background", *(class_names or [f"class_{i}" for i in range(1, k + 1)])]
    scored = truth_total.sum()
    return {
        "protocol": protocol,
        "mIoU": float(iou[chosen][valid].mean()) if valid.any() else float("nan"),
        "FwIoU": float((frequency[valid] * iou[chosen][valid]).sum()),
        "mDice": float(dice[chosen][valid].mean()) if valid.any() else float("nan"),
        "pixel_accuracy": float(tp[chosen].sum() / scored.clamp_min(1)),
        "ignored_fraction": float(counts[:, k + 1].sum() / scored.clamp_min(1)),
        "foreground_iou": _foreground_iou(full, k),
        "iou": {names[c]: float(iou[c]) for c in classes},
        "dice": {names[c]: float(dice[c]) for c in classes},
    }

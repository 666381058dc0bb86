"""Classification metrics on multi-hot targets: accuracy, macro F1, mean average precision."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

__all__ = ["average_precision", "classification_metrics"]


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """Area under the precision-recall curve, summed over distinct score thresholds (the
    non-interpolated definition scikit-learn uses). ``nan`` when there is no positive."""
    total = int(positives.sum())
    if total == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, hits = scores[order], positives[order].double()
    tp = torch.cumsum(hits, 0)
    fp = torch.cumsum(1 - hits, 0)
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    precision = tp / (tp + fp)
    recall = tp / total
    previous = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def classification_metrics(probabilities: Tensor, targets: Tensor, threshold: float = 0.5
                           ) -> Dict[str, float]:
    """``probabilities`` and multi-hot ``targets`` are ``[N, K]``.

    Single-label data (one class per row): ``accuracy`` is top-1, predictions for F1 are the argmax.
    Multi-label data: ``accuracy`` is the exact-match ratio and predictions are ``p >= threshold``.
    ``macro_f1`` averages over classes that occur in the targets or predictions; ``mAP`` over
    classes with at least one positive.
    """
    if probabilities.shape != targets.shape or probabilities.dim() != 2:
        raise ValueError(f"probabilities {tuple(probabilities.shape)} and targets"
                         f" {tuple(targets.shape)} must both be [N, K]")
    truth = targets > 0.5
    single_label = bool((truth.sum(dim=1) == 1).all())
    if single_label:
        predicted = torch.zeros_like(truth)
        predicted[torch.arange(len(truth)), probabilities.argmax(dim=1)] = True
    else:
        predicted = probabilities >= threshold
    accuracy = float((predicted == truth).all(dim=1).float().mean())
    tp = (predicted & truth).sum(dim=0).double()
    fp = (predicted & ~truth).sum(dim=0).double()
    fn = (~predicted & truth).sum(dim=0).double()
    present = (tp + fp + fn) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    aps = torch.tensor([average_precision(probabilities[:, k], truth[:, k])
                        for k in range(truth.shape[1])])
    return {
        "accuracy": accuracy,
        "macro_f1": float(f1.mean()) if present.any() else float("nan"),
        "mAP": float(aps.nanmean()),
    }

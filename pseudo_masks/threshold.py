"""Choosing the background threshold of the pseudo masks without a single mask.

A ``threshold`` background makes a pixel its class where the class score (:func:`class_maps`'
maximum over classes: the CAM, or the localiser's foreground map blended in) is above the
threshold, background elsewhere. With ground truth the threshold is the one that scores best;
without it, the scores' own histogram over the tissue of a split decides: the threshold that best
splits it in two (Otsu's criterion: the largest variance between the two sides, as a share of the
total, ``eta``), among the candidate values. Where the scores are clearly bimodal (WBC-d2's
feature-axis maps, best ``eta`` 0.81) that is the threshold the masks choose; where they are not
(EBHI-Seg's, 0.66) it cut 9.6 mIoU points too high (docs/benchmarks.md, "Threshold without
masks"), so the best ``eta`` is reported with the choice. Only torch and NumPy.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["ScoreHistogram"]


class ScoreHistogram:
    """Counts of class scores in [0, 1] (``bins`` equal bins) over the pixels of many tiles."""

    def __init__(self, bins: int = 256) -> None:
        self.counts = np.zeros(bins)
        self.centres = (np.arange(bins) + 0.5) / bins

    def add(self, scores: Tensor, inside: Optional[Tensor] = None) -> None:
        """Count ``scores`` (any shape, in [0, 1]) where ``inside`` (same shape, bool) holds."""
        values = scores if inside is None else scores[inside]
        self.counts += torch.histc(values.float().clamp(0, 1), bins=len(self.counts), min=0,
                                   max=1).double().numpy()

    def split(self, threshold: float) -> Dict[str, float]:
        """The two sides of ``threshold``: ``eta``, the variance between them as a share of the
        total (0: no split, 1: two spikes), and ``foreground_share``, the share above it."""
        total = self.counts.sum()
        if total == 0:
            return {"eta": 0.0, "foreground_share": 0.0}
        above = self.centres > threshold
        w1 = self.counts[above].sum() / total
        w0 = 1 - w1
        mean = (self.counts * self.centres).sum() / total
        variance = (self.counts * (self.centres - mean) ** 2).sum() / total
        if w0 == 0 or w1 == 0 or variance == 0:
            return {"eta": 0.0, "foreground_share": float(w1)}
        m1 = (self.counts[above] * self.centres[above]).sum() / (w1 * total)
        m0 = (mean - w1 * m1) / w0
        return {"eta": float(w0 * w1 * (m0 - m1) ** 2 / variance), "foreground_share": float(w1)}

    def choose(self, thresholds: Sequence[float]) -> Tuple[float, List[Dict[str, float]]]:
        """The threshold among ``thresholds`` with the largest ``eta`` (the first of equals), and
        the table of every candidate's split."""
        table: List[Dict[str, float]] = [{"threshold": t, **self.split(float(t))}
                                         for t in thresholds]
        best = max(table, key=lambda row: row["eta"])
        return best["threshold"], table

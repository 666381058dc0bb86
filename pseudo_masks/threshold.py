"""Choosing the background threshold of the pseudo masks without a single mask.

A ``threshold`` background makes a pixel its class where the class score (:func:`class_maps`'
maximum over classes: the CAM, or the localiser's foreground map blended in) is above the
threshold, background elsewhere. With ground truth the threshold is the one that scores best;
without it, the scores' own histograms over the tissue of a split decide, among the candidate
values:

- **Otsu** (:meth:`ScoreHistogram.choose`): the threshold that best splits the pooled scores in
  two (the largest variance between the two sides, as a share of the total, ``eta``). Where the
  scores are clearly bimodal (WBC-d2's feature-axis maps, best ``eta`` 0.80-0.81) that is the
  threshold the masks choose; where they are not (EBHI-Seg's, 0.66) it cuts 4-10 mIoU points too
  high.
- **Expected mIoU** (:func:`expected_miou`): the scores read as foreground probabilities, the
  threshold with the largest expected mIoU of the split (background and each class, from each
  class's own histogram). On EBHI-Seg it lands 0.3 points below the masks' choice; on the bimodal
  WBC-d2 maps, whose scores are far from probabilities, 1-5 below.

:func:`choose_threshold` uses Otsu when the split is clean (best ``eta`` >= ``clean_split``) and
the expected mIoU otherwise (docs/benchmarks.md, "Mask-free threshold criteria").

:func:`estimate_miou` estimates a split's mIoU at the chosen threshold without masks, between two
readings of the scores: as foreground probabilities (too low: the maps are soft, a pixel scored 0.7
counts 30% background) and as the posterior of two normal modes on the two sides of the threshold
(too high: it cannot see errors the scores are sure of). Only torch and NumPy.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["ScoreHistogram", "choose_threshold", "estimate_miou", "expected_miou",
           "two_mode_posterior"]


class ScoreHistogram:
    """Counts of class scores in [0, 1] (``bins`` equal bins) over the pixels of many tiles."""

    def __init__(self, bins: int = 256) -> None:
        self.counts = np.zeros(bins)
        self.centres = (np.arange(bins) + 0.5) / bins
        self.outside = 0.0  # pixels left out by ``inside`` (background for the expected mIoU)

    def add(self, scores: Tensor, inside: Optional[Tensor] = None) -> None:
        """Count ``scores`` (any shape, in [0, 1]) where ``inside`` (same shape, bool) holds."""
        values = scores if inside is None else scores[inside]
        self.outside += 0.0 if inside is None else float((~inside).sum())
        self.counts += torch.histc(values.float().clamp(0, 1), bins=len(self.counts), min=0,
                                   max=1).double().numpy()

    def merge(self, other: "ScoreHistogram") -> None:
        """Add ``other``'s counts (the same bins) to this histogram's."""
        if len(other.counts) != len(self.counts):
            raise ValueError(f"cannot merge a histogram of {len(other.counts)} bins into one of"
                             f" {len(self.counts)}")
        self.counts += other.counts
        self.outside += other.outside

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


def expected_miou(histograms: Sequence[ScoreHistogram], threshold: float,
                  foreground: Optional[np.ndarray] = None) -> float:
    """The mIoU of a split thresholded at ``threshold``, expected when each pixel is foreground
    with the probability ``foreground[bin]`` of its score's bin (default: the score itself):
    ``histograms`` holds one histogram per class (the scores of its tiles; their pixels outside
    the tissue are background); the background IoU pools them all, each class's IoU is its own;
    classes without a pixel are left out."""
    background = [0.0, 0.0]  # expected intersection, expected union
    ious = []
    for histogram in histograms:
        counts = histogram.counts
        p = histogram.centres if foreground is None else foreground
        above = histogram.centres > threshold
        background[0] += histogram.outside + (counts[~above] * (1 - p[~above])).sum()
        background[1] += (histogram.outside + counts[~above].sum()
                          + (counts[above] * (1 - p[above])).sum())
        union = counts[above].sum() + (counts[~above] * p[~above]).sum()
        if counts.sum() > 0:
            ious.append((counts[above] * p[above]).sum() / union if union > 0 else 0.0)
    ious.append(background[0] / background[1] if background[1] > 0 else 0.0)
    return float(np.mean(ious))


def two_mode_posterior(histogram: ScoreHistogram, threshold: float) -> np.ndarray:
    """P(foreground | score bin) when the scores below and above ``threshold`` are two normal
    modes, each of its side's weight, mean and variance; a side without spread (or without a
    pixel) makes it the step at the threshold."""
    above = histogram.centres > threshold
    step = above.astype(float)
    modes = []
    for side in (~above, above):
        weight = histogram.counts[side].sum()
        if weight == 0:
            return step
        mean = (histogram.counts[side] * histogram.centres[side]).sum() / weight
        variance = (histogram.counts[side] * (histogram.centres[side] - mean) ** 2).sum() / weight
        if variance <= 0:
            return step
        modes.append(weight / np.sqrt(variance)
                     * np.exp(-(histogram.centres - mean) ** 2 / (2 * variance)))
    total = modes[0] + modes[1]
    return np.where(total > 0, modes[1] / np.maximum(total, 1e-300), step)


def estimate_miou(histograms: Sequence[ScoreHistogram], threshold: float) -> Dict[str, float]:
    """The split's mIoU at ``threshold`` estimated without masks, from one histogram per class (as
    :func:`expected_miou`): ``low`` reads the scores as foreground probabilities, ``high`` as the
    :func:`two_mode_posterior` of the pooled scores, ``estimate`` is their mean. On the val
    splits of EBHI-Seg and WBC-d2 the truth lay between the two, 2-3 points from the estimate
    (docs/benchmarks.md, "A split's mIoU without masks")."""
    pooled = _pooled(histograms)
    low = expected_miou(histograms, threshold)
    high = expected_miou(histograms, threshold, two_mode_posterior(pooled, threshold))
    return {"estimate": (low + high) / 2, "low": low, "high": high}


def _pooled(histograms: Sequence[ScoreHistogram]) -> ScoreHistogram:
    pooled = ScoreHistogram(len(histograms[0].counts))
    for histogram in histograms:
        pooled.merge(histogram)
    return pooled


def choose_threshold(histograms: Sequence[ScoreHistogram], thresholds: Sequence[float],
                     clean_split: float = 0.75) -> Tuple[float, str, List[Dict[str, float]]]:
    """The threshold among ``thresholds`` for one split, from one score histogram per class:
    Otsu's on the pooled scores when they split cleanly (best ``eta`` >= ``clean_split``), else
    the largest :func:`expected_miou` (the first of equals). Returns it, the criterion used
    (``"otsu"`` or ``"expected_miou"``) and the table of every candidate (``eta``,
    ``foreground_share``, ``expected_mIoU``)."""
    otsu, table = _pooled(histograms).choose(thresholds)
    for row in table:
        row["expected_mIoU"] = expected_miou(histograms, float(row["threshold"]))
    if max(row["eta"] for row in table) >= clean_split:
        return otsu, "otsu", table
    best = max(table, key=lambda row: row["expected_mIoU"])
    return best["threshold"], "expected_miou", table

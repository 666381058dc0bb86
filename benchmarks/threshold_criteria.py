"""Mask-free threshold criteria against the masks' best threshold, on the val split of finished runs.

    .venv/bin/python benchmarks/threshold_criteria.py runs/wbc runs/ebhi [--split val]

For each run folder (a ``segmix run`` up to its pseudo masks, on a split with masks): every tile's
class-score histogram inside its tissue (the score ``masks.threshold`` cuts,
``pseudo_masks.threshold_scores``) and its confusion matrix at each threshold of a 0.025 grid. Then
the split's mIoU (with background) at the threshold each criterion picks, without masks:

- ``otsu``: the largest between-class variance of the pooled histogram (what ``sweep.criterion:
  histogram`` does, there among the sweep values);
- ``min-error on the sweep values``: Kittler and Illingworth's minimum-error threshold (two normal
  modes of their own spread and weight), among the config's sweep values; over all thresholds it
  runs to the histogram's edge, where a sliver of scores clipped to 0 is a "mode" of no spread;
- ``two normals (EM)``: a two-normal mixture fitted to the pooled histogram without its first and
  last bin (scores clipped to 0 and 1), cut where the two weighted densities cross;
- ``per-tile otsu`` / ``per-tile min-error``: each tile cut at its own threshold;
- ``expected mIoU``: the scores read as foreground probabilities, the threshold that maximises the
  split's expected mIoU (background and each class, from each class's own tiles' histogram, the
  pixels outside the tissue counted as background); ``pooled expected IoU``: the same with one
  histogram for all classes;
- ``the stage's rule``: what ``sweep.criterion: histogram`` does (``pseudo_masks.choose_threshold``
  on the config's sweep values): Otsu where the best ``eta`` is at least 0.75, else the expected
  mIoU.

``--stride N`` reads every N-th tile of the split only (a large split in less time).

Prints a table and writes ``threshold_criteria_<split>.json`` beside each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from tqdm import tqdm

from pseudo_masks import (
    ConfusionMatrix,
    PseudoMaskConfig,
    ScoreHistogram,
    choose_threshold,
    segmentation_metrics,
)
from segmix.data import dataset_classes
from segmix.stages.tile_inputs import tile_inputs, tile_masks, tile_scores, tile_truth
from threshold_without_masks import run_inputs

BINS = 256
CENTRES = (np.arange(BINS) + 0.5) / BINS
GRID = np.round(np.arange(0.1, 0.7001, 0.025), 3)


def _sides(p: np.ndarray, cut: int):
    """Weights, means and variances of the bins below and from ``cut`` of the density ``p``."""
    low, high = p[:cut], p[cut:]
    w0, w1 = low.sum(), high.sum()
    m0, m1 = (low * CENTRES[:cut]).sum() / w0, (high * CENTRES[cut:]).sum() / w1
    v0 = (low * (CENTRES[:cut] - m0) ** 2).sum() / w0
    v1 = (high * (CENTRES[cut:] - m1) ** 2).sum() / w1
    return w0, w1, m0, m1, v0, v1


def _cuts(p: np.ndarray) -> List[int]:
    return [c for c in range(1, BINS) if p[:c].sum() > 1e-9 and p[c:].sum() > 1e-9]


def otsu(counts: np.ndarray) -> float:
    """Otsu's threshold over every bin edge, by the stage's own criterion (``ScoreHistogram``)."""
    histogram = ScoreHistogram(BINS)
    histogram.counts = counts.astype(float)
    return float(histogram.choose([c / BINS for c in _cuts(counts / counts.sum())])[0])


def min_error_cost(p: np.ndarray, cut: int) -> float:
    w0, w1, _, _, v0, v1 = _sides(p, cut)
    if v0 <= 0 or v1 <= 0:
        return np.inf
    return 0.5 * (w0 * np.log(v0) + w1 * np.log(v1)) - (w0 * np.log(w0) + w1 * np.log(w1))


def min_error(counts: np.ndarray, candidates: List[float]) -> float:
    p = counts / counts.sum()
    return min(candidates, key=lambda t: min_error_cost(p, int(round(t * BINS))))


def two_normals(counts: np.ndarray, iterations: int = 500) -> float:
    """The crossing of a two-normal mixture fitted by EM, clipped bins left out."""
    w = counts.astype(float).copy()
    w[0] = w[-1] = 0
    w /= w.sum()
    median = CENTRES[np.searchsorted(np.cumsum(w), 0.5)]
    pi, mu, var = np.zeros(2), np.zeros(2), np.zeros(2)
    for k, side in enumerate((CENTRES < median, CENTRES >= median)):
        pi[k] = w[side].sum()
        mu[k] = (w[side] * CENTRES[side]).sum() / pi[k]
        var[k] = (w[side] * (CENTRES[side] - mu[k]) ** 2).sum() / pi[k]

    def densities() -> np.ndarray:
        return np.stack([pi[k] / np.sqrt(2 * np.pi * var[k])
                         * np.exp(-(CENTRES - mu[k]) ** 2 / (2 * var[k])) for k in range(2)])

    for _ in range(iterations):
        d = densities()
        r = d / np.maximum(d.sum(0), 1e-300) * w
        pi = r.sum(1)
        mu = (r * CENTRES).sum(1) / pi
        var = np.maximum((r * (CENTRES - mu[:, None]) ** 2).sum(1) / pi, 1e-6)
    d = densities()
    low, high = int(np.argmin(mu)), int(np.argmax(mu))
    between = np.where((CENTRES > mu[low]) & (CENTRES < mu[high]) & (d[high] >= d[low]))[0]
    return float(CENTRES[between[0]]) if len(between) else float("nan")


def collect(run: Path, split: str, stride: int = 1) -> Dict[str, np.ndarray]:
    """Per tile (every ``stride``-th): the score histogram inside its tissue and its confusion
    matrix at each of GRID."""
    config, base, localiser_dir, tiles = run_inputs(run, split)
    tiles = tiles[::stride]
    data = config["data"]
    num_classes = len(dataset_classes(data))
    histograms, confusions, classes, outside = [], [], [], []
    for tile in tqdm(tiles, desc=f"{run.name} {split}", unit="tile"):
        inputs = tile_inputs(tile, localiser_dir)
        scores, inside = tile_scores(inputs, base)
        histograms.append(torch.histc(scores[inside].float().clamp(0, 1), bins=BINS, min=0,
                                      max=1).numpy())
        classes.append(int(torch.nonzero(inputs["labels"][0])[0, 0]))
        outside.append(float((~inside).sum()))
        truth = torch.from_numpy(tile_truth(tile, data, inputs["labels"], num_classes))
        per_threshold = []
        for threshold in GRID:
            matrix = ConfusionMatrix(num_classes)
            settings = PseudoMaskConfig.from_dict({**base.to_dict(), "threshold": float(threshold)})
            matrix.update(tile_masks(inputs, settings), truth)
            per_threshold.append(matrix.counts.numpy().copy())
        confusions.append(np.stack(per_threshold))
    return {"histograms": np.stack(histograms), "confusions": np.stack(confusions),
            "classes": np.array(classes), "outside": np.array(outside),
            "values": np.array(config["sweep"]["values"], dtype=float)}


def expected_miou(histograms: np.ndarray, outside: float) -> float:
    """The threshold maximising the expected mIoU when the scores are foreground probabilities:
    ``histograms`` ``[C, BINS]``, one per class (its tiles' scores inside the tissue), ``outside``
    the pixels outside the tissue (background)."""
    best, chosen = -1.0, 0.5
    for cut in range(1, BINS):
        below, above = histograms[:, :cut], histograms[:, cut:]
        background = ((outside + (below * (1 - CENTRES[:cut])).sum())
                      / (outside + below.sum() + (above * (1 - CENTRES[cut:])).sum()))
        ious = [background]
        for low, high in zip(below, above):
            if low.sum() + high.sum() > 0:
                denominator = high.sum() + (low * CENTRES[:cut]).sum()
                ious.append((high * CENTRES[cut:]).sum() / denominator if denominator else 0.0)
        if np.mean(ious) > best:
            best, chosen = float(np.mean(ious)), cut / BINS
    return chosen


def miou(counts: np.ndarray) -> float:
    matrix = ConfusionMatrix(counts.shape[0] - 1)
    matrix.counts = torch.from_numpy(counts.astype(np.int64))
    return 100 * segmentation_metrics(matrix, "with_background")["mIoU"]


def stage_rule(data: Dict[str, np.ndarray], values: List[float]) -> Dict[str, object]:
    """``pseudo_masks.choose_threshold`` on the collected histograms (one per class)."""
    histograms = []
    for k in np.unique(data["classes"]):
        histogram = ScoreHistogram(BINS)
        histogram.counts = data["histograms"][data["classes"] == k].sum(0).astype(float)
        histogram.outside = float(data["outside"][data["classes"] == k].sum())
        histograms.append(histogram)
    threshold, rule, table = choose_threshold(histograms, values)
    return {"threshold": float(threshold), "rule": rule,
            "best_eta": max(row["eta"] for row in table)}


def measure(run: Path, split: str, stride: int = 1) -> Dict[str, object]:
    data = collect(run, split, stride)
    histograms, confusions = data["histograms"], data["confusions"]
    curve = [miou(confusions[:, i].sum(0)) for i in range(len(GRID))]

    def at(threshold: float) -> float:
        return curve[int(np.abs(GRID - threshold).argmin())]

    def per_tile(criterion: Callable[[np.ndarray], float]) -> float:
        picks = [int(np.abs(GRID - criterion(h)).argmin()) if h.sum() else int(np.argmax(curve))
                 for h in histograms]
        return miou(sum(confusions[i, j] for i, j in enumerate(picks)))

    pooled = histograms.sum(0)
    values = list(data["values"])
    chosen = {"otsu": otsu(pooled), "min-error on the sweep values": min_error(pooled, values),
              "two normals (EM)": two_normals(pooled)}
    by_class = np.stack([histograms[data["classes"] == k].sum(0)
                         for k in np.unique(data["classes"])])
    chosen["expected mIoU"] = expected_miou(by_class, float(data["outside"].sum()))
    chosen["pooled expected IoU"] = expected_miou(pooled[None], float(data["outside"].sum()))
    result: Dict[str, object] = {
        "run": str(run), "split": split, "tiles": len(histograms),
        "by_masks": float(GRID[int(np.argmax(curve))]), "mIoU_by_masks": max(curve),
        "curve": dict(zip(map(float, GRID), curve)),
        "criteria": {name: {"threshold": t, "mIoU": at(t)} for name, t in chosen.items()},
    }
    rule = stage_rule(data, values)
    result["best_eta"] = rule["best_eta"]
    result["criteria"][f"the stage's rule ({rule['rule']})"] = {
        "threshold": rule["threshold"], "mIoU": at(rule["threshold"])}
    result["criteria"]["per-tile otsu"] = {"threshold": None, "mIoU": per_tile(otsu)}
    result["criteria"]["per-tile min-error"] = {
        "threshold": None, "mIoU": per_tile(lambda h: min_error(h, list(GRID)))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="val")
    parser.add_argument("--stride", type=int, default=1)
    args = parser.parse_args()
    lines = ["| run (split) | criterion | threshold | mIoU | below the masks' best |",
             "|---|---|---|---|---|"]
    for run in args.runs:
        result = measure(run, args.split, args.stride)
        (run / f"threshold_criteria_{args.split}.json").write_text(json.dumps(result, indent=2))
        best = result["mIoU_by_masks"]
        every = f", every {args.stride}th tile" if args.stride > 1 else ""
        lines.append(f"| {run.name} ({args.split}{every}, {result['tiles']} tiles, best eta"
                     f" {result['best_eta']:.2f}) | masks (grid 0.1-0.7) |"
                     f" {result['by_masks']:.3f} | {best:.1f} | - |")
        for name, row in result["criteria"].items():
            threshold = "per tile" if row["threshold"] is None else f"{row['threshold']:.3f}"
            lines.append(f"| | {name} | {threshold} | {row['mIoU']:.1f} |"
                         f" {best - row['mIoU']:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

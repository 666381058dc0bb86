"""Which per-pixel signal separates lesion/gland tissue from the rest on EBHI-Seg (val split)?

    .venv/bin/python benchmarks/foreground_signals.py --classifier runs/bench-cls/none/classifier.pt
    (another dataset: --config configs/wbc.yaml --data ../shared/data/wbc-d2/labels.csv)

On EBHI-Seg every tile holds stroma and lumen next to its class's glands, and the trivial mask (the
tile's class everywhere) scores ~53 mIoU, above every CAM threshold tried so far. This probe asks
why, one signal at a time: for each candidate foreground score (Grad-CAM / LayerCAM of the tile's
class at several depths of the classifier, stain and darkness maps without learning), scaled to
[0, 1] per tile, it reports

* ``AUC``: the probability that a random ground-truth foreground pixel scores above a random
  background pixel, pooled over tiles, **inside tissue** (the near-white tissue prior removed);
  0.5 = no information;
* ``best mIoU``: 7-class mIoU (tile label known, tissue prior on) of ``score >= t`` as foreground,
  at the best of a sweep of ``t`` (0 = the tissue-prior mask), and that ``t``.

Writes ``results.md`` and ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata
from skimage.color import rgb2hed

from cam import BaseCAM, GradCAM, LayerCAM
from pseudo_masks import ConfusionMatrix, segmentation_metrics, tissue_background
from segmix.config import load_config
from segmix.data import mask_convention, read_label_mask, read_rgb, read_split
from segmix.io import atomic_write_text
from segmix.models.factory import load_classifier
from segmix.stages.run import DEFAULTS as PIPELINE_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["blocks.2", "blocks.3", "blocks.4", "blocks.5", "conv_head"]
THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.05), 2)
PIXEL_STRIDE = 4  # pixels sampled for the AUC (every 4th row and column)


def unit_range(score: np.ndarray) -> np.ndarray:
    """Scale one tile's score to [0, 1] by its 1st and 99th percentiles (robust min-max)."""
    low, high = np.percentile(score, [1, 99])
    return np.clip((score - low) / max(high - low, 1e-6), 0.0, 1.0)


def stain_signals(rgb: np.ndarray) -> Dict[str, np.ndarray]:
    """Foreground scores without learning: hematoxylin density (nuclei) at a few smoothing widths,
    eosin density reversed, and darkness."""
    hed = rgb2hed(rgb)
    grey = rgb.astype(np.float32).mean(axis=2)
    signals = {f"hematoxylin, blur {s} px": gaussian_filter(hed[..., 0], s) for s in (2, 4, 8, 16)}
    signals["eosin reversed, blur 4 px"] = -gaussian_filter(hed[..., 1], 4)
    signals["darkness, blur 4 px"] = -gaussian_filter(grey, 4)
    return signals


class _GradAndLayerCAM(BaseCAM):
    """Grad-CAM maps then LayerCAM maps (``[B, 2K, h, w]``) from one forward and backward pass."""

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.cat([GradCAM.combine(self, activations, gradients),
                          LayerCAM.combine(self, activations, gradients)], dim=1)


def cam_signals(model: torch.nn.Module, images: torch.Tensor, labels: List[int],
                out_size=None) -> List[Dict[str, np.ndarray]]:
    """Per tile: Grad-CAM and LayerCAM of its class at each layer of ``LAYERS``, upsampled (to
    ``out_size``, default the input's), plus the mean of the unit-range maps of the layers at
    stride 16 and 32."""
    maps, logits = _GradAndLayerCAM(model, LAYERS).layer_maps(images)
    classes = logits.shape[1]
    out: List[Dict[str, np.ndarray]] = [{} for _ in labels]
    for name, raw in zip(LAYERS, maps):
        up = F.interpolate(raw, size=out_size or images.shape[-2:], mode="bilinear",
                           align_corners=False)
        for i, label in enumerate(labels):
            for j, method in enumerate(("gradcam", "layercam")):
                out[i][f"{method} {name}"] = up[i, j * classes + label].numpy()
    for tile in out:
        for method in ("gradcam", "layercam"):
            tile[f"{method} fused blocks.4+5+conv_head"] = np.mean(
                [unit_range(tile[f"{method} {n}"]) for n in ("blocks.4", "blocks.5", "conv_head")],
                axis=0)
    return out


def blurred(rgb: np.ndarray, sigma: float = 16) -> np.ndarray:
    """The tile blurred channel by channel (colour kept, texture gone), float32."""
    return np.stack([gaussian_filter(rgb[..., c].astype(np.float32), sigma) for c in range(3)], -1)


def window_average(values: np.ndarray, starts: range, width: int, size: int) -> np.ndarray:
    """Per pixel, the mean of ``values`` (one per window, row-major over ``starts`` x ``starts``)
    over the ``width``-pixel windows that cover it."""
    total, count = np.zeros((size, size)), np.zeros((size, size))
    corners = [(a, b) for a in starts for b in starts]
    for value, (a, b) in zip(values, corners):
        total[a:a + width, b:b + width] += value
        count[a:a + width, b:b + width] += 1
    return total / np.maximum(count, 1)


def perturbation_signals(model: torch.nn.Module, rgb: np.ndarray, label: int, mean: torch.Tensor,
                         std: torch.Tensor) -> Dict[str, np.ndarray]:
    """Attributions that ask the classifier about parts of the tile (one forward pass per part,
    so slow), as the tile class's probability: its log-probability's drop when a 32 px cell is
    blurred (occlusion); its probability when only a 56 px window (stride 28) stays sharp and the
    rest is blurred (insertion); and its probability for a 64 px crop (stride 16) fed alone at its
    own size (crop windows: what a classifier trained on crops is read with). Window scores are
    averaged over the windows covering each pixel."""
    sharp, soft = rgb.astype(np.float32), blurred(rgb)
    size = rgb.shape[0]

    def class_log_probability(images: List[np.ndarray]) -> np.ndarray:
        batch = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 255 - mean) / std
        with torch.no_grad():
            return torch.log_softmax(model(batch), dim=1)[:, label].numpy()

    def pasted(base: np.ndarray, source: np.ndarray, top: int, left: int, width: int) -> np.ndarray:
        out = base.copy()
        out[top:top + width, left:left + width] = source[top:top + width, left:left + width]
        return out

    cells = range(0, size, 32)
    occluded = [pasted(sharp, soft, a, b, 32) for a in cells for b in cells]
    scores = class_log_probability([sharp] + occluded)
    drop = (scores[0] - scores[1:]).reshape(len(cells), len(cells))
    inserted = range(0, size - 56 + 1, 28)
    cropped = range(0, size - 64 + 1, 16)
    return {
        "occlusion, 32 px cells": np.kron(drop, np.ones((32, 32)))[:size, :size],
        "insertion, 56 px windows": window_average(np.exp(class_log_probability(
            [pasted(soft, sharp, a, b, 56) for a in inserted for b in inserted])), inserted, 56, size),
        "crop windows, 64 px": window_average(np.exp(class_log_probability(
            [sharp[a:a + 64, b:b + 64] for a in cropped for b in cropped])), cropped, 64, size),
    }


class SignalScore:
    """Accumulates the AUC sample and one confusion matrix per threshold for one signal."""

    def __init__(self, num_classes: int) -> None:
        self.scores: List[np.ndarray] = []
        self.truths: List[np.ndarray] = []
        self.matrices = [ConfusionMatrix(num_classes) for _ in THRESHOLDS]

    def add(self, score: np.ndarray, truth: np.ndarray, tissue: np.ndarray, label: int) -> None:
        """``truth``: the tile's class map (0 background, ``label`` = its class, 1-based)."""
        score = unit_range(score)
        sample = tissue[::PIXEL_STRIDE, ::PIXEL_STRIDE]
        self.scores.append(score[::PIXEL_STRIDE, ::PIXEL_STRIDE][sample])
        self.truths.append(truth[::PIXEL_STRIDE, ::PIXEL_STRIDE][sample] > 0)
        for matrix, threshold in zip(self.matrices, THRESHOLDS):
            predicted = np.where(tissue & (score >= threshold), label, 0)
            matrix.update(torch.from_numpy(predicted), torch.from_numpy(truth))

    def result(self) -> Dict[str, float]:
        scores, truths = np.concatenate(self.scores), np.concatenate(self.truths)
        positives = int(truths.sum())
        negatives = truths.size - positives
        ranks = rankdata(scores)
        auc = (ranks[truths].sum() - positives * (positives + 1) / 2) / (positives * negatives)
        metrics = [segmentation_metrics(m, "with_background") for m in self.matrices]
        mious = [m["mIoU"] for m in metrics]
        best = int(np.argmax(mious))
        return {"auc": float(auc), "best_miou": mious[best], "best_threshold": float(THRESHOLDS[best]),
                "best_foreground_iou": metrics[best]["foreground_iou"], "miou_at_0": mious[0]}


def write_report(out: Path, report: str, results: Dict) -> None:
    """``results.md`` and ``results.json`` under ``out``, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", report)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    print(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ebhi-seg/labels.csv")
    parser.add_argument("--classifier", type=Path, action="append", default=[],
                        help="classifier.pt files (repeat); none: stain signals only")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "foreground-signals")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ebhi.yaml",
                        help="the dataset's config (classes, mask convention); --data its CSV")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sample", type=int, default=None,
                        help="a seeded random subset of N val tiles instead of all")
    parser.add_argument("--perturbation", action="store_true",
                        help="also occlusion and insertion maps (~100 forward passes a tile)")
    args = parser.parse_args()
    data = load_config(args.config, PIPELINE_DEFAULTS)["data"]
    data["train"]["path"] = data["val"]["path"] = str(args.data.resolve())
    samples = read_split(data, "val")
    if args.sample:
        chosen = np.random.default_rng(0).choice(len(samples), args.sample, replace=False)
        samples = [samples[i] for i in sorted(chosen)]
    convention = mask_convention(data)
    models = []
    for path in args.classifier:
        model, info = load_classifier(path)
        mean = torch.tensor(info["mean"])[:, None, None]
        std = torch.tensor(info["std"])[:, None, None]
        models.append((path.parent.name, model, mean, std, tuple(info["image_size"])))
    scores: Dict[str, SignalScore] = {}

    def add(name: str, score: np.ndarray, truth, tissue, label) -> None:
        scores.setdefault(name, SignalScore(len(data["classes"]))).add(score, truth, tissue, label)

    for start in range(0, len(samples), args.batch_size):
        batch = samples[start:start + args.batch_size]
        rgbs = [read_rgb(sample.image) for sample in batch]
        labels = [sample.labels[0] for sample in batch]
        truths = [read_label_mask(s.mask, s.labels, len(data["classes"]), convention)
                  for s in batch]
        tissues = ~tissue_background(torch.from_numpy(np.stack(rgbs))).numpy()
        for rgb, truth, tissue, label in zip(rgbs, truths, tissues, labels):
            for name, score in stain_signals(rgb).items():
                add(name, score, truth, tissue, label + 1)
        images = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float() / 255
        for run_name, model, mean, std, size in models:
            inputs = images if tuple(images.shape[-2:]) == size else F.interpolate(
                images, size=size, mode="bilinear", antialias=True, align_corners=False)
            tiles = cam_signals(model, (inputs - mean) / std, labels, images.shape[-2:])
            for signals, truth, tissue, label in zip(tiles, truths, tissues, labels):
                for name, score in signals.items():
                    add(f"{run_name}: {name}", score, truth, tissue, label + 1)
            if args.perturbation:
                for rgb, truth, tissue, label in zip(rgbs, truths, tissues, labels):
                    for name, score in perturbation_signals(model, rgb, label, mean, std).items():
                        add(f"{run_name}: {name}", score, truth, tissue, label + 1)
        print(f"{start + len(batch)}/{len(samples)} tiles", flush=True)
    results = {name: s.result() for name, s in scores.items()}
    lines = ["| signal | AUC inside tissue | best mIoU | at threshold | mIoU at 0 |",
             "|---|---|---|---|---|"]
    for name, r in sorted(results.items(), key=lambda item: -item[1]["auc"]):
        lines.append(f"| {name} | {r['auc']:.3f} | {100 * r['best_miou']:.1f} |"
                     f" {r['best_threshold']:.2f} | {100 * r['miou_at_0']:.1f} |")
    write_report(args.out, "\n".join(lines) + "\n", results)


if __name__ == "__main__":
    main()

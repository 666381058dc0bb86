"""Threshold and tile quality without masks, against the ground truth (val split of any run).

    .venv/bin/python benchmarks/threshold_without_masks.py runs/wbc runs/ebhi-axis [--split val]
        [--set masks.foreground_weight=0 --set "sweep.values=[0.0, 0.1, 0.2, 0.3, 0.4]"]

For each run folder (a ``segmix run`` up to its pseudo masks, on a split with masks): the threshold
the score histogram chooses (``sweep.criterion: histogram``, no masks) among the run's sweep values
against the one the masks choose (``sweep.criterion: masks``), with the split's mIoU of each; and
the tile quality of the pseudo-mask stage (``eta`` at the chosen threshold) against each tile's true
IoU (mean of background and class IoU on the tile): Spearman's rank correlation; and the split's
mIoU the stage estimates without masks at the histogram's threshold (with its low and high reading,
``pseudo_masks.estimate_miou``) against the true mIoU there. Prints a table and
writes ``threshold_without_masks.json`` beside each run. ``--set`` changes the pseudo-mask config
first (e.g. ``masks.foreground_weight=0``: the CAMs alone, on the same run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from pseudo_masks import ConfusionMatrix, PseudoMaskConfig, segmentation_metrics
from segmix.artifacts import CamRecord, read_cam_index
from segmix.config import apply_overrides, load_config
from segmix.data import dataset_classes
from segmix.stages.foreground_weight import resolve_foreground_weight
from segmix.stages.mask_sweep import histogram_sweep, sweep
from segmix.stages.pseudo_masks import DEFAULTS
from segmix.stages.tile_inputs import tile_inputs, tile_masks, tile_truth
from segmix.stages.tile_quality import TileQuality, measure_tile


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x)).astype(float) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def run_inputs(run: Path, split: str, overrides: List[str] = ()
               ) -> Tuple[Dict[str, Any], PseudoMaskConfig, Optional[Path], List[CamRecord]]:
    """A run's pseudo-mask config (``overrides`` applied, the foreground weight resolved), its mask
    settings, the localiser folder they read (or None) and the CAM records of ``split``."""
    config = apply_overrides(load_config(run / "pseudo-masks" / "config.yaml", DEFAULTS),
                             list(overrides))
    config = resolve_foreground_weight(config)
    base = PseudoMaskConfig.from_dict(dict(config["masks"]))
    localiser_dir = Path(config["localiser_dir"]) if base.foreground_weight > 0 else None
    tiles = [t for t in read_cam_index(Path(config["cams_dir"])) if t.split == split]
    return config, base, localiser_dir, tiles


def measure(run: Path, split: str, overrides: List[str]) -> Dict[str, Any]:
    config, base, localiser_dir, tiles = run_inputs(run, split, overrides)
    data, sweep_cfg = config["data"], config["sweep"]
    num_classes = len(dataset_classes(data))
    values = list(sweep_cfg["values"])
    by_masks, table = sweep(tiles, data, base, "threshold", values, "with_background", "mIoU",
                            localiser_dir)
    by_histogram, _, eta_table = histogram_sweep(tiles, base, values, localiser_dir)
    miou = {row["threshold"]: row["mIoU"] for row in table}
    chosen = PseudoMaskConfig.from_dict({**base.to_dict(), "threshold": by_histogram})
    qualities, truth_iou = [], []
    checker = TileQuality(by_histogram)
    for tile in tiles:
        inputs = tile_inputs(tile, localiser_dir)
        mask = tile_masks(inputs, chosen).numpy()
        truth = tile_truth(tile, data, inputs["labels"], num_classes)
        qualities.append(checker.add(split, tile.name, *measure_tile(inputs, chosen)))
        matrix = ConfusionMatrix(num_classes)
        matrix.update(torch.from_numpy(mask), torch.from_numpy(truth))
        truth_iou.append(segmentation_metrics(matrix, "with_background")["mIoU"])
    scores = np.array(qualities)
    return {"run": str(run), "split": split, "overrides": overrides, "tiles": len(tiles),
            "values": values,
            "by_masks": by_masks, "mIoU_by_masks": miou[by_masks],
            "by_histogram": by_histogram, "mIoU_by_histogram": miou[by_histogram],
            "best_eta": max(row["eta"] for row in eta_table),
            "quality_spearman": spearman(scores, np.array(truth_iou)),
            "quality_median": float(np.median(scores)),
            "estimated_mIoU": checker.estimates()[split]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="val")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    lines = ["| run | tiles | threshold by masks | mIoU | threshold by histogram | mIoU | loss |"
             " best eta | tile quality vs true tile IoU (Spearman) | estimated mIoU (low-high) |"
             " estimate - truth |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        result = measure(run, args.split, args.set)
        estimate = result["estimated_mIoU"]
        name = "threshold_without_masks" + ("_" + "_".join(args.set).replace("/", "") if args.set
                                            else "")
        (run / f"{name[:120]}.json").write_text(json.dumps(result, indent=2))
        lines.append(f"| {run.name} ({args.split}{', ' + ', '.join(args.set) if args.set else ''}) | {result['tiles']} | {result['by_masks']} |"
                     f" {100 * result['mIoU_by_masks']:.1f} | {result['by_histogram']} |"
                     f" {100 * result['mIoU_by_histogram']:.1f} |"
                     f" {100 * (result['mIoU_by_masks'] - result['mIoU_by_histogram']):.1f} |"
                     f" {result['best_eta']:.2f} | {result['quality_spearman']:.2f} |"
                     f" {100 * estimate['estimate']:.1f} ({100 * estimate['low']:.1f}-"
                     f"{100 * estimate['high']:.1f}) |"
                     f" {100 * (estimate['estimate'] - result['mIoU_by_histogram']):+.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

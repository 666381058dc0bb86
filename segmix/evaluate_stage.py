"""``segmix evaluate``: score a folder of predicted masks against the ground truth of any split.

Predictions are PNGs named ``<tile stem>.png`` with class indices (0 background, 1..K, 255 ignore),
as written by ``segmix pseudo-masks`` (and later ``segmix predict``). Ground truth comes from the
dataset split (any labelled CSV in the same layout, not only the validation split). Writes
``metrics.json`` (both protocols: with and without ground-truth background) and ``per_class.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from tqdm import tqdm

from pseudo_masks import PROTOCOLS, ConfusionMatrix, read_mask_png, segmentation_metrics

from .data import (
    DATA_DEFAULTS,
    DatasetError,
    dataset_classes,
    decode_mask,
    mask_convention,
    read_mask,
    read_split,
    unique_names,
)
from .io import atomic_write_text, write_csv

__all__ = ["DEFAULTS", "DONE_FILE", "run"]

DONE_FILE = "metrics.json"

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/evaluate",
    "predictions": None,
    "data": DATA_DEFAULTS,
    "split": "val",
    "protocols": list(PROTOCOLS),
}


def run(config: Dict[str, Any], output_dir: Path, **_: Any) -> Dict[str, Any]:
    if not config["predictions"]:
        raise ValueError("set predictions: the folder of predicted mask PNGs")
    predictions = Path(config["predictions"])
    data, split = config["data"], config["split"]
    classes = dataset_classes(data)
    samples = read_split(data, split)
    names = unique_names(samples)
    missing_truth = [str(s.image) for s in samples if s.mask is None]
    if missing_truth:
        raise DatasetError(f"{len(missing_truth)} tile(s) of split {split!r} have no ground-truth"
                           f" mask, e.g. {missing_truth[:3]}")
    missing = [f"{n}.png" for n in names if not (predictions / f"{n}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(names)} predictions are missing in"
                                f" {predictions}, e.g. {missing[:3]}")
    matrix = ConfusionMatrix(len(classes))
    convention = mask_convention(data)
    for sample, name in tqdm(list(zip(samples, names)), desc=f"evaluating {split}", unit="tile"):
        prediction = read_mask_png(predictions / f"{name}.png")
        truth = decode_mask(read_mask(sample.mask), sample.labels, len(classes), convention,
                            sample.mask)
        if prediction.shape != truth.shape:
            raise ValueError(f"{predictions / (name + '.png')} is {prediction.shape}, its ground"
                             f" truth {sample.mask} is {truth.shape}")
        matrix.update(torch.from_numpy(prediction), torch.from_numpy(truth))
    metrics: Dict[str, Any] = {p: segmentation_metrics(matrix, p, classes) for p in config["protocols"]}
    metrics["tiles"] = len(samples)
    metrics["confusion_matrix"] = matrix.counts.tolist()
    rows: List[Dict[str, Any]] = []
    for protocol in config["protocols"]:
        result = metrics[protocol]
        print(f"{protocol}: mIoU {result['mIoU']:.4f}, FwIoU {result['FwIoU']:.4f}, mDice"
              f" {result['mDice']:.4f}, foreground IoU {result['foreground_iou']:.4f}")
        rows += [{"protocol": protocol, "class": name, "iou": result["iou"][name],
                  "dice": result["dice"][name]} for name in result["iou"]]
    write_csv(output_dir / "per_class.csv", rows)
    atomic_write_text(output_dir / DONE_FILE, json.dumps(metrics, indent=2))
    return metrics

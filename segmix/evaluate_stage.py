"""``segmix evaluate``: score a folder of predicted masks against the ground truth of any split.

Predictions are PNGs named ``<tile stem>.png`` with class indices (0 background, 1..K, 255 ignore),
as written by ``segmix pseudo-masks`` and ``segmix predict``. Ground truth comes from the dataset
split (any labelled CSV in the same layout, not only the validation split). Writes
``metrics.json`` (both protocols: with and without ground-truth background) and ``per_class.csv``.

With ``tile_classes_from`` (a ``segmix cams`` folder holding this split's tiles), a third reading is
added, ``classifier_label``: the predicted mask decides foreground / background and every
foreground pixel takes the tile's top class by the classifier's probabilities (single-label data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
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
    "tile_classes_from": None,
}


def _top_classes(cams_dir: Path, split: str, names: List[str]) -> Dict[str, int]:
    """Each tile's most probable class by the classifier, from ``segmix cams`` output."""
    missing = [n for n in names if not (cams_dir / split / f"{n}.npz").is_file()]
    if missing:
        raise FileNotFoundError(f"tile_classes_from: {len(missing)} tiles of split {split!r} have no"
                                f" CAM file in {cams_dir / split}, e.g. {missing[:3]}; run"
                                f" `segmix cams` with splits including {split!r}")
    top = {}
    for name in names:
        with np.load(cams_dir / split / f"{name}.npz") as data:
            top[name] = int(np.argmax(data["probabilities"]))
    return top


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
    top_classes = _top_classes(Path(config["tile_classes_from"]), split, names) \
        if config["tile_classes_from"] else None
    matrix, relabelled = ConfusionMatrix(len(classes)), ConfusionMatrix(len(classes))
    convention = mask_convention(data)
    for sample, name in tqdm(list(zip(samples, names)), desc=f"evaluating {split}", unit="tile"):
        prediction = read_mask_png(predictions / f"{name}.png")
        truth = decode_mask(read_mask(sample.mask), sample.labels, len(classes), convention,
                            sample.mask)
        if prediction.shape != truth.shape:
            raise ValueError(f"{predictions / (name + '.png')} is {prediction.shape}, its ground"
                             f" truth {sample.mask} is {truth.shape}")
        matrix.update(torch.from_numpy(prediction), torch.from_numpy(truth))
        if top_classes is not None:
            foreground = (prediction != 0) & (prediction != 255)
            with_label = np.where(foreground, top_classes[name] + 1, prediction).astype(np.uint8)
            relabelled.update(torch.from_numpy(with_label), torch.from_numpy(truth))
    metrics: Dict[str, Any] = {p: segmentation_metrics(matrix, p, classes) for p in config["protocols"]}
    if top_classes is not None:
        metrics["classifier_label"] = segmentation_metrics(relabelled, "with_background", classes)
    metrics["tiles"] = len(samples)
    metrics["confusion_matrix"] = matrix.counts.tolist()
    rows: List[Dict[str, Any]] = []
    for protocol in [*config["protocols"], *(["classifier_label"] if top_classes else [])]:
        result = metrics[protocol]
        print(f"{protocol}: mIoU {result['mIoU']:.4f}, FwIoU {result['FwIoU']:.4f}, mDice"
              f" {result['mDice']:.4f}, foreground IoU {result['foreground_iou']:.4f}")
        rows += [{"protocol": protocol, "class": name, "iou": result["iou"][name],
                  "dice": result["dice"][name]} for name in result["iou"]]
    write_csv(output_dir / "per_class.csv", rows)
    atomic_write_text(output_dir / DONE_FILE, json.dumps(metrics, indent=2))
    return metrics

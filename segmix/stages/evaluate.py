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

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from tqdm import tqdm

from pseudo_masks import PROTOCOLS, ConfusionMatrix, segmentation_metrics

from ..artifacts import METRICS_FILE, top_classes, write_metrics
from ..config import ConfigError
from ..data import (
    DATA_DEFAULTS,
    DatasetError,
    dataset_classes,
    mask_convention,
    read_label_mask,
    read_mask_png,
    read_split,
    unique_names,
    validate_data,
)
from ..io import write_csv
from ..labels import class_pixels

__all__ = ["DEFAULTS", "DONE_FILE", "run", "validate"]

DONE_FILE = METRICS_FILE

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/evaluate",
    "predictions": None,
    "data": DATA_DEFAULTS,
    "split": "val",
    "protocols": list(PROTOCOLS),
    "tile_classes_from": None,
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    if not config["predictions"]:
        raise ConfigError("set predictions: the folder of predicted mask PNGs")
    if config["split"] not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {config['split']!r}")
    validate_data(config["data"], required=[config["split"]])
    unknown = [p for p in config["protocols"] if p not in PROTOCOLS]
    if unknown or not config["protocols"]:
        raise ConfigError(f"protocols must list some of {', '.join(PROTOCOLS)}, got"
                          f" {config['protocols']!r}")


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Score the predicted masks of ``config['split']``; returns the metrics written."""
    validate(config)
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
        raise DatasetError(f"{len(missing)} of {len(names)} predictions are missing in"
                                f" {predictions}, e.g. {missing[:3]}")
    tile_classes = (top_classes(Path(config["tile_classes_from"]), split, names)
                    if config["tile_classes_from"] else None)
    matrix, relabelled = ConfusionMatrix(len(classes)), ConfusionMatrix(len(classes))
    convention = mask_convention(data)
    for sample, name in tqdm(list(zip(samples, names)), desc=f"evaluating {split}", unit="tile"):
        prediction = read_mask_png(predictions / f"{name}.png")
        truth = read_label_mask(sample.mask, sample.labels, len(classes), convention)
        if prediction.shape != truth.shape:
            raise DatasetError(f"{predictions / (name + '.png')} is {prediction.shape}, its ground"
                               f" truth {sample.mask} is {truth.shape}")
        matrix.update(torch.from_numpy(prediction), torch.from_numpy(truth))
        if tile_classes is not None:
            with_label = np.where(class_pixels(prediction), tile_classes[name] + 1,
                                  prediction).astype(np.uint8)
            relabelled.update(torch.from_numpy(with_label), torch.from_numpy(truth))
    metrics: Dict[str, Any] = {p: segmentation_metrics(matrix, p, classes) for p in config["protocols"]}
    if tile_classes is not None:
        metrics["classifier_label"] = segmentation_metrics(relabelled, "with_background", classes)
    metrics["tiles"] = len(samples)
    metrics["confusion_matrix"] = matrix.counts.tolist()
    rows: List[Dict[str, Any]] = []
    for protocol in [*config["protocols"], *(["classifier_label"] if tile_classes else [])]:
        result = metrics[protocol]
        print(f"{protocol}: mIoU {result['mIoU']:.4f}, FwIoU {result['FwIoU']:.4f}, mDice"
              f" {result['mDice']:.4f}, foreground IoU {result['foreground_iou']:.4f}")
        rows += [{"protocol": protocol, "class": name, "iou": result["iou"][name],
                  "dice": result["dice"][name]} for name in result["iou"]]
    write_csv(output_dir / "per_class.csv", rows)
    write_metrics(output_dir, metrics)
    return metrics

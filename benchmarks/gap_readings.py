"""Where a segmenter's val mIoU is lost, outline or class: four readings of its predicted masks on
single-label tiles (every tile one class), against the split's true masks.

- ``as predicted``: the masks as ``segmix predict`` wrote them (what ``segmix evaluate`` scores);
- ``majority class``: its outline, every foreground pixel of a tile given the tile's most
  predicted class (one class per tile);
- ``true class``: its outline, every foreground pixel given the tile's labelled class (the loss
  left is the outline's);
- ``true outline``: the true mask's outline, given the tile's most predicted class (the loss left
  is the class's; a tile with no predicted foreground counts as the first class).

Comparing two segmenters (a final model and its upper bound) says whether the gap between them is
where the tissue is or what it is.

    .venv/bin/python benchmarks/gap_readings.py --data ../shared/data/ebhi-seg/labels.csv \
        --classes "Normal,Polyp,Low-grade IN,High-grade IN,Adenocarcinoma,Serrated adenoma" \
        --predictions final=runs/ebhi/predictions/masks upper=runs/ebhi-ub/predictions/masks
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from pseudo_masks import ConfusionMatrix, segmentation_metrics
from segmix.data import (
    DATA_DEFAULTS,
    DatasetError,
    mask_convention,
    read_label_mask,
    read_mask_png,
    read_split,
    unique_names,
)
from segmix.labels import BACKGROUND_INDEX, IGNORE_INDEX

READINGS = ("as predicted", "majority class", "true class", "true outline")


def readings(prediction: np.ndarray, truth: np.ndarray, label: int) -> Dict[str, np.ndarray]:
    """The four readings (see the module) of one tile's predicted mask; ``label`` is the tile's
    class index, 1..K."""
    foreground = (prediction != BACKGROUND_INDEX) & (prediction != IGNORE_INDEX)
    counts = np.bincount(prediction[foreground].ravel(), minlength=label + 1)
    majority = int(counts.argmax()) if foreground.any() else 1
    true_foreground = (truth != BACKGROUND_INDEX) & (truth != IGNORE_INDEX)
    return {"as predicted": prediction,
            "majority class": np.where(foreground, majority, prediction),
            "true class": np.where(foreground, label, prediction),
            "true outline": np.where(true_foreground, majority, BACKGROUND_INDEX)}


def score(data: Dict[str, object], split: str, folder: Path) -> Dict[str, Dict[str, object]]:
    """The with-background metrics of each reading of ``folder``'s masks for ``split``."""
    samples = read_split(data, split, progress=False)
    classes = list(data["classes"])
    matrices = {name: ConfusionMatrix(len(classes)) for name in READINGS}
    convention = mask_convention(data)
    for sample, name in zip(samples, unique_names(samples)):
        if sample.mask is None or len(sample.labels) != 1:
            raise DatasetError(f"{sample.image}: the readings need one class and a true mask per"
                               f" tile, got labels {list(sample.labels)} and mask {sample.mask}")
        path = folder / f"{name}.png"
        if not path.is_file():
            raise DatasetError(f"{path} is missing: --predictions takes segmix predict's masks/")
        truth = read_label_mask(sample.mask, sample.labels, len(classes), convention)
        for reading, mask in readings(read_mask_png(path), truth, sample.labels[0] + 1).items():
            matrices[reading].update(torch.from_numpy(mask.astype(np.uint8)),
                                     torch.from_numpy(truth))
    return {reading: segmentation_metrics(matrix, "with_background", classes)
            for reading, matrix in matrices.items()}


def table(results: Dict[str, Dict[str, Dict[str, object]]]) -> str:
    """One row per segmenter and reading: mIoU, foreground IoU and per-class IoU, in %."""
    classes = list(next(iter(next(iter(results.values())).values()))["iou"])
    header = ["segmenter", "reading", "mIoU", "fg IoU", *classes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_reading in results.items():
        for reading, metrics in by_reading.items():
            cells = [model, reading, f"**{100 * metrics['mIoU']:.1f}**",
                     f"{100 * metrics['foreground_iou']:.1f}",
                     *[f"{100 * metrics['iou'][c]:.1f}" for c in classes]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_prediction(text: str) -> Tuple[str, Path]:
    name, _, folder = text.partition("=")
    if not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, Path(folder)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="a CSV with image, mask, label, split")
    parser.add_argument("--classes", required=True, help="the class names, comma-separated")
    parser.add_argument("--convention", default="binary", help="data.mask.convention")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--predictions", type=parse_prediction, nargs="+", required=True,
                        metavar="NAME=FOLDER")
    args = parser.parse_args(argv)
    data = {**DATA_DEFAULTS, "classes": args.classes.split(","),
            args.split: {**DATA_DEFAULTS[args.split], "path": str(args.data), "split": args.split},
            "mask": {**DATA_DEFAULTS["mask"], "convention": args.convention}}
    results = {name: score(data, args.split, folder) for name, folder in args.predictions}
    print(f"{platform.node()}; {args.split} split, with background (%)")
    print(table(results))


if __name__ == "__main__":
    main()

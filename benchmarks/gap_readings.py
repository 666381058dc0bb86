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
where the tissue is or what it is. A second table reads the outline alone (tissue against
background, classes aside): the share of pixels called tissue that are background and the reverse,
and the error rate in bands of distance from the true outline (is it lost at the edge, which
sharper masks would fix, or in whole regions, which they would not).

    .venv/bin/python benchmarks/gap_readings.py --data ../shared/data/ebhi-seg/labels.csv \
        --classes "Normal,Polyp,Low-grade IN,High-grade IN,Adenocarcinoma,Serrated adenoma" \
        --predictions final=runs/ebhi/predictions/masks upper=runs/ebhi-ub/predictions/masks
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

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
from segmix.labels import BACKGROUND_INDEX, class_pixels

READINGS = ("as predicted", "majority class", "true class", "true outline")
BANDS = (0, 2, 4, 8, 16, 32, np.inf)  # distance from the true outline, px: (0, 2], (2, 4], ...


def readings(prediction: np.ndarray, truth: np.ndarray, label: int) -> Dict[str, np.ndarray]:
    """The four readings (see the module) of one tile's predicted mask; ``label`` is the tile's
    class index, 1..K."""
    foreground = class_pixels(prediction)
    counts = np.bincount(prediction[foreground].ravel(), minlength=label + 1)
    majority = int(counts.argmax()) if foreground.any() else 1
    true_foreground = class_pixels(truth)
    return {"as predicted": prediction,
            "majority class": np.where(foreground, majority, prediction),
            "true class": np.where(foreground, label, prediction),
            "true outline": np.where(true_foreground, majority, BACKGROUND_INDEX)}


class OutlineErrors:
    """Tissue against background over many tiles: pixels called tissue that are background
    (``false_tissue``), the reverse (``missed_tissue``), and per band of distance from the true
    outline (``BANDS``) the band's share of pixels and its error rate."""

    def __init__(self) -> None:
        self.pixels = self.false_tissue = self.missed_tissue = 0
        self.band_pixels = np.zeros(len(BANDS) - 1)
        self.band_errors = np.zeros(len(BANDS) - 1)

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        """One tile's tissue masks (bool, predicted and true)."""
        distance = np.where(truth, distance_transform_edt(truth), distance_transform_edt(~truth))
        wrong = predicted != truth
        self.pixels += truth.size
        self.false_tissue += int((predicted & ~truth).sum())
        self.missed_tissue += int((truth & ~predicted).sum())
        band = np.digitize(distance, BANDS[1:-1], right=True)
        self.band_pixels += np.bincount(band.ravel(), minlength=len(BANDS) - 1)
        self.band_errors += np.bincount(band[wrong], minlength=len(BANDS) - 1)

    def row(self) -> List[str]:
        """False tissue and missed tissue in % of all pixels, then per band ``error rate (share
        of pixels)`` in %."""
        total = max(self.pixels, 1)
        rates = self.band_errors / np.maximum(self.band_pixels, 1)
        shares = self.band_pixels / total
        return [f"{100 * self.false_tissue / total:.1f}",
                f"{100 * self.missed_tissue / total:.1f}",
                *[f"{100 * rate:.1f} ({100 * share:.0f})" for rate, share in zip(rates, shares)]]


def single_label_tiles(data: Dict[str, object],
                       split: str) -> Iterator[Tuple[str, int, np.ndarray]]:
    """Each tile of ``split`` as ``(its unique name, its class index 1..K, its true label mask)``;
    a tile without one class and a true mask is an error."""
    samples = read_split(data, split, progress=False)
    num_classes, convention = len(data["classes"]), mask_convention(data)
    for sample, name in zip(samples, unique_names(samples)):
        if sample.mask is None or len(sample.labels) != 1:
            raise DatasetError(f"{sample.image}: single-label tiles with a true mask expected,"
                               f" got labels {list(sample.labels)} and mask {sample.mask}")
        yield (name, sample.labels[0] + 1,
               read_label_mask(sample.mask, sample.labels, num_classes, convention))


def score(data: Dict[str, object], split: str,
          folder: Path) -> Tuple[Dict[str, Dict[str, object]], OutlineErrors]:
    """The with-background metrics of each reading of ``folder``'s masks for ``split``, and the
    errors of their outline."""
    classes = list(data["classes"])
    matrices = {name: ConfusionMatrix(len(classes)) for name in READINGS}
    outline = OutlineErrors()
    for name, label, truth in single_label_tiles(data, split):
        path = folder / f"{name}.png"
        if not path.is_file():
            raise DatasetError(f"{path} is missing: --predictions takes segmix predict's masks/")
        prediction = read_mask_png(path)
        for reading, mask in readings(prediction, truth, label).items():
            matrices[reading].update(torch.from_numpy(mask.astype(np.uint8)),
                                     torch.from_numpy(truth))
        outline.update(class_pixels(prediction), class_pixels(truth))
    return ({reading: segmentation_metrics(matrix, "with_background", classes)
             for reading, matrix in matrices.items()}, outline)


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


def outline_table(outlines: Dict[str, OutlineErrors]) -> str:
    """One row per segmenter: :meth:`OutlineErrors.row`."""
    bands = [f"{low:g}-{high:g} px" for low, high in zip(BANDS[:-1], BANDS[1:])]
    header = ["segmenter", "false tissue", "missed tissue", *bands]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([model, *errors.row()]) + " |"
              for model, errors in outlines.items()]
    return "\n".join(lines)


def parse_prediction(text: str) -> Tuple[str, Path]:
    name, _, folder = text.partition("=")
    if not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, Path(folder)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--classes``, ``--convention`` and ``--split``: see :func:`data_section`."""
    parser.add_argument("--data", type=Path, required=True,
                        help="a CSV with image, mask, label, split")
    parser.add_argument("--classes", required=True, help="the class names, comma-separated")
    parser.add_argument("--convention", default="binary", help="data.mask.convention")
    parser.add_argument("--split", default="val", choices=("train", "val"))


def data_section(args: argparse.Namespace) -> Dict[str, object]:
    """The ``data`` config section that reads ``args.split`` of ``args.data``."""
    return {**DATA_DEFAULTS, "classes": args.classes.split(","),
            args.split: {**DATA_DEFAULTS[args.split], "path": str(args.data), "split": args.split},
            "mask": {**DATA_DEFAULTS["mask"], "convention": args.convention}}


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--predictions", type=parse_prediction, nargs="+", required=True,
                        metavar="NAME=FOLDER")
    args = parser.parse_args(argv)
    data = data_section(args)
    scored = {name: score(data, args.split, folder) for name, folder in args.predictions}
    print(f"{platform.node()}; {args.split} split, with background (%)")
    print(table({name: results for name, (results, _) in scored.items()}))
    print(f"\nthe outline ({args.split}): tissue called background and the reverse (% of pixels);"
          " error rate by distance from the true outline (% of the band's pixels; in brackets the"
          " band's share of pixels)")
    print(outline_table({name: outline for name, (_, outline) in scored.items()}))


if __name__ == "__main__":
    main()

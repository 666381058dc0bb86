"""Other rules for where the tissue is, read from a segmenter's saved softmax on single-label tiles
(one class per tile, as ``predict.one_class``), against the split's true masks.

- ``background < t``: tissue where the segmenter's background probability is below ``t``
  (``--thresholds``; 0.5 is the segmenter's own rule, the masks ``segmix predict`` writes);
- ``map weight w``: the segmenter's tissue probability blended with the localiser's foreground map
  (the maps its pseudo masks were made from), tissue where ``w (1 - p_bg) + (1 - w) map`` is above
  ``w 0.5 + (1 - w) map_threshold`` (``--map-weights``; 1 the segmenter alone, 0 the localiser
  alone at the pseudo masks' threshold, ``--map-threshold``).

Does the final model's outline leave anything to a bias of its threshold, or to the maps it was
taught by? The localiser maps any tile, labelled or not, so the blend could run at prediction.

    segmix predict --config configs/ebhi.yaml --set split=val --set segmenter_path=SEGMENTER \\
        --set predict.probabilities=true --output-dir runs/ebhi-probs
    .venv/bin/python benchmarks/tissue_rules.py --data ../shared/data/ebhi-seg/labels.csv \\
        --classes "Normal,Polyp,Low-grade IN,High-grade IN,Adenocarcinoma,Serrated adenoma" \\
        --predictions final=runs/ebhi-probs --localiser final=runs/ebhi/localiser \\
        --map-threshold 0.4
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from gap_readings import (  # a sibling script
    add_data_arguments,
    data_section,
    parse_prediction,
    single_label_tiles,
    table,
)
from pseudo_masks import ConfusionMatrix, segmentation_metrics
from segmix.artifacts import read_foreground_map, read_prediction_probabilities
from segmix.data import DatasetError
from segmix.models.fusion import one_class_mask


def tissue(probabilities: np.ndarray, foreground_map: Optional[np.ndarray],
           rule: str, value: float, map_threshold: float) -> np.ndarray:
    """The tissue (bool ``H x W``) of one rule (``background`` or ``map``, see the module)."""
    if rule == "background":
        return probabilities[0] < value
    segmenter = 1.0 - probabilities[0]
    if foreground_map.shape != segmenter.shape:
        raise DatasetError(f"a foreground map of {foreground_map.shape} against a softmax of"
                           f" {segmenter.shape}: the localiser must map the predicted tiles")
    blend = value * segmenter + (1.0 - value) * foreground_map
    return blend > value * 0.5 + (1.0 - value) * map_threshold


Rule = Tuple[str, str, float]  # (name in the table, "background" or "map", threshold or weight)


def score(data: Dict[str, object], split: str, predictions: Path, localiser: Optional[Path],
          rules: List[Rule], map_threshold: float) -> Dict[str, Dict[str, object]]:
    """The with-background metrics of each rule ``(name, kind, value)`` over ``split``."""
    classes = list(data["classes"])
    matrices = {name: ConfusionMatrix(len(classes)) for name, _, _ in rules}
    for name, _, truth_mask in single_label_tiles(data, split):
        truth = torch.from_numpy(truth_mask)
        probabilities = read_prediction_probabilities(predictions, name)
        foreground_map = None if localiser is None else read_foreground_map(localiser, split, name)
        for rule, kind, value in rules:
            mask = one_class_mask(probabilities, foreground=tissue(
                probabilities, foreground_map, kind, value, map_threshold))
            matrices[rule].update(torch.from_numpy(mask), truth)
    return {rule: segmentation_metrics(matrix, "with_background", classes)
            for rule, matrix in matrices.items()}


def floats(text: str) -> List[float]:
    return [float(value) for value in text.split(",")]


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--predictions", type=parse_prediction, nargs="+", required=True,
                        metavar="NAME=FOLDER", help="segmix predict outputs with probabilities/")
    parser.add_argument("--localiser", type=parse_prediction, nargs="*", default=[],
                        metavar="NAME=FOLDER", help="the localiser run whose maps NAME blends")
    parser.add_argument("--thresholds", type=floats, default=[0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--map-weights", type=floats, default=[0.75, 0.5, 0.25, 0.0])
    parser.add_argument("--map-threshold", type=float, default=0.4,
                        help="the threshold the pseudo masks were made at")
    args = parser.parse_args(argv)
    localisers = dict(args.localiser)
    unknown = set(localisers) - {name for name, _ in args.predictions}
    if unknown:
        parser.error(f"--localiser names {sorted(unknown)} that no --predictions has")
    data = data_section(args)
    results = {}
    for name, folder in args.predictions:
        rules = [(f"background < {t:g}", "background", t) for t in args.thresholds]
        if name in localisers:
            rules += [(f"map weight {w:g}", "map", w) for w in args.map_weights]
        results[name] = score(data, args.split, folder, localisers.get(name), rules,
                              args.map_threshold)
    print(f"{platform.node()}; {args.split} split, one class per tile, with background (%)")
    print(table(results))


if __name__ == "__main__":
    main()

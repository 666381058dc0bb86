"""The pseudo-mask stage's sweep: one masks setting chosen on a split, by its ground truth
(:func:`sweep`) or, for the threshold, without a mask (:func:`histogram_sweep`:
:func:`pseudo_masks.choose_threshold`), and the checks that say up front which can run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from pseudo_masks import (
    ConfusionMatrix,
    PseudoMaskConfig,
    ScoreHistogram,
    choose_threshold,
    segmentation_metrics,
)

from ..artifacts import CamRecord
from ..config import ConfigError
from ..data import DatasetError, count_masks, dataset_classes
from .tile_inputs import tile_inputs, tile_masks, tile_truth
from .tile_quality import measure_tile

__all__ = ["CLEAN_SPLIT", "SWEEP_CRITERIA", "SWEEP_METRICS", "histogram_sweep", "split_has_masks",
           "sweep", "sweep_criterion"]

SWEEP_METRICS = ("mIoU", "FwIoU", "foreground_iou", "mDice")
# How the sweep chooses: `masks`, the best score against the split's ground truth; `histogram`, no
# masks needed (pseudo_masks.choose_threshold: Otsu's split of the class scores where they split
# cleanly, else the largest expected mIoU); `auto`, masks where every tile of the split has one,
# else the histogram.
SWEEP_CRITERIA = ("auto", "masks", "histogram")
# From this split quality (Otsu's eta) up the histogram is cut where it splits in two: WBC-d2's axis
# maps split at 0.80-0.81 and Otsu matched the masks' choice; EBHI-Seg's split at 0.66, where Otsu
# was 4-10 mIoU points off and the expected mIoU 0.3 (docs/benchmarks.md, "Mask-free threshold
# criteria").
CLEAN_SPLIT = 0.75


def split_has_masks(data: Dict[str, Any], split: str) -> Optional[bool]:
    """Whether every tile of ``split`` has a ground-truth mask; ``None`` where its list cannot be
    read yet (a dataset a pipeline writes first, say: the stage checks again when it runs)."""
    spec = data.get(split) or {}
    if not spec.get("path") or not Path(spec["path"]).exists():
        return None
    try:
        tiles, masked = count_masks(data, split)
    except DatasetError:
        return None
    return 0 < tiles == masked


def sweep_criterion(sweep_cfg: Dict[str, Any], settings: PseudoMaskConfig,
                     has_masks: bool) -> str:
    """The criterion the sweep uses (``masks`` or ``histogram``), or a ConfigError that says why
    neither can choose."""
    criterion = sweep_cfg["criterion"]
    if criterion == "auto":
        criterion = "masks" if has_masks else "histogram"
    if criterion == "masks" and not has_masks:
        raise ConfigError(f"sweep.criterion=masks needs a ground-truth mask for every tile of the"
                          f" {sweep_cfg['split']} split, and some have none: use"
                          " sweep.criterion=auto (the score histogram chooses without masks)")
    if criterion == "histogram" and (sweep_cfg["key"] != "threshold"
                                     or settings.background != "threshold"):
        why = ("the split has no ground-truth masks" if not has_masks
               else "sweep.criterion=histogram")
        raise ConfigError(f"{why}, so the sweep chooses from the score histogram, which can choose"
                          f" masks.threshold only (with masks.background=threshold); this sweep"
                          f" is of {sweep_cfg['key']} with background {settings.background}: set"
                          " sweep.key=threshold, or give the split masks, or sweep.enabled=false")
    return criterion


def sweep(tiles: List[CamRecord], data: Dict[str, Any], base: PseudoMaskConfig, key: str,
          values: List[Any], protocol: str, metric: str,
          localiser_dir: Optional[Path] = None) -> Tuple[Any, List[Dict[str, Any]]]:
    """Score each value of ``key`` on ``tiles`` (with ground truth); return the best and the table."""
    num_classes = len(dataset_classes(data))
    matrices = {value: ConfusionMatrix(num_classes) for value in values}
    for tile in tqdm(tiles, desc=f"sweep {key}", unit="tile"):
        inputs = tile_inputs(tile, localiser_dir)
        truth = tile_truth(tile, data, inputs["labels"], num_classes)
        if truth is None:
            raise ConfigError(f"the sweep needs ground-truth masks; {tile.image} has none (set"
                              " sweep.enabled=false or sweep.split to a labelled split)")
        for value in values:
            settings = PseudoMaskConfig.from_dict({**base.to_dict(), key: value})
            mask = tile_masks(inputs, settings)
            matrices[value].update(mask, torch.from_numpy(truth))
    rows = []
    for value in values:
        scores = segmentation_metrics(matrices[value], protocol)
        rows.append({key: value, "mIoU": scores["mIoU"], "FwIoU": scores["FwIoU"],
                     "foreground_iou": scores["foreground_iou"], "mDice": scores["mDice"]})
    best = max(rows, key=lambda r: r[metric])
    return best[key], rows


def histogram_sweep(tiles: List[CamRecord], base: PseudoMaskConfig, values: List[float],
                    localiser_dir: Optional[Path] = None
                    ) -> Tuple[float, str, List[Dict[str, Any]]]:
    """Choose the threshold among ``values`` without masks, from the class scores of ``tiles``
    (inside their tissue, with the tissue prior), one histogram per class (a tile counts for its
    first label): :func:`pseudo_masks.choose_threshold`. Returns the threshold, the criterion used
    and the table."""
    histograms: Dict[int, ScoreHistogram] = {}
    for tile in tqdm(tiles, desc="score histogram", unit="tile"):
        first, histogram = measure_tile(tile_inputs(tile, localiser_dir), base)
        histograms.setdefault(first, ScoreHistogram()).merge(histogram)
    return choose_threshold(list(histograms.values()), values, CLEAN_SPLIT)

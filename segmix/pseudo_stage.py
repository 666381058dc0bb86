"""``segmix pseudo-masks``: stage 3, CAMs -> one palette PNG mask per tile.

Reads the ``index.csv`` and ``.npz`` files of ``segmix cams``; CAMs are resized to each tile's own
size. Writes ``masks/<split>/<stem>.png`` (0 background, 1..K classes, 255 ignore) with
``masks/legend.json``, optional ``overlays/<split>/<stem>.png``, ``masks.csv`` (class and ignore
fractions per tile), ``metrics.json`` for splits with ground-truth masks, and ``summary.json``
(settings used, sweep choice; marks the run finished). A re-run writes only missing masks.

The sweep (``sweep.enabled``) tries each value of one setting (e.g. ``threshold``) on a split with
ground truth (the validation split: never the data you report on) and keeps the best.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pseudo_masks import (
    PROTOCOLS,
    ConfusionMatrix,
    PseudoMaskConfig,
    cams_to_masks,
    overlay,
    read_mask_png,
    segmentation_metrics,
    write_legend,
    write_mask_png,
)

from .cams_stage import load_cam_file
from .data import (
    DATA_DEFAULTS,
    dataset_classes,
    decode_mask,
    mask_convention,
    read_mask,
    read_rgb,
    write_rgb,
)
from .io import atomic_write_text, write_csv

__all__ = ["DEFAULTS", "DONE_FILE", "run", "sweep"]

DONE_FILE = "summary.json"

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/pseudo-masks",
    "cams_dir": "runs/cams",
    "data": DATA_DEFAULTS,
    "splits": ["val"],
    "masks": PseudoMaskConfig().to_dict(),
    "sweep": {"enabled": False, "key": "threshold",
              "values": [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
              "split": "val", "protocol": "with_background", "metric": "mIoU"},
    "overlays": False,
}


class Tile:
    """One row of the CAM index with lazy access to its image, CAMs and ground truth."""

    def __init__(self, row: Dict[str, str], cams_dir: Path) -> None:
        self.split, self.image, self.name = row["split"], Path(row["image"]), Path(row["cams"]).stem
        self.mask = Path(row["mask"]) if row.get("mask") else None
        self.cam_path = cams_dir / row["cams"]

    def cams_and_labels(self, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        arrays = load_cam_file(self.cam_path)
        cams = torch.from_numpy(arrays["cams"].astype(np.float32))[None]
        if tuple(cams.shape[-2:]) != size:
            cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        return cams, torch.from_numpy(arrays["labels"].astype(np.float32))[None]

    def labels(self) -> torch.Tensor:
        """The multi-hot label ``[1, K]``, read without decompressing the CAMs."""
        with np.load(self.cam_path) as data:
            return torch.from_numpy(data["labels"].astype(np.float32))[None]

    def truth(self, data: Dict[str, Any], labels: torch.Tensor,
              num_classes: int) -> Optional[np.ndarray]:
        if self.mask is None:
            return None
        present = tuple(int(k) for k in torch.nonzero(labels[0]).flatten())
        return decode_mask(read_mask(self.mask), present, num_classes, mask_convention(data),
                           self.mask)


def read_index(cams_dir: Path) -> List[Tile]:
    index = cams_dir / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: run `segmix cams` first (cams_dir={cams_dir})")
    with open(index, newline="") as handle:
        return [Tile(row, cams_dir) for row in csv.DictReader(handle)]


def _inputs(tile: Tile) -> Tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tile's RGB array, the same as a ``[1, 3, H, W]`` tensor, its CAMs at that size, labels."""
    image = read_rgb(tile.image)
    cams, labels = tile.cams_and_labels(image.shape[:2])
    return image, torch.from_numpy(image).permute(2, 0, 1)[None], cams, labels


def _mask_of(tile: Tile, settings: PseudoMaskConfig) -> Tuple[np.ndarray, np.ndarray, torch.Tensor]:
    image, images, cams, labels = _inputs(tile)
    return image, cams_to_masks(cams, labels, settings, images=images)[0].numpy(), labels


def sweep(tiles: List[Tile], data: Dict[str, Any], base: PseudoMaskConfig, key: str,
          values: List[Any], protocol: str, metric: str) -> Tuple[Any, List[Dict[str, Any]]]:
    """Score each value of ``key`` on ``tiles`` (with ground truth); return the best and the table."""
    if not tiles:
        raise ValueError("the sweep split has no tiles")
    num_classes = len(dataset_classes(data))
    matrices = {value: ConfusionMatrix(num_classes) for value in values}
    for tile in tqdm(tiles, desc=f"sweep {key}", unit="tile"):
        _, images, cams, labels = _inputs(tile)
        truth = tile.truth(data, labels, num_classes)
        if truth is None:
            raise ValueError(f"the sweep needs ground-truth masks; {tile.image} has none")
        for value in values:
            settings = PseudoMaskConfig.from_dict({**base.to_dict(), key: value})
            mask = cams_to_masks(cams, labels, settings, images=images)[0]
            matrices[value].update(mask, torch.from_numpy(truth))
    rows = []
    for value in values:
        scores = segmentation_metrics(matrices[value], protocol)
        rows.append({key: value, "mIoU": scores["mIoU"], "FwIoU": scores["FwIoU"],
                     "foreground_iou": scores["foreground_iou"], "mDice": scores["mDice"]})
    best = max(rows, key=lambda r: r[metric])
    return best[key], rows


def run(config: Dict[str, Any], output_dir: Path, *, overwrite: bool = False,
        **_: Any) -> Dict[str, Any]:
    data = config["data"]
    classes = dataset_classes(data)
    tiles = read_index(Path(config["cams_dir"]))
    settings = PseudoMaskConfig.from_dict(dict(config["masks"]))
    summary: Dict[str, Any] = {"cams_dir": str(config["cams_dir"])}
    sweep_cfg = config["sweep"]
    if sweep_cfg["enabled"]:
        chosen, table = sweep([t for t in tiles if t.split == sweep_cfg["split"]], data, settings,
                              sweep_cfg["key"], list(sweep_cfg["values"]), sweep_cfg["protocol"],
                              sweep_cfg["metric"])
        write_csv(output_dir / "sweep.csv", table)
        settings = PseudoMaskConfig.from_dict({**settings.to_dict(), sweep_cfg["key"]: chosen})
        summary["sweep"] = {"key": sweep_cfg["key"], "chosen": chosen, "on_split": sweep_cfg["split"],
                            "by": f"{sweep_cfg['metric']} ({sweep_cfg['protocol']})", "table": table}
        print(f"sweep on {sweep_cfg['split']}: {sweep_cfg['key']} = {chosen}", flush=True)
    summary["settings"] = settings.to_dict()
    write_legend(output_dir / "masks", classes)
    rows, metrics = [], {}
    for split in config["splits"]:
        matrix = ConfusionMatrix(len(classes))
        split_tiles = [t for t in tiles if t.split == split]
        if not split_tiles:
            raise ValueError(f"no CAMs for split {split!r} in {config['cams_dir']}")
        scored = 0
        for tile in tqdm(split_tiles, desc=f"masks {split}", unit="tile"):
            path = output_dir / "masks" / split / f"{tile.name}.png"
            if path.exists() and not overwrite:
                mask, labels = read_mask_png(path), tile.labels()
                image = read_rgb(tile.image) if config["overlays"] else None
            else:
                image, mask, labels = _mask_of(tile, settings)
                write_mask_png(path, mask, len(classes))
            if config["overlays"]:
                write_rgb(output_dir / "overlays" / split / f"{tile.name}.png",
                          overlay(image, mask, len(classes)))
            truth = tile.truth(data, labels, len(classes))
            if truth is not None:
                matrix.update(torch.from_numpy(mask), torch.from_numpy(truth))
                scored += 1
            fractions = np.bincount(mask.ravel(), minlength=256) / mask.size
            rows.append({"split": split, "image": str(tile.image),
                         "mask": str(path.relative_to(output_dir)),
                         "background": fractions[0], "ignore": fractions[255],
                         **{name: fractions[i + 1] for i, name in enumerate(classes)}})
        if scored:
            metrics[split] = {p: segmentation_metrics(matrix, p, classes) for p in PROTOCOLS}
            metrics[split]["tiles_scored"] = scored
            line = ", ".join(f"{p} mIoU {metrics[split][p]['mIoU']:.4f}" for p in PROTOCOLS)
            print(f"{split}: {line}, foreground IoU"
                  f" {metrics[split]['with_background']['foreground_iou']:.4f}", flush=True)
    write_csv(output_dir / "masks.csv", rows)
    if metrics:
        atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    summary["metrics"] = {split: {p: m[p]["mIoU"] for p in PROTOCOLS} for split, m in metrics.items()}
    atomic_write_text(output_dir / DONE_FILE, json.dumps(summary, indent=2))
    return summary

"""``segmix demo``: the whole pipeline on a synthetic tissue dataset, offline, on a CPU.

Writes a small H&E-like dataset (:mod:`segmix.synthetic_tissue`: three tissue classes drawn as
textured regions, image-level labels, ground-truth masks for scoring) to ``<output_dir>/data``, then
runs ``segmix run`` on it in ``output_dir`` and prints the mIoU of the pseudo masks and of the final
model on the validation tiles beside the best constant mask. Every pipeline setting can be changed
with ``--set`` as for ``segmix run``; the ``synthetic`` section sizes the dataset. The data paths
are set by the demo.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from PIL import Image, ImageDraw

from pseudo_masks import overlay, read_mask_png

from . import pipeline
from .config import merge
from .data import Sample, read_rgb, read_split
from .io import atomic_path, atomic_write_text
from .synthetic_tissue import TISSUES, write_dataset

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "constant_mask_miou",
           "write_examples_figure"]

DONE_FILE = pipeline.DONE_FILE
RESUMABLE_CHANGES = pipeline.RESUMABLE_CHANGES

# Sized to finish in a few minutes on 2 CPU cores: 96 px tiles, the offline EfficientNet-Lite0.
DEMO_SETTINGS: Dict[str, Any] = {
    "output_dir": "runs/demo",
    "data": {"classes": list(TISSUES), "image_size": 96,
             "mask": {"convention": "index", "background_value": 0, "first_class_value": 1}},
    "augment": {"curriculum": {"patch_sizes": [48, 32, 24], "fix_ratios": [0.75, 0.6, 0.5]}},
    "train": {"epochs": 5, "batch_size": 32, "num_workers": 0},
    "cam": {"method": "gradcam", "target_layers": ["blocks.4"], "flips": ["horizontal"],
            "num_workers": 0, "batch_size": 32,
            "shuffle_tta": {"enabled": True, "patch_size": 24, "draws": 2, "fix_ratio": 0.0}},
    "masks": {"tissue_prior": True},
    "sweep": {"enabled": True, "values": [0.1, 0.2, 0.3, 0.4, 0.5]},
    "overlays": True,
    "seg_augment": {"curriculum": {"patch_sizes": [48, 32, 24], "fix_ratios": [0.75, 0.6, 0.5]}},
    "seg_train": {"epochs": 5, "batch_size": 16, "num_workers": 0},
}

DEFAULTS: Dict[str, Any] = {
    **merge(pipeline.DEFAULTS, DEMO_SETTINGS),
    "synthetic": {"train_tiles": 240, "val_tiles": 80, "size": 96, "seed": 0},
}


def constant_mask_miou(masks: list, num_classes: int) -> float:
    """mIoU (background included) of the best mask that paints every pixel one class."""
    counts = np.zeros(num_classes + 1)
    for mask in masks:
        counts += np.bincount(mask[mask != 255].ravel(), minlength=num_classes + 1)[:num_classes + 1]
    # Painting class c everywhere: IoU_c = (pixels of c) / (all pixels), every other IoU is 0.
    return float(counts.max() / counts.sum() / (num_classes + 1))


def write_examples_figure(path: Path, samples: List[Sample], output_dir: Path,
                          num_classes: int, count: int = 6, scale: int = 2) -> None:
    """A picture of ``count`` val tiles: image, ground truth, pseudo mask, final prediction."""
    columns = {"image": None, "ground truth": None,
               "pseudo mask": output_dir / "pseudo-masks" / "masks" / "val",
               "prediction": output_dir / "predictions" / "masks"}
    rows = []
    for sample in samples[:count]:
        image = read_rgb(sample.image)
        cells = [image, overlay(image, read_mask_png(sample.mask), num_classes, alpha=0.7)]
        cells += [overlay(image, read_mask_png(folder / f"{sample.image.stem}.png"), num_classes,
                          alpha=0.7) for folder in list(columns.values())[2:]]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    header = 16
    picture = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "white")
    picture.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(picture)
    width = grid.shape[1] // len(columns)
    for i, title in enumerate(columns):
        draw.text((i * width + 4, 2), title, fill="black")
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def run(config: Dict[str, Any], output_dir: Path, *, overwrite: bool = False,
        **_: Any) -> Dict[str, Any]:
    """Write the synthetic dataset (unless it is there), run the pipeline, print the comparison."""
    synthetic = config["synthetic"]
    data_dir = output_dir / "data"
    csv_path = data_dir / "labels.csv"
    if not csv_path.is_file() or overwrite:
        print(f"writing {synthetic['train_tiles']} + {synthetic['val_tiles']} synthetic tiles to"
              f" {data_dir}", flush=True)
        write_dataset(data_dir, train_tiles=int(synthetic["train_tiles"]),
                      val_tiles=int(synthetic["val_tiles"]), size=int(synthetic["size"]),
                      seed=int(synthetic["seed"]))
    settings = copy.deepcopy({k: v for k, v in config.items() if k != "synthetic"})
    for split in ("train", "val"):
        settings["data"][split].update({"path": str(csv_path), "split": split})
    summary = pipeline.run(settings, output_dir, overwrite=overwrite)

    val = read_split(settings["data"], "val", progress=False)
    constant = constant_mask_miou([read_mask_png(s.mask) for s in val], len(TISSUES))
    write_examples_figure(output_dir / "val_examples.png", val, output_dir, len(TISSUES))
    summary["references"] = {"constant_mask_val_mIoU": constant}
    atomic_write_text(output_dir / DONE_FILE, json.dumps(summary, indent=2))
    metrics = summary["metrics"]
    pseudo = metrics["pseudo_masks"].get("val", {}).get("mIoU")
    final = (metrics.get("segmenter") or {}).get("mIoU")
    lines = ["", "demo: mIoU on the validation tiles (background included)",
             f"  best constant mask             {constant:.3f}"]
    if pseudo is not None:
        lines.append(f"  pseudo masks (tile label known) {pseudo:.3f}")
    if final is not None:
        lines.append(f"  final segmentation model       {final:.3f}")
    lines.append(f"outputs in {output_dir}; a picture of val tiles: {output_dir / 'val_examples.png'}")
    print("\n".join(lines), flush=True)
    return summary

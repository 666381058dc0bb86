"""``segmix demo``: the whole pipeline on a synthetic tissue dataset, offline, on a CPU.

Writes a small H&E-like dataset (:mod:`segmix.data.synthetic`: three tissue classes drawn as
textured regions, image-level labels, ground-truth masks for scoring) to ``<output_dir>/data``, then
runs ``segmix run`` on it in ``output_dir`` and prints the mIoU of the pseudo masks and of the final
model on the validation tiles beside the best constant mask. Every pipeline setting can be changed
with ``--set`` as for ``segmix run``; the ``synthetic`` section sizes the dataset. The data paths
are set by the demo.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from PIL import Image, ImageDraw

from ..artifacts import (
    CONFIG_FILE,
    LABELS_CSV,
    SUMMARY_FILE,
    RunLayout,
    prediction_mask_path,
    pseudo_mask_path,
)
from ..config import check_number, merge, save_config
from ..data import Sample, overlay, read_mask_png, read_rgb, read_split
from ..data.synthetic import TISSUES, write_dataset
from ..io import atomic_path, write_json
from ..runtime import is_main_process
from . import pipeline

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "constant_mask_miou",
           "validate", "write_examples_figure"]

# The demo is `segmix run`'s pipeline on data it writes first.
DONE_FILE = SUMMARY_FILE
# The saved config.yaml names the dataset the demo wrote (so `segmix run --config` can re-run it);
# a new `segmix demo` call, whose config leaves the paths to the demo, continues that run.
DATA_PATH_KEYS = {f"data.{split}.{key}" for split in ("train", "val") for key in ("path", "split")}
RESUMABLE_CHANGES = pipeline.pipeline_resumable_changes() | DATA_PATH_KEYS

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
    # The CAMs, not the default feature axis: the synthetic tiles hold up to three tissues each, and
    # one foreground-against-background axis fits them less well (val pseudo masks 0.674 with the
    # axis against 0.731 with the CAMs alone, seed 0, 2026-12-02).
    "localiser": {"method": "none"},
    "masks": {"tissue_prior": True},
    "sweep": {"enabled": True, "values": [0.1, 0.2, 0.3, 0.4, 0.5]},
    "overlays": True,
    "seg_augment": {"curriculum": {"patch_sizes": [48, 32, 24], "fix_ratios": [0.75, 0.6, 0.5]}},
    "seg_train": {"epochs": 5, "batch_size": 16, "num_workers": 0},
}

DEFAULTS: Dict[str, Any] = {
    **merge(pipeline.pipeline_defaults(), DEMO_SETTINGS),
    "synthetic": {"train_tiles": 240, "val_tiles": 80, "size": 96, "seed": 0},
}


def _pipeline_settings(config: Dict[str, Any], data_dir: Path) -> Dict[str, Any]:
    """The ``segmix run`` config: the demo's, with the data paths of the dataset it writes."""
    settings = copy.deepcopy({k: v for k, v in config.items() if k != "synthetic"})
    for split in ("train", "val"):
        settings["data"][split].update({"path": str(data_dir / LABELS_CSV), "split": split})
    return settings


def validate(config: Dict[str, Any]) -> None:
    """Check the dataset's size and every stage's settings (see :mod:`segmix.stages`)."""
    synthetic = config["synthetic"]
    for key in ("train_tiles", "val_tiles", "size"):
        check_number(f"synthetic.{key}", synthetic[key], integer=True)
    pipeline.validate_stages(_pipeline_settings(config, Path(config["output_dir"]) / "data"))


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
    layout = RunLayout(output_dir)
    titles = ("image", "ground truth", "pseudo mask", "prediction")
    rows = []
    for sample in samples[:count]:
        image, name = read_rgb(sample.image), sample.image.stem
        masks = (read_mask_png(sample.mask),
                 read_mask_png(pseudo_mask_path(layout.pseudo_masks_dir, "val", name)),
                 read_mask_png(prediction_mask_path(layout.predictions_dir, name)))
        cells = [image] + [overlay(image, mask, num_classes, alpha=0.7) for mask in masks]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    header = 16
    picture = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "white")
    picture.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(picture)
    width = grid.shape[1] // len(titles)
    for i, title in enumerate(titles):
        draw.text((i * width + 4, 2), title, fill="black")
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Write the synthetic dataset (unless it is there), run the pipeline, print the comparison."""
    validate(config)
    synthetic = config["synthetic"]
    data_dir = output_dir / "data"
    csv_path = data_dir / LABELS_CSV
    if not csv_path.is_file() or overwrite:
        print(f"writing {synthetic['train_tiles']} + {synthetic['val_tiles']} synthetic tiles to"
              f" {data_dir}", flush=True)
        write_dataset(data_dir, csv_name=LABELS_CSV, train_tiles=int(synthetic["train_tiles"]),
                      val_tiles=int(synthetic["val_tiles"]), size=int(synthetic["size"]),
                      seed=int(synthetic["seed"]))
    settings = _pipeline_settings(config, data_dir)
    if is_main_process():  # config.yaml with the dataset's paths: re-runnable by `segmix run`
        save_config({**settings, "synthetic": config["synthetic"]}, output_dir / CONFIG_FILE)
    summary = pipeline.run_pipeline(settings, output_dir, overwrite=overwrite)

    val = read_split(settings["data"], "val", progress=False)
    constant = constant_mask_miou([read_mask_png(s.mask) for s in val], len(TISSUES))
    write_examples_figure(output_dir / "val_examples.png", val, output_dir, len(TISSUES))
    summary["references"] = {"constant_mask_val_mIoU": constant}
    write_json(output_dir / DONE_FILE, summary)
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

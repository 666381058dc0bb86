"""``segmix cams``: stage 2, class activation maps of a trained classifier for every tile.

For each split: ``<output_dir>/<split>/<tile stem>.npz`` holding ``cams`` (float16 ``[K, h, w]`` at
the classifier's input size, raw: not normalised), ``labels`` (multi-hot image-level label) and
``probabilities`` (the classifier's sigmoid outputs, softmax for a ``ce``-trained one).
``index.csv`` lists them and marks the run finished. A re-run computes only the missing files
(``--overwrite`` recomputes all).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cam import FINAL_FEATURES, FUSIONS, METHODS, ShuffleTTA, cams_with_tta, create_cam, layer_grids
from cam.tta import FLIPS

from ..artifacts import (
    CAM_INDEX_FILE,
    cam_file_path,
    cam_index_row,
    write_cam_file,
    write_cam_index,
)
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    TileDataset,
    model_transform,
    dataset_classes,
    image_size_of,
    read_split,
    unique_names,
    validate_data,
)
from ..models.factory import class_probabilities, load_classifier
from ..runtime import check_device, setup_runtime
from ..sharding import check_shard, current_shard, finish_share, join
from ..shuffle import patch_grid

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "tta_settings", "validate"]

DONE_FILE = CAM_INDEX_FILE
RESUMABLE_CHANGES = {"cam.batch_size", "cam.device", "cam.num_workers"}
MIN_CELLS = 8  # a CAM with fewer cells across the tile cannot outline an object

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/cams",
    "seed": 0,  # the run's seed: cam.seed follows it unless set
    "classifier": "runs/classifier/classifier.pt",
    "data": DATA_DEFAULTS,
    "splits": ["val"],
    "shard": None,  # i/n or slurm: this process's share of the tiles (docs/slides.md)
    "cam": {
        "method": "gradcam",          # cam | gradcam | gradcam++ | layercam
        "target_layers": None,        # null: the final feature map; or module names to fuse
        "fuse": "mean",
        "flips": [],                  # horizontal, vertical
        "scales": [1.0],
        "shuffle_tta": {"enabled": False, "patch_size": 32, "fix_ratio": 0.0, "draws": 4,
                        "mode": "batch", "group_size": None},
        "batch_size": 16,
        "num_workers": 2,
        "device": "auto",
        "seed": None,                 # shuffle TTA draws; null: the run's `seed`
    },
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`); the target layers are
    checked against the classifier when it is loaded."""
    check_shard(config["shard"])
    splits = config["splits"]
    if not splits or any(split not in ("train", "val") for split in splits):
        raise ConfigError(f"splits must list train and/or val, got {splits!r}")
    validate_data(config["data"], required=splits)
    check_device(config["cam"]["device"], "cam.device")
    cam_cfg = config["cam"]
    for key, valid in (("method", METHODS), ("fuse", FUSIONS)):
        if cam_cfg[key] not in valid:
            raise ConfigError(f"cam.{key} must be one of {', '.join(valid)}, got {cam_cfg[key]!r}")
    unknown = [flip for flip in cam_cfg["flips"] if flip not in FLIPS]
    if unknown:
        raise ConfigError(f"cam.flips: unknown {unknown}; valid: {', '.join(FLIPS)}")
    scales = cam_cfg["scales"]
    if not scales or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                             for v in scales):
        raise ConfigError(f"cam.scales must be a non-empty list of positive numbers, got {scales!r}")
    check_number("cam.batch_size", cam_cfg["batch_size"], integer=True)
    check_number("cam.seed", cam_cfg["seed"], integer=True, positive=False)
    check_number("cam.shuffle_tta.draws", cam_cfg["shuffle_tta"]["draws"], integer=True)
    tta = tta_settings(config)["shuffle"]
    if tta is not None:
        try:
            patch_grid(*image_size_of(config["data"]["image_size"]), tta.patch_size)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"cam.shuffle_tta.patch_size: {error}") from error


def check_resolution(model, target_layers, image_size) -> str:
    """The grid the CAM layers give on ``image_size`` tiles, as a line for the log; warns, naming
    the grid and layers with at least :data:`MIN_CELLS` cells across, when it is coarser."""
    grids = layer_grids(model, image_size)
    chosen = list(target_layers) if target_layers else [FINAL_FEATURES]
    cells = {name: grids[name] for name in chosen if name in grids}
    coarse = {name: grid for name, grid in cells.items() if min(grid) < MIN_CELLS}
    if coarse:
        finer = [name for name, grid in grids.items()
                 if min(grid) >= MIN_CELLS and name != FINAL_FEATURES and "." in name][-3:]
        shown = ", ".join(f"{n}: {grids[n][0]}x{grids[n][1]}" for n in finer)
        warnings.warn(
            f"cam: {', '.join(f'{n} gives {h}x{w} cells' for n, (h, w) in coarse.items())} on"
            f" {image_size[0]}x{image_size[1]} px tiles: too coarse to outline an object (fewer"
            f" than {MIN_CELLS} across). Finer layers of this model: {shown or 'none'}; e.g."
            f" --set \"cam.target_layers=[{finer[-1] if finer else 'LAYER'}]\", larger tiles"
            " (data.image_size) or cam.scales above 1.", stacklevel=2)
    return ", ".join(f"{n} {h}x{w}" for n, (h, w) in cells.items())


def tta_settings(config: Dict[str, Any]):
    """The TTA arguments of :func:`cam.cams_with_tta` that a ``cam`` config section describes."""
    cam_cfg = config["cam"]
    shuffle_cfg = cam_cfg["shuffle_tta"]
    shuffle = None
    if shuffle_cfg["enabled"]:
        shuffle = ShuffleTTA(patch_size=shuffle_cfg["patch_size"], fix_ratio=shuffle_cfg["fix_ratio"],
                             draws=int(shuffle_cfg["draws"]), mode=shuffle_cfg["mode"],
                             group_size=shuffle_cfg["group_size"])
    return {"flips": list(cam_cfg["flips"]), "scales": list(cam_cfg["scales"]), "shuffle": shuffle}


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> List[dict]:
    """Write the CAMs of this process's share (:mod:`segmix.sharding`) of the tiles of
    ``config['splits']``; returns the index rows, written once every share is done."""
    validate(config)
    shard = current_shard(config["shard"])
    join(shard)  # before the model joins the process group with its own backend
    start = time.perf_counter()
    cam_cfg, data = config["cam"], config["data"]
    runtime = setup_runtime(cam_cfg["device"])
    classes = dataset_classes(data)
    model, info = load_classifier(Path(config["classifier"]), map_location="cpu", classes=classes)
    model.to(runtime.device)
    image_size = image_size_of(info["image_size"])
    try:
        cam = create_cam(cam_cfg["method"], model, cam_cfg["target_layers"], fuse=cam_cfg["fuse"])
    except ValueError as error:
        raise ConfigError(f"cam.target_layers: {error}") from error
    print(f"CAM grid: {check_resolution(model, cam_cfg['target_layers'], image_size)} on"
          f" {image_size[0]}x{image_size[1]} px tiles", flush=True)
    tta = tta_settings(config)
    seed, batch_size = int(cam_cfg["seed"]), int(cam_cfg["batch_size"])
    splits = {split: read_split(data, split) for split in config["splits"]}
    names_of = {split: unique_names(samples) for split, samples in splits.items()}
    offsets = dict(zip(splits, np.cumsum([0] + [len(s) for s in splits.values()]).tolist()))
    shared, computed, first_batch = 0, [], 0
    for split, samples in splits.items():
        names = names_of[split]
        dataset = TileDataset(samples, len(classes), model_transform(info))
        # Shuffled batches: shuffle TTA then mixes tiles of different classes, as in training.
        # The processes share whole batches of one seeded order (segmix.sharding).
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
        batches = [(number, [order[p] for p in batch])
                   for number, batch in shard.take_batches(len(samples), batch_size)]
        jobs = [(number, [i for i in batch
                          if overwrite or not cam_file_path(output_dir, split, names[i]).exists()])
                for number, batch in batches]
        jobs = [(number, batch) for number, batch in jobs if batch]
        mine = sum(len(batch) for _, batch in batches)
        shared += mine
        print(f"{split}: {len(samples)} tiles, {mine} in this share,"
              f" {mine - sum(len(batch) for _, batch in jobs)} already done", flush=True)
        loader = DataLoader(dataset, batch_sampler=[batch for _, batch in jobs],
                            num_workers=int(cam_cfg["num_workers"]))
        for (number, _), batch in zip(jobs, tqdm(loader, desc=f"CAMs {split}", unit="batch")):
            # each batch draws its shuffle TTA from its own seed: the same in any share
            generator = torch.Generator().manual_seed(seed * 1_000_003 + first_batch + number)
            images = batch["image"].to(runtime.device)
            maps = cams_with_tta(cam, images, generator=generator, **tta)
            with torch.no_grad():
                logits = model(images)
                probabilities = class_probabilities(logits, info).cpu().numpy()
            for j, index in enumerate(batch["index"].tolist()):
                write_cam_file(cam_file_path(output_dir, split, names[index]),
                               maps[j].cpu().numpy(), batch["target"][j].numpy(), probabilities[j])
        computed += [offsets[split] + i for _, batch in jobs for i in batch]
        first_batch += -(-len(samples) // batch_size)
    report = finish_share(shard, output_dir, items=shared, computed=sorted(computed),
                          skipped={}, seconds=time.perf_counter() - start)
    if report is None:
        return []
    rows = [cam_index_row(split, s, name, classes) for split, samples in splits.items()
            for s, name in zip(samples, names_of[split])]
    write_cam_index(output_dir, rows)
    print(f"wrote {len(rows)} CAM files and {output_dir / DONE_FILE}")
    return rows

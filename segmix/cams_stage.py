"""``segmix cams``: stage 2, class activation maps of a trained classifier for every tile.

For each split: ``<output_dir>/<split>/<tile stem>.npz`` holding ``cams`` (float16 ``[K, h, w]`` at
the classifier's input size, raw: not normalised), ``labels`` (multi-hot image-level label) and
``probabilities`` (the classifier's sigmoid outputs, softmax for a ``ce``-trained one).
``index.csv`` lists them and marks the run finished. A re-run computes only the missing files
(``--overwrite`` recomputes all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from cam import ShuffleTTA, cams_with_tta, create_cam

from .data import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    dataset_classes,
    image_size_of,
    read_split,
    unique_names,
)
from .io import atomic_write_npz, write_csv
from .models import load_classifier
from .runtime import setup_runtime

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "load_cam_file", "tta_settings"]

DONE_FILE = "index.csv"
RESUMABLE_CHANGES = {"cam.batch_size", "cam.device", "cam.num_workers"}

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/cams",
    "classifier": "runs/classifier/classifier.pt",
    "data": DATA_DEFAULTS,
    "splits": ["val"],
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
        "seed": 0,
    },
}


def load_cam_file(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of one ``.npz`` written by this stage."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


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


def run(config: Dict[str, Any], output_dir: Path, *, overwrite: bool = False, **_: Any) -> List[dict]:
    """Write the CAMs of every tile of ``config['splits']``; returns the index rows."""
    cam_cfg, data = config["cam"], config["data"]
    runtime = setup_runtime(cam_cfg["device"])
    model, info = load_classifier(Path(config["classifier"]), map_location="cpu")
    classes = dataset_classes(data)
    if list(info["classes"]) != classes:
        raise ValueError(f"the classifier {config['classifier']} was trained on classes"
                         f" {info['classes']}, data.classes is {classes}")
    model.to(runtime.device)
    image_size = image_size_of(info["image_size"])
    cam = create_cam(cam_cfg["method"], model, cam_cfg["target_layers"], fuse=cam_cfg["fuse"])
    tta = tta_settings(config)
    generator = torch.Generator().manual_seed(int(cam_cfg["seed"]))
    rows: List[dict] = []
    for split in config["splits"]:
        samples = read_split(data, split)
        names = unique_names(samples)
        folder = output_dir / split
        dataset = TileDataset(samples, len(classes),
                              build_transform([], image_size, info["mean"], info["std"]))
        todo = [i for i, name in enumerate(names) if overwrite or not (folder / f"{name}.npz").exists()]
        print(f"{split}: {len(samples)} tiles, {len(samples) - len(todo)} already done", flush=True)
        # Shuffled batches: shuffle TTA then mixes tiles of different classes, as in training.
        loader = DataLoader(Subset(dataset, todo), batch_size=int(cam_cfg["batch_size"]), shuffle=True,
                            generator=torch.Generator().manual_seed(int(cam_cfg["seed"])),
                            num_workers=int(cam_cfg["num_workers"]))
        for batch in tqdm(loader, desc=f"CAMs {split}", unit="batch"):
            images = batch["image"].to(runtime.device)
            maps = cams_with_tta(cam, images, generator=generator, **tta)
            with torch.no_grad():
                logits = model(images)
                probabilities = (torch.softmax(logits, dim=1) if info.get("loss") == "ce"
                                 else torch.sigmoid(logits)).cpu().numpy()
            for j, index in enumerate(batch["index"].tolist()):
                atomic_write_npz(folder / f"{names[index]}.npz",
                                 cams=maps[j].cpu().numpy().astype(np.float16),
                                 labels=batch["target"][j].numpy().astype(np.uint8),
                                 probabilities=probabilities[j].astype(np.float32))
        rows += [{"split": split, "image": str(s.image), "mask": str(s.mask or ""),
                  "cams": f"{split}/{name}.npz", "labels": ";".join(classes[k] for k in s.labels)}
                 for s, name in zip(samples, names)]
    write_csv(output_dir / DONE_FILE, rows)
    print(f"wrote {len(rows)} CAM files and {output_dir / DONE_FILE}")
    return rows

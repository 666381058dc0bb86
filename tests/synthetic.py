"""Tiny synthetic tile datasets written by the tests themselves."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(200, 60, 60), (60, 160, 60), (60, 60, 200)]


def write_tile(path: Path, label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured tile with a blob of its class colour; returns the blob mask."""
    image = rng.integers(200, 255, (size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 3) ** 2
    noise = rng.integers(-20, 20, (size, size, 3))
    image[mask] = np.clip(np.array(COLOURS[label]) + noise[mask], 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return mask


def write_csv_dataset(root: Path, per_class: int = 4, size: int = 32, classes=("A", "B", "C"),
                      seed: int = 0) -> Path:
    """``root/labels.csv`` with train and val rows, JPEG-free PNG tiles and binary masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines = ["image,mask,label,split"]
    for label, name in enumerate(classes):
        for i in range(per_class):
            stem = f"{name}_{i}"
            mask = write_tile(root / "images" / f"{stem}.png", label, size, rng)
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
            split = "val" if i % 4 == 3 else "train"
            lines.append(f"images/{stem}.png,masks/{stem}.png,{name},{split}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def train_cls_args(csv_path: Path, out: Path, *settings: str) -> list:
    """``segmix train-cls`` arguments for a tiny classifier (classes A, B, C, 32 px, no weights,
    no workers) on a synthetic CSV's train and val rows, then ``settings`` (``key=value``)."""
    base = [f"data.train.path={csv_path}", f"data.val.path={csv_path}", "data.classes=[A, B, C]",
            "data.image_size=32", "model.name=test_efficientnet", "model.weights=null",
            "train.num_workers=0", *settings]
    return ["train-cls", "--output-dir", str(out)] + [a for s in base for a in ("--set", s)]


def difficulty_args(csv_path: Path, out: Path, *settings: str) -> list:
    """``train_cls_args`` for the difficulty memory on the ``planted`` tiles (tests/conftest.py):
    8 quick epochs without augmentation, a window of 2 (by epoch 8 the planted tile's label
    holds well under the noisy line in every install tried: mean probability 0.01-0.1 against
    0.3; at 6 epochs it came within 0.06 of it)."""
    return train_cls_args(csv_path, out, "train.epochs=8", "train.batch_size=8", "train.lr=0.003",
                          "train.loss=ce", "augment.name=none", "augmentations.train=[]",
                          "train.difficulty.enabled=true", "train.difficulty.window=2",
                          "train.difficulty.noisy_probability=0.3", *settings)


def read_rows(path: Path) -> list:
    """The rows of a CSV file as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))

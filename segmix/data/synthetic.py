"""A synthetic H&E-like tile dataset with image-level labels and ground-truth masks (for the demo).

Each tile holds one or two tissue classes drawn as textured regions over a near-white background:

* ``tumour``: purple, crowded large dark nuclei;
* ``stroma``: pink, wavy fibres with a few thin elongated nuclei;
* ``lymphocytes``: pale pink, dense small round dark-blue nuclei.

Regions come from smooth random fields, so their borders are irregular; the classes share a
palette and differ mostly by texture, as in real slides; every tissue is darker than the
tissue prior's white level (grey 200), the background lighter. The tile's label lists the classes
present; its mask (0 background, 1..3 the classes above) is written for scoring only.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image
from skimage.draw import disk, ellipse
from skimage.filters import gaussian

from ..io import atomic_write_text

__all__ = ["TISSUES", "draw_tile", "write_dataset"]

TISSUES = ("tumour", "stroma", "lymphocytes")
BACKGROUND_RGB = (238, 236, 240)


def _smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    field = gaussian(rng.standard_normal((size, size)), sigma=size * scale)
    return (field - field.mean()) / (field.std() + 1e-8)


def _nuclei(canvas: np.ndarray, rng: np.random.Generator, count: int, radius: Tuple[float, float],
            color: Sequence[int], elongation: float = 1.0) -> None:
    size = canvas.shape[0]
    for _ in range(count):
        r = rng.uniform(*radius)
        centre = rng.uniform(0, size, 2)
        if elongation == 1.0:
            rr, cc = disk(centre, r, shape=canvas.shape[:2])
        else:
            rr, cc = ellipse(centre[0], centre[1], r, r * elongation, shape=canvas.shape[:2],
                             rotation=rng.uniform(0, np.pi))
        shade = rng.integers(-15, 16, 3)
        canvas[rr, cc] = np.clip(np.array(color) + shade, 0, 255)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An ``size x size x 3`` float texture of one tissue class."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    area = (size / 96) ** 2
    if kind == "tumour":
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = (196, 140, 190)
        _nuclei(canvas, rng, int(55 * area), (3.0, 4.5), (92, 45, 120))
    elif kind == "stroma":
        angle = rng.uniform(0, np.pi)
        warp = 6 * _smooth_field(rng, size, 0.15)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy + warp) * rng.uniform(0.7, 1.0)
        fibres = 0.5 + 0.5 * np.sin(phase)
        canvas = np.stack([228 - 25 * fibres, 148 - 45 * fibres, 188 - 30 * fibres], -1)
        _nuclei(canvas, rng, int(8 * area), (1.2, 1.8), (110, 50, 120), elongation=3.0)
    elif kind == "lymphocytes":
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = (212, 160, 200)
        _nuclei(canvas, rng, int(160 * area), (1.3, 2.0), (55, 40, 125))
    else:
        raise ValueError(f"unknown tissue {kind!r}; valid: {', '.join(TISSUES)}")
    return canvas


def draw_tile(rng: np.random.Generator, size: int, classes: Sequence[int],
              background: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 tile with the given classes (indices into :data:`TISSUES`) and its mask
    (0 background, ``k + 1`` for class ``k``). Every class covers at least 8% of the tile."""
    for _ in range(100):
        fields = [_smooth_field(rng, size, 0.12) for _ in classes]
        fields.append(_smooth_field(rng, size, 0.12) + (2 * background - 1.3))
        owner = np.argmax(np.stack(fields), axis=0)
        shares = np.bincount(owner.ravel(), minlength=len(fields)) / owner.size
        if (shares[:-1] >= 0.08).all():
            break
    else:
        raise RuntimeError("could not draw a tile in which every class is visible")
    image = np.empty((size, size, 3), np.float32)
    image[:] = BACKGROUND_RGB
    mask = np.zeros((size, size), np.uint8)
    for slot, k in enumerate(classes):
        region = owner == slot
        image[region] = _texture(TISSUES[k], size, rng)[region]
        mask[region] = k + 1
    image = gaussian(image, sigma=0.6, channel_axis=-1, preserve_range=True)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def write_dataset(root: Path, *, csv_name: str, train_tiles: int = 240, val_tiles: int = 80,
                  size: int = 96, seed: int = 0) -> Path:
    """Write ``root/images``, ``root/masks`` and ``root/<csv_name>`` (columns image, mask, label,
    split); half of the tiles hold one class, half two. Returns the CSV path."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines: List[str] = ["image,mask,label,split"]
    for index in range(train_tiles + val_tiles):
        count = 1 if index % 2 == 0 else 2
        classes = sorted(rng.choice(len(TISSUES), size=count, replace=False).tolist())
        image, mask = draw_tile(rng, size, classes)
        stem = f"tile_{index:04d}"
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        split = "train" if index < train_tiles else "val"
        label = ";".join(TISSUES[k] for k in classes)
        lines.append(f"images/{stem}.png,masks/{stem}.png,{label},{split}")
    csv_path = root / csv_name
    atomic_write_text(csv_path, "\n".join(lines) + "\n")  # last: marks the dataset complete
    return csv_path

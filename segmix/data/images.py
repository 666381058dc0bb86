"""Reading tiles and masks, with errors that name the file.

Masks are decoded into the segmentation label space: 0 = background, ``1..K`` = the configured
classes, 255 = ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pseudo_masks.generate import IGNORE_INDEX

from ..io import atomic_path

__all__ = ["IGNORE_INDEX", "MaskConvention", "read_rgb", "read_mask", "decode_mask", "check_image",
           "write_rgb"]

MASK_CONVENTIONS = ("binary", "index")


class ImageReadError(OSError):
    """An image or mask file that cannot be decoded."""


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decodes fully: a truncated file raises here, not later
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path}: not a readable image") from error
    except OSError as error:
        raise ImageReadError(f"{path}: unreadable or truncated image ({error})") from error
    return image


def check_image(path: Path) -> None:
    """Decode ``path`` fully; raise :class:`ImageReadError` naming it if that fails."""
    _open(path).close()


def read_rgb(path: Path) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array."""
    with _open(path) as image:
        return np.array(image.convert("RGB"))


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an ``H x W x 3`` uint8 RGB array as PNG (or by the suffix), atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format=Image.registered_extensions()
                                                        .get(Path(path).suffix.lower(), "PNG"))


def read_mask(path: Path) -> np.ndarray:
    """An ``H x W`` integer array of raw mask values (palette indices for palette PNGs)."""
    with _open(path) as image:
        if image.mode in ("P", "L", "1", "I", "I;16"):
            return np.asarray(image).astype(np.int64)
        if image.mode in ("RGB", "RGBA", "LA"):
            array = np.asarray(image)
            channels = array[..., :3] if array.ndim == 3 else array
            if array.ndim == 3 and not (channels == channels[..., :1]).all():
                raise ImageReadError(
                    f"{path}: colour mask (mode {image.mode}); save masks as palette or greyscale"
                    " PNGs whose pixel values are the class values"
                )
            return (channels[..., 0] if array.ndim == 3 else channels).astype(np.int64)
        raise ImageReadError(f"{path}: unsupported mask mode {image.mode}")


@dataclass(frozen=True)
class MaskConvention:
    """How pixel values of a mask file map to the segmentation label space.

    * ``binary``: nonzero = the tile's (single) class, zero = background (EBHI-Seg);
    * ``index``: value ``first_class_value + i`` = class ``i`` (0-based), ``background_value`` =
      background, ``ignore_value`` = ignore (LUAD-HistoSeg / BCSS-WSSS: classes 0..3, background 4).
    """

    convention: str = "binary"
    background_value: int = 0
    first_class_value: int = 1
    ignore_value: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.convention not in MASK_CONVENTIONS:
            raise ValueError(
                f"unknown mask convention {self.convention!r}; valid: {', '.join(MASK_CONVENTIONS)}"
            )


def decode_mask(raw: np.ndarray, labels: Sequence[int], num_classes: int,
                convention: MaskConvention, path: Path) -> np.ndarray:
    """Raw mask values -> uint8 label map (0 background, 1..K classes, 255 ignore)."""
    if convention.convention == "binary":
        if len(labels) != 1:
            raise ValueError(
                f"{path}: a binary mask needs exactly one image-level class, the tile has"
                f" {len(labels)}; use the 'index' convention for multi-class masks"
            )
        return np.where(raw != 0, labels[0] + 1, 0).astype(np.uint8)
    out = np.full(raw.shape, IGNORE_INDEX, np.uint8)
    out[raw == convention.background_value] = 0
    class_index = raw - convention.first_class_value
    is_class = (class_index >= 0) & (class_index < num_classes) & (raw != convention.background_value)
    out[is_class] = (class_index[is_class] + 1).astype(np.uint8)
    known = is_class | (raw == convention.background_value) | (raw == convention.ignore_value)
    if not known.all():
        bad = np.unique(raw[~known])[:10].tolist()
        raise ValueError(
            f"{path}: mask values {bad} are neither background ({convention.background_value}),"
            f" ignore ({convention.ignore_value}) nor a class value"
            f" ({convention.first_class_value}..{convention.first_class_value + num_classes - 1})"
        )
    return out

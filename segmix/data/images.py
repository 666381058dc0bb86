"""Reading and writing tiles and masks, with errors that name the file.

Masks are decoded into the label space of :mod:`segmix.labels` (0 = background, ``1..K`` = the
configured classes, 255 = ignore).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..errors import SegmixError
from ..io import atomic_path
from ..labels import MaskConvention, decode_mask
from .samples import DatasetError

__all__ = ["ImageReadError", "MAX_PIXELS", "read_rgb", "read_mask", "read_label_mask",
           "check_image", "write_rgb", "resized", "captioned", "picture_grid"]

# Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS); callers may allow more.
MAX_PIXELS = 2 * 89_478_485


class ImageReadError(SegmixError, OSError):
    """An image or mask file that cannot be decoded."""


def _open(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    try:
        with warnings.catch_warnings():  # the size is checked here, against max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        if image.width * image.height > max_pixels:
            image.close()
            raise ImageReadError(
                f"{path}: {image.width} x {image.height} px ({image.width * image.height / 1e6:.0f}"
                f" Mpx) is above the limit of {max_pixels / 1e6:.0f} Mpx; decoding it needs about"
                f" {3 * image.width * image.height / 2**30:.1f} GiB. Raise the limit if the machine"
                " has the memory (predict.max_megapixels), or cut the image into tiles first")
        image.load()  # decodes fully: a truncated file raises here, not later
    except ImageReadError:
        raise
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


def read_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array; images above ``max_pixels`` are refused by name."""
    with _open(path, max_pixels) as image:
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


def read_label_mask(path: Path, labels: Sequence[int], num_classes: int,
                    convention: MaskConvention, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """A mask file decoded into the label space; values the convention does not know, or a size
    other than ``shape`` (the image's ``H, W``), are a :class:`DatasetError` naming the file."""
    try:
        mask = decode_mask(read_mask(path), labels, num_classes, convention, path)
    except ValueError as error:
        raise DatasetError(str(error)) from error
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise DatasetError(f"{path}: mask size {mask.shape} differs from its image's size"
                           f" {tuple(shape[:2])}")
    return mask


def resized(array: np.ndarray, size: Tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``array`` (``H x W [x C]``) resized to ``size`` = (height, width): area averaging to shrink,
    bilinear to enlarge, nearest neighbour for label maps."""
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if size[0] < array.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


CAPTION_PX = 14  # the white strip above a captioned picture


def captioned(picture: np.ndarray, text: str) -> np.ndarray:
    """An RGB ``picture`` under a white strip with ``text``."""
    strip = Image.new("RGB", (picture.shape[1], CAPTION_PX), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.concatenate([np.asarray(strip), picture], axis=0)


def picture_grid(cells: Sequence[np.ndarray], columns: int = 1) -> np.ndarray:
    """RGB ``cells`` in rows of ``columns``, each padded (black) to the largest cell's size."""
    if not cells:
        raise ValueError("picture_grid needs at least one picture")
    height, width = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    padded = [np.pad(c, ((0, height - c.shape[0]), (0, width - c.shape[1]), (0, 0))) for c in cells]
    padded += [np.zeros_like(padded[0])] * (-len(padded) % columns)
    rows = [np.concatenate(padded[i:i + columns], axis=1) for i in range(0, len(padded), columns)]
    return np.concatenate(rows, axis=0)

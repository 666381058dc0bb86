"""Class-index masks of whole slides as tiled, pyramidal TIFFs that QuPath and OpenSlide open.

The mask is written band by band (one row of tiles at a time), so a slide of any size needs the
memory of one band: level 0 goes straight into the file; each reduced level (2x, 4x, ... until it
fits in one tile) is kept in a raw temporary file beside the output as its bands arrive, then
appended. Levels are successive TIFF pages (later ones marked reduced-resolution); pixels are
class indices (0 background) with a colour map, so viewers show the palette. The description holds
``{"segmix": {...}}``: classes, colours, the mask's mpp and its scale to the slide's level 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np

from ..data import palette_colors
from ..io import atomic_path, temporary_dir

__all__ = ["write_mask_pyramid", "read_mask_pyramid", "TILE"]

TILE = 512


def _colormap(num_classes: int) -> np.ndarray:
    colors = palette_colors(num_classes) + [(0, 0, 0)] * (256 - num_classes - 1)
    return (np.array(colors, dtype=np.uint16).T * 257)  # 3 x 256, 16 bit as TIFF wants


def _tiles(bands: Iterable[np.ndarray], width: int, tile: int) -> Iterator[np.ndarray]:
    """Full ``tile x tile`` tiles of each band, left to right (edges padded with 0)."""
    for band in bands:
        padded = np.zeros((tile, -(-width // tile) * tile), dtype=np.uint8)
        padded[:band.shape[0], :width] = band
        for x in range(0, padded.shape[1], tile):
            yield padded[:, x:x + tile]


def _level_sizes(width: int, height: int, tile: int) -> List[Tuple[int, int]]:
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((max(1, -(-w // 2)), max(1, -(-h // 2))))
    return sizes


def write_mask_pyramid(path: Path, bands: Iterable[np.ndarray], width: int, height: int, *,
                       classes: Sequence[str], mpp: float, extra: Dict[str, Any],
                       tile: int = TILE) -> Path:
    """Write the level-0 mask ``height x width`` given as ``bands`` (uint8 arrays of ``tile`` rows,
    the last one shorter, top to bottom) as a pyramidal TIFF at ``path`` (atomically). ``mpp``
    sets the resolution tags; ``extra`` joins the description (e.g. the scale to the slide)."""
    import tifffile

    if tile % 16 or tile & (tile - 1):
        raise ValueError(f"tile must be a power of two >= 16, got {tile}")
    sizes = _level_sizes(width, height, tile)
    colormap = _colormap(len(classes))
    description = json.dumps({"segmix": {"classes": list(classes), "mpp": mpp,
                                         "colors": [list(c) for c in palette_colors(len(classes))],
                                         **extra}})
    scratch = temporary_dir(path, "levels")
    with atomic_path(path) as tmp:
        raws = [open(Path(scratch) / f"level{k}.raw", "w+b") for k in range(1, len(sizes))]
        rows_seen = 0

        def level0() -> Iterator[np.ndarray]:
            nonlocal rows_seen
            for band in bands:
                if band.shape[1] != width or band.dtype != np.uint8:
                    raise ValueError(f"a band must be uint8 with {width} columns, got"
                                     f" {band.dtype} {band.shape}")
                for k, raw in enumerate(raws, start=1):  # nearest: every 2^k-th row and column
                    step = 2 ** k
                    first = (-rows_seen) % step
                    raw.write(np.ascontiguousarray(band[first::step, ::step]).tobytes())
                rows_seen += band.shape[0]
                yield band
            if rows_seen != height:
                raise ValueError(f"the bands hold {rows_seen} rows, the mask {height}")

        def level(k: int) -> Iterator[np.ndarray]:
            level_width, level_height = sizes[k]
            raw = raws[k - 1]
            raw.seek(0)
            for top in range(0, level_height, tile):
                rows = min(tile, level_height - top)
                yield np.frombuffer(raw.read(rows * level_width), dtype=np.uint8).reshape(
                    rows, level_width)

        options = dict(tile=(tile, tile), photometric="palette", colormap=colormap,
                       compression="zlib", resolutionunit="CENTIMETER", dtype=np.uint8)
        try:
            with tifffile.TiffWriter(tmp, bigtiff=width * height > 2**31) as tif:
                for k, (level_width, level_height) in enumerate(sizes):
                    source = level0() if k == 0 else level(k)
                    scale = 2 ** k
                    tif.write(_tiles(source, level_width, tile), shape=(level_height, level_width),
                              subfiletype=1 if k else 0,
                              resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
                              description=description if k == 0 else None, **options)
        finally:
            for raw in raws:
                raw.close()
            shutil.rmtree(scratch, ignore_errors=True)
    return Path(path)


def read_mask_pyramid(path: Path, level: int = 0) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A level of a mask written by :func:`write_mask_pyramid` (class indices ``H x W``) and its
    ``segmix`` description."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        description = tif.pages[0].description or ""
        try:
            meta = json.loads(description)["segmix"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a segmix slide mask (no segmix description)") from error
        return tif.pages[level].asarray(), meta

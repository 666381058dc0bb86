"""Plain (stripped, one-level) TIFFs read a region at a time, in bounded memory.

OpenSlide opens tiled and pyramidal TIFFs itself; a plain TIFF (image rows stored in strips, no
pyramid), as many exports and microscopes write, it refuses, and OpenSlide's fallback
(``ImageSlide``) decodes the whole image into memory at once (about 4 bytes a pixel: 6.4 GB for
a 40,000 px square). :class:`StrippedTiff` decodes only the strips a region covers (with tifffile,
any compression it knows) and keeps a few recent ones, so tiling and thumbnails row by row decode
each strip about once. It offers the part of OpenSlide's interface
:class:`segmix.slides.slide.Slide` uses: ``dimensions``, ``level_downsamples``, ``properties`` (mpp
from the resolution tags), ``read_region`` (RGBA, transparent outside the image) and ``close``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

__all__ = ["StrippedTiff", "is_stripped_tiff"]

RAW_BAND_ROWS = 256  # rows read at once from an uncompressed TIFF
CACHE_BYTES = 128 * 2**20  # decoded strips kept for the next region, beyond the last region's
_UNIT_MICRONS = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: inch, centimetre


def is_stripped_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF whose first image is stored in strips (not tiles)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return not tif.pages[0].is_tiled
    except Exception:  # not a TIFF, or damaged: the caller's own open reports it
        return False


class StrippedTiff:
    """Level 0 of a stripped TIFF, read region by region (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(path)
        page = self._tif.pages[0]
        if page.is_tiled or page.planarconfig != 1 or page.samplesperpixel not in (1, 3, 4):
            self._tif.close()
            raise ValueError("only strip-stored, interleaved grey, RGB or RGBA TIFFs are read"
                             f" strip by strip (this one: tiled={page.is_tiled},"
                             f" {page.samplesperpixel} samples, planar config {page.planarconfig})")
        if page.dtype != np.uint8:
            self._tif.close()
            raise ValueError(f"8-bit samples expected, got {page.dtype}")
        self._page = page
        self._stored_rows = int(min(page.rowsperstrip or page.imagelength, page.imagelength))
        # Uncompressed rows are read straight from the file, so a TIFF stored as one huge strip
        # is still read a band of rows at a time; compressed strips are decoded whole.
        self._raw = page.compression == 1 and page.predictor == 1
        self._rows_per_strip = min(self._stored_rows, RAW_BAND_ROWS) if self._raw else self._stored_rows
        self.dimensions: Tuple[int, int] = (int(page.imagewidth), int(page.imagelength))
        self.level_downsamples: Tuple[float, ...] = (1.0,)
        self.properties: Dict[str, str] = self._mpp_properties()
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cached_bytes = 0

    def _mpp_properties(self) -> Dict[str, str]:
        tags = self._page.tags
        unit = tags.get("ResolutionUnit")
        microns = _UNIT_MICRONS.get(int(unit.value) if unit is not None else 2)
        properties = {}
        for axis, name in (("x", "XResolution"), ("y", "YResolution")):
            tag = tags.get(name)
            if tag is None or microns is None:
                continue
            numerator, denominator = tag.value
            if numerator > 0 and denominator > 0:
                properties[f"openslide.mpp-{axis}"] = str(microns * denominator / numerator)
        return properties

    def _strip(self, index: int) -> np.ndarray:
        """Strip ``index`` decoded as ``rows x width x 4`` RGBA."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        top = index * self._rows_per_strip
        rows = min(self._rows_per_strip, self.dimensions[1] - top)
        pixels = self._raw_rows(top, rows) if self._raw else self._decoded(index)[:rows]
        rgba = np.empty((rows, self.dimensions[0], 4), np.uint8)
        rgba[..., :3] = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
        rgba[..., 3] = pixels[..., 3] if pixels.shape[2] == 4 else 255
        self._cache[index] = rgba
        self._cached_bytes += rgba.nbytes
        return rgba

    def _evict(self, keep: range) -> None:
        """Drop the oldest strips beyond :data:`CACHE_BYTES`, never those of ``keep`` (the region
        just read: the next region of its row needs them all, or an LRU would miss every time)."""
        for index in list(self._cache):
            if self._cached_bytes <= CACHE_BYTES:
                break
            if index not in keep:
                self._cached_bytes -= self._cache.pop(index).nbytes

    def _decoded(self, index: int) -> np.ndarray:
        """Stored strip ``index``, decompressed: ``rows x width x samples``."""
        page, handle = self._page, self._tif.filehandle
        handle.seek(page.dataoffsets[index])
        data = handle.read(page.databytecounts[index])
        decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        return np.asarray(decoded).reshape(-1, self.dimensions[0], page.samplesperpixel)

    def _raw_rows(self, top: int, rows: int) -> np.ndarray:
        """Rows ``top .. top + rows`` of an uncompressed TIFF, read from the stored strips."""
        page, handle = self._page, self._tif.filehandle
        width, samples = self.dimensions[0], page.samplesperpixel
        row_bytes = width * samples
        out = np.empty((rows, width, samples), np.uint8)
        row = top
        while row < top + rows:
            strip, within = divmod(row, self._stored_rows)
            count = min(top + rows - row, self._stored_rows - within)
            handle.seek(page.dataoffsets[strip] + within * row_bytes)
            out[row - top:row - top + count] = np.frombuffer(
                handle.read(count * row_bytes), np.uint8).reshape(count, width, samples)
            row += count
        return out

    def read_region(self, location: Tuple[int, int], level: int,
                    size: Tuple[int, int]) -> np.ndarray:
        """The ``size`` (width, height) region at level-0 ``location`` as RGBA ``H x W x 4``;
        outside the image is transparent, as OpenSlide gives it."""
        if level != 0:
            raise ValueError(f"a plain TIFF has level 0 only, got level {level}")
        (x, y), (width, height) = location, size
        region = np.zeros((height, width, 4), np.uint8)
        image_width, image_height = self.dimensions
        x0, x1 = max(x, 0), min(x + width, image_width)
        y0, y1 = max(y, 0), min(y + height, image_height)
        if x0 >= x1 or y0 >= y1:
            return region
        step = self._rows_per_strip
        strips = range(y0 // step, (y1 - 1) // step + 1)
        for index in strips:
            top = index * step
            strip = self._strip(index)
            r0, r1 = max(y0, top), min(y1, top + strip.shape[0])
            region[r0 - y:r1 - y, x0 - x:x1 - x] = strip[r0 - top:r1 - top, x0:x1]
        self._evict(strips)
        return region

    def close(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0
        self._tif.close()

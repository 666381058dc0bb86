"""Whole-slide images: open a slide (SVS, NDPI, MRXS, pyramidal TIFF... through OpenSlide; a plain
TIFF, PNG or JPEG of any size through the same interface), know its resolution in microns per
pixel (mpp), and read any region at a requested mpp from the level that suits it best.

OpenSlide is the optional extra ``wsi`` (``pip install "segmix-wsss[wsi]"``: openslide-python with
the openslide-bin wheel, no system package needed); without it, opening a slide is an error that
says so. Coordinates are level-0 pixels of the slide unless a name says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from pseudo_masks.tissue import thumbnail_tissue_mask

from ..data import overlay, resized
from ..errors import SegmixError
from .stripped_tiff import StrippedTiff, is_stripped_tiff

__all__ = ["SLIDE_SUFFIXES", "SlideError", "Slide", "require_openslide", "tissue_picture"]

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".svslide", ".bif", ".vms",
                  ".vmu", ".dcm", ".png", ".jpg", ".jpeg")
INSTALL = 'pip install "segmix-wsss[wsi]"'
BAND_PIXELS = 16 * 2**20  # pixels of the source level a thumbnail reads at once (64 MB as RGBA)


class SlideError(SegmixError, ValueError):
    """A slide that cannot be opened or read, or whose resolution is unknown; names the file."""


def require_openslide():
    """The ``openslide`` module, or an error naming the extra that installs it."""
    try:
        import openslide
    except ImportError as error:  # the package, or its library (openslide-bin) is missing
        raise SlideError(f"whole-slide images need OpenSlide: install the extra with {INSTALL}"
                         f" ({error})") from error
    return openslide


def tissue_picture(thumbnail: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The thumbnail with the tissue found tinted, for a user to check the detection."""
    return overlay(thumbnail, tissue.astype(np.uint8), 1, alpha=0.35)


class Slide:
    """An open slide. ``mpp``: microns per pixel of level 0, from the slide's metadata or, where it
    has none, the ``mpp`` given (a slide without either is refused)."""

    def __init__(self, path: Path, mpp: Optional[float] = None) -> None:
        openslide = require_openslide()
        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError(f"slide {self.path} not found")
        try:
            self._slide = self._open(openslide)
        except Exception as error:  # OpenSlide and PIL raise several types for unreadable files
            raise SlideError(f"{self.path} is not a slide or image OpenSlide can read"
                             f" ({type(error).__name__}: {error})") from error
        self.mpp = self._metadata_mpp() or (float(mpp) if mpp else None)
        if not self.mpp:
            self.close()
            raise SlideError(f"{self.path} has no resolution in its metadata: give its microns per"
                             " pixel (--mpp, e.g. 0.25 for 40x, 0.5 for 20x)")

    def _open(self, openslide):
        """OpenSlide's reader; a plain (stripped) TIFF, which OpenSlide would decode whole, is
        read strip by strip (:class:`segmix.slides.stripped_tiff.StrippedTiff`)."""
        try:
            return openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            if self.path.suffix.lower() in (".tif", ".tiff") and is_stripped_tiff(self.path):
                return StrippedTiff(self.path)
            return openslide.ImageSlide(str(self.path))  # PNG, JPEG: decoded whole by PIL

    def _metadata_mpp(self) -> Optional[float]:
        properties = getattr(self._slide, "properties", {})
        values = [properties.get(f"openslide.mpp-{axis}") for axis in ("x", "y")]
        try:
            numbers = [float(v) for v in values if v]
        except ValueError:
            return None
        return float(np.mean(numbers)) if numbers and min(numbers) > 0 else None

    # -- geometry -------------------------------------------------------------------------------
    @property
    def dimensions(self) -> Tuple[int, int]:
        """(width, height) of level 0."""
        return tuple(self._slide.dimensions)

    def size_at(self, mpp: float) -> Tuple[int, int]:
        """(width, height) of the whole slide at ``mpp``."""
        scale = self.mpp / mpp
        width, height = self.dimensions
        return max(1, round(width * scale)), max(1, round(height * scale))

    def level_for(self, mpp: float) -> int:
        """The smallest level that still has at least the detail of ``mpp``."""
        wanted = mpp / self.mpp  # downsample from level 0
        downsamples = self._slide.level_downsamples
        usable = [level for level, d in enumerate(downsamples) if d <= wanted * 1.01]
        return max(usable, key=lambda level: downsamples[level]) if usable else 0

    # -- pixels ---------------------------------------------------------------------------------
    def read(self, x: int, y: int, width: int, height: int, mpp: float) -> np.ndarray:
        """The region of level-0 box (``x``, ``y``, ``width``, ``height``) as RGB uint8 at ``mpp``
        (``round(height * slide mpp / mpp)`` rows); outside the slide is white."""
        level = self.level_for(mpp)
        downsample = self._slide.level_downsamples[level]
        size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
        try:
            region = self._slide.read_region((int(x), int(y)), level, size)
        except Exception as error:  # a damaged tile or level
            raise SlideError(f"{self.path}: level {level} cannot be read at ({x}, {y})"
                             f" ({type(error).__name__}: {error})") from error
        rgba = np.asarray(region)
        rgb = rgba[..., :3]
        if (rgba[..., 3] < 255).any():  # transparent = outside the scanned area: white
            alpha = rgba[..., 3:4].astype(np.float32) / 255
            rgb = (rgb * alpha + 255 * (1 - alpha)).astype(np.uint8)
        target = (max(1, round(height * self.mpp / mpp)), max(1, round(width * self.mpp / mpp)))
        return rgb if rgb.shape[:2] == target else resized(rgb, target)

    def thumbnail(self, mpp: float, band_pixels: int = BAND_PIXELS) -> np.ndarray:
        """The whole slide as RGB uint8 at ``mpp`` (e.g. 16: a 40,000 px slide at 0.25 gives 625 px),
        read in bands of about ``band_pixels`` pixels of the level it comes from, so memory stays
        bounded however large the slide (the result and one band)."""
        width, height = self.dimensions
        out_width, out_height = self.size_at(mpp)
        downsample = self._slide.level_downsamples[self.level_for(mpp)]
        level_rows = band_pixels / (width / downsample)  # rows of the source level in one band
        rows_per_band = max(1, int(level_rows * downsample * self.mpp / mpp))
        bands = []
        for top in range(0, out_height, rows_per_band):
            bottom = min(out_height, top + rows_per_band)
            y0, y1 = round(top * height / out_height), round(bottom * height / out_height)
            band = self.read(0, y0, width, max(1, y1 - y0), mpp)
            if band.shape[:2] != (bottom - top, out_width):
                band = resized(band, (bottom - top, out_width))
            bands.append(band)
        return np.concatenate(bands, axis=0)

    def tissue(self, mpp: float, min_saturation: float) -> Tuple[np.ndarray, np.ndarray]:
        """The thumbnail at ``mpp`` and its tissue mask (:func:`pseudo_masks.tissue.thumbnail_tissue_mask`)."""
        thumbnail = self.thumbnail(mpp)
        return thumbnail, thumbnail_tissue_mask(thumbnail, min_saturation=min_saturation)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = self.dimensions
        return f"Slide({self.path.name}, {width}x{height} px at {self.mpp:.3g} mpp)"

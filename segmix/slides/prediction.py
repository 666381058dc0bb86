"""A whole slide through a segmentation model, in memory bounded by one band of blocks.

The slide is read at the model's training resolution, one band of :data:`segmix.slides.masks.TILE`
rows at a time, in blocks of ``block`` columns with half a window of context on every side; blocks
without tissue (on the thumbnail's tissue mask) are not read nor predicted, and predictions outside
tissue are background. Each band goes straight into the pyramidal mask file
(:func:`segmix.slides.masks.write_mask_pyramid`); class areas and a small copy of the mask for the
overlay picture are gathered on the way.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import cv2
import numpy as np

from ..data import resized
from ..models.pretrained import Segmenter
from .masks import TILE, write_mask_pyramid
from ..shuffle import size_pair
from .slide import Slide

__all__ = ["SlidePrediction", "predict_slide"]


@dataclass
class SlidePrediction:
    """What :func:`predict_slide` found: the mask's size and mpp, class areas in mm^2, the share
    of blocks predicted (the rest was glass), a small mask (``preview``) on the ``thumbnail``."""

    width: int
    height: int
    mpp: float
    areas_mm2: Dict[str, float]
    blocks_predicted: float
    seconds: float
    thumbnail: np.ndarray
    tissue: np.ndarray
    preview: np.ndarray


def predict_slide(segmenter: Segmenter, slide: Slide, path: Path, *, mpp: float,
                  settings: Dict[str, Any], block: int = 2048, thumbnail_mpp: float = 16.0,
                  min_saturation: float = 0.05, readers: int = 2,
                  on_band: Optional[Any] = None) -> SlidePrediction:
    """Segment ``slide`` at ``mpp`` with ``segmenter`` (``settings``: the keyword arguments of
    :meth:`Segmenter.predict`) and write the class mask as a pyramidal TIFF at ``path``;
    ``readers`` threads read blocks ahead of the model."""
    start = time.perf_counter()
    width, height = slide.size_at(mpp)
    scale = mpp / slide.mpp  # level-0 px per mask px
    thumb_mpp = max(thumbnail_mpp, mpp)
    thumbnail, tissue = slide.tissue(thumb_mpp, min_saturation)
    gate = cv2.dilate(tissue.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # coarse edge
    per_thumb = thumb_mpp / mpp  # mask px per thumbnail px
    margin = max(size_pair(settings.get("window") or segmenter.image_size, "window")) // 2
    classes = segmenter.classes
    counts = np.zeros(len(classes) + 1, dtype=np.int64)
    preview = np.zeros(thumbnail.shape[:2], dtype=np.uint8)
    preview_rows = np.minimum((np.arange(preview.shape[0]) + 0.5) * per_thumb, height - 1).astype(int)
    preview_cols = np.minimum((np.arange(preview.shape[1]) + 0.5) * per_thumb, width - 1).astype(int)
    done = {"blocks": 0, "predicted": 0}

    def gate_of(left: int, top: int, cols: int, rows: int) -> np.ndarray:
        y0, y1 = int(top / per_thumb), int(np.ceil((top + rows) / per_thumb))
        x0, x1 = int(left / per_thumb), int(np.ceil((left + cols) / per_thumb))
        crop = gate[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
        if not crop.any():
            return np.zeros((rows, cols), dtype=bool)
        full = resized(crop.astype(np.uint8), (round(crop.shape[0] * per_thumb),
                                               round(crop.shape[1] * per_thumb)), nearest=True)
        oy, ox = round(top - y0 * per_thumb), round(left - x0 * per_thumb)
        part = np.zeros((rows, cols), dtype=bool)
        piece = full[oy:oy + rows, ox:ox + cols] > 0
        part[:piece.shape[0], :piece.shape[1]] = piece
        return part

    def blocks() -> Iterator[Tuple[int, int, int, int, np.ndarray]]:
        """Every block, band by band: (top, left, rows, cols, its tissue gate)."""
        for top in range(0, height, TILE):
            for left in range(0, width, block):
                rows, cols = min(TILE, height - top), min(block, width - left)
                yield top, left, rows, cols, gate_of(left, top, cols, rows)

    def read(job: Tuple[int, int, int, int, np.ndarray]) -> Optional[np.ndarray]:
        """A block's pixels with their context margin (``None`` for a block without tissue)."""
        top, left, rows, cols, inside = job
        if not inside.any():
            return None
        size = (rows + 2 * margin, cols + 2 * margin)
        image = slide.read(round((left - margin) * scale), round((top - margin) * scale),
                           round(size[1] * scale), round(size[0] * scale), mpp)
        return image if image.shape[:2] == size else resized(image, size)

    def bands() -> Iterator[np.ndarray]:
        # Blocks are read ahead by `readers` threads (OpenSlide and OpenCV release the GIL) while
        # the model predicts: at most `readers + 1` blocks wait in memory.
        with ThreadPoolExecutor(max_workers=readers) as pool:
            jobs, pending = blocks(), deque()

            def refill() -> None:
                while len(pending) < readers + 1:
                    job = next(jobs, None)
                    if job is None:
                        return
                    pending.append((job, pool.submit(read, job)))

            refill()
            band = None
            while pending:
                (top, left, rows, cols, inside), future = pending.popleft()
                refill()
                if band is None:
                    band = np.zeros((rows, width), dtype=np.uint8)
                done["blocks"] += 1
                image = future.result()
                if image is not None:
                    done["predicted"] += 1
                    mask = segmenter.predict(image, **settings).mask
                    band[:, left:left + cols] = \
                        mask[margin:margin + rows, margin:margin + cols] * inside
                if left + cols < width:
                    continue
                counts[:] += np.bincount(band.ravel(), minlength=len(classes) + 1)[:len(classes) + 1]
                picked = (preview_rows >= top) & (preview_rows < top + rows)
                preview[picked] = band[preview_rows[picked] - top][:, preview_cols]
                if on_band is not None:
                    on_band(top + rows, height)
                yield band
                band = None

    write_mask_pyramid(path, bands(), width, height, classes=classes, mpp=mpp,
                       extra={"slide": str(slide.path), "slide_mpp": slide.mpp,
                              "slide_scale": scale})
    pixel_mm2 = (mpp / 1000) ** 2
    return SlidePrediction(
        width=width, height=height, mpp=mpp,
        areas_mm2={name: float(counts[i] * pixel_mm2)
                   for i, name in enumerate(["background", *classes])},
        blocks_predicted=done["predicted"] / max(done["blocks"], 1),
        seconds=time.perf_counter() - start, thumbnail=thumbnail, tissue=tissue, preview=preview)

"""The pseudo-mask stage's quality check without masks: how cleanly each tile's class scores split
at the threshold (Otsu's ``eta`` of the tile's own scores inside its tissue, 0 to 1), the tiles
ordered from the least clean (``tiles_by_quality.csv``) and a picture of the worst for a person
to look at (``worst_tiles.png``: the tile, its pseudo mask, its class score, under its name and
quality). A helper of the pseudo-masks stage; measured against the true tile IoU in
docs/benchmarks.md ("Threshold without masks")."""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from pseudo_masks import PseudoMaskConfig, ScoreHistogram, threshold_scores

from ..data import captioned, overlay, picture_grid, write_rgb
from ..io import write_csv

__all__ = ["QUALITY_FILE", "WORST_PICTURE", "TileQuality"]

QUALITY_FILE = "tiles_by_quality.csv"
WORST_PICTURE = "worst_tiles.png"


class TileQuality:
    """Collects each tile's quality as its masks are made, then writes the table and picture; the
    picture of a tile is drawn only while it is among the ``shown`` least clean so far."""

    def __init__(self, settings: PseudoMaskConfig, num_classes: int, shown: int = 8) -> None:
        self.settings, self.num_classes, self.shown = settings, num_classes, shown
        self.rows: List[Dict[str, Any]] = []
        # the `shown` least clean so far, as a heap whose top is the cleanest of them (the later
        # of equals, as a stable sort by quality would place it): (-quality, -row, picture)
        self.worst: List[Tuple[float, int, np.ndarray]] = []

    def add(self, split: str, name: str, inputs: Dict[str, Any], mask: np.ndarray) -> float:
        """The quality of one tile (``inputs`` as the stage builds them, ``mask`` its pseudo mask)."""
        scores, inside = threshold_scores(inputs["cams"], inputs["labels"], self.settings,
                                          images=inputs["images"], foreground=inputs["foreground"])
        histogram = ScoreHistogram()
        histogram.add(scores, inside)
        quality = histogram.split(self.settings.threshold)["eta"]
        key = (-quality, -len(self.rows))
        self.rows.append({"split": split, "tile": name, "quality": quality,
                          "tissue_share": float(inside.float().mean())})
        if len(self.worst) < self.shown or key > self.worst[0][:2]:
            grey = np.rint(scores[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
            picture = np.concatenate([inputs["rgb"], overlay(inputs["rgb"], mask, self.num_classes),
                                      np.repeat(grey[..., None], 3, axis=2)], axis=1)
            item = (*key, picture)
            if len(self.worst) < self.shown:
                heapq.heappush(self.worst, item)
            else:
                heapq.heapreplace(self.worst, item)
        return quality

    def write(self, output_dir: Path) -> Dict[str, Any]:
        """Write the table and the picture; return the summary entry (median quality per split,
        the worst tiles)."""
        order = sorted(range(len(self.rows)), key=lambda index: self.rows[index]["quality"])
        ordered = [self.rows[index] for index in order]
        write_csv(output_dir / QUALITY_FILE, ordered)
        pictures = {-row: picture for _, row, picture in self.worst}
        cells = [captioned(pictures[index], f"{r['split']}/{r['tile']}  quality {r['quality']:.2f}")
                 for index, r in zip(order[:self.shown], ordered)]
        if cells:
            write_rgb(output_dir / WORST_PICTURE, picture_grid(cells))
        splits = sorted({r["split"] for r in self.rows})
        return {"median": {s: float(np.median([r["quality"] for r in self.rows if r["split"] == s]))
                           for s in splits},
                "worst": [f"{r['split']}/{r['tile']}" for r in ordered[:self.shown]],
                "table": QUALITY_FILE, "picture": WORST_PICTURE}

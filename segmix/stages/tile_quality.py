"""The pseudo-mask stage's quality check without masks: how cleanly each tile's class scores split
at the threshold (Otsu's ``eta`` of the tile's own scores inside its tissue, 0 to 1), the tiles
ordered from the least clean (``tiles_by_quality.csv``) and a picture of the worst for a person
to look at (``worst_tiles.png``: the tile, its pseudo mask, its class score, under its name and
quality), and each split's mIoU estimated from its tiles' scores
(:func:`pseudo_masks.estimate_miou`). A helper of the pseudo-masks stage; measured against the truth in docs/benchmarks.md ("Threshold
without masks", "A split's mIoU without masks")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from pseudo_masks import PseudoMaskConfig, ScoreHistogram, estimate_miou

from ..data import captioned, overlay, picture_grid, write_rgb
from ..io import write_csv
from .tile_inputs import tile_scores

__all__ = ["QUALITY_FILE", "WORST_PICTURE", "TileQuality", "measure_tile", "quality_picture"]

QUALITY_FILE = "tiles_by_quality.csv"
WORST_PICTURE = "worst_tiles.png"


def measure_tile(inputs: Dict[str, Any], settings: PseudoMaskConfig) -> Tuple[int, ScoreHistogram]:
    """A tile's first label (-1: none) and the histogram of its class scores inside its tissue,
    from the ``inputs`` the pseudo-mask stage builds for it."""
    scores, inside = tile_scores(inputs, settings)
    histogram = ScoreHistogram()
    histogram.add(scores, inside)
    labels = inputs["labels"][0]
    return (int(labels.nonzero()[0, 0]) if labels.any() else -1), histogram


def quality_picture(inputs: Dict[str, Any], mask: np.ndarray, settings: PseudoMaskConfig,
                    num_classes: int) -> np.ndarray:
    """The tile, its pseudo ``mask`` over it and its class score in grey, side by side."""
    scores, _ = tile_scores(inputs, settings)
    grey = np.rint(scores[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
    return np.concatenate([inputs["rgb"], overlay(inputs["rgb"], mask, num_classes),
                           np.repeat(grey[..., None], 3, axis=2)], axis=1)


class TileQuality:
    """Collects each tile's :func:`measure_tile` at ``threshold``, then writes the table, the
    picture of the ``shown`` least clean tiles and the mIoU estimate of each split."""

    def __init__(self, threshold: float, shown: int = 8) -> None:
        self.threshold = threshold
        self.shown = shown
        self.rows: List[Dict[str, Any]] = []
        self.by_class: Dict[Tuple[str, int], ScoreHistogram] = {}

    def add(self, split: str, name: str, label: int, histogram: ScoreHistogram) -> float:
        """Count one tile; returns its quality (``eta`` at the threshold)."""
        quality = histogram.split(self.threshold)["eta"]
        inside = histogram.counts.sum()
        self.rows.append({"split": split, "tile": name, "quality": quality,
                          "tissue_share": inside / max(inside + histogram.outside, 1)})
        self.by_class.setdefault((split, label),
                                 ScoreHistogram(len(histogram.counts))).merge(histogram)
        return quality

    def estimates(self) -> Dict[str, Dict[str, float]]:
        """Each split's mIoU (with background, 0-1) estimated without masks, and its range."""
        splits = sorted({split for split, _ in self.by_class})
        return {split: estimate_miou([histogram for (s, _), histogram
                                      in sorted(self.by_class.items()) if s == split],
                                     self.threshold) for split in splits}

    def write(self, output_dir: Path,
              picture: Callable[[str, str], np.ndarray]) -> Dict[str, Any]:
        """Write the table and the picture (``picture(split, tile)`` draws one of the least clean
        tiles, :func:`quality_picture`); return the summary entry (median quality and estimated
        mIoU per split, the worst tiles)."""
        order = sorted(range(len(self.rows)), key=lambda index: self.rows[index]["quality"])
        ordered = [self.rows[index] for index in order]
        write_csv(output_dir / QUALITY_FILE, ordered)
        cells = [captioned(picture(r["split"], r["tile"]),
                           f"{r['split']}/{r['tile']}  quality {r['quality']:.2f}")
                 for r in ordered[:self.shown]]
        if cells:
            write_rgb(output_dir / WORST_PICTURE, picture_grid(cells))
        splits = sorted({r["split"] for r in self.rows})
        return {"median": {s: float(np.median([r["quality"] for r in self.rows if r["split"] == s]))
                           for s in splits},
                "estimated_mIoU": self.estimates(),
                "worst": [f"{r['split']}/{r['tile']}" for r in ordered[:self.shown]],
                "table": QUALITY_FILE, "picture": WORST_PICTURE}

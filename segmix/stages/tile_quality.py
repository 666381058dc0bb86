"""The pseudo-mask stage's quality check without masks: how cleanly each tile's class scores split
at the threshold (Otsu's ``eta`` of the tile's own scores inside its tissue, 0 to 1), the tiles
ordered from the least clean (``tiles_by_quality.csv``) and a picture of the worst for a person
to look at (``worst_tiles.png``: the tile, its pseudo mask, its class score, under its name and
quality). A helper of the pseudo-masks stage; measured against the true tile IoU in
docs/benchmarks.md ("Threshold without masks")."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from PIL import Image, ImageDraw

from pseudo_masks import PseudoMaskConfig, ScoreHistogram, class_maps, tissue_background

from ..data import overlay, write_rgb
from ..io import write_csv

__all__ = ["QUALITY_FILE", "WORST_PICTURE", "TileQuality"]

QUALITY_FILE = "tiles_by_quality.csv"
WORST_PICTURE = "worst_tiles.png"
CAPTION_PX = 14  # the strip above each row of the picture: the tile's name and quality


def _captioned(row: np.ndarray, text: str) -> np.ndarray:
    """``row`` (RGB) under a white strip with ``text``."""
    strip = Image.new("RGB", (row.shape[1], CAPTION_PX), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.concatenate([np.asarray(strip), row], axis=0)


class TileQuality:
    """Collects each tile's quality as its masks are made, then writes the table and picture."""

    def __init__(self, settings: PseudoMaskConfig, num_classes: int, shown: int = 8) -> None:
        self.settings, self.num_classes, self.shown = settings, num_classes, shown
        self.rows: List[Dict[str, Any]] = []
        self.pictures: Dict[str, np.ndarray] = {}

    def add(self, split: str, name: str, inputs: Dict[str, Any], mask: np.ndarray) -> float:
        """The quality of one tile (``inputs`` as the stage builds them, ``mask`` its pseudo mask)."""
        settings = self.settings
        scores = class_maps(inputs["cams"], inputs["labels"], settings, images=inputs["images"],
                            foreground=inputs["foreground"]).amax(dim=1)
        inside = (~tissue_background(inputs["images"], settings.white_level, settings.min_speck)
                  if settings.tissue_prior else torch.ones_like(scores, dtype=torch.bool))
        histogram = ScoreHistogram()
        histogram.add(scores, inside)
        quality = histogram.split(settings.threshold)["eta"]
        self.rows.append({"split": split, "tile": name, "quality": quality,
                          "tissue_share": float(inside.float().mean())})
        grey = np.rint(scores[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
        self.pictures[f"{split}/{name}"] = np.concatenate(
            [inputs["rgb"], overlay(inputs["rgb"], mask, self.num_classes),
             np.repeat(grey[..., None], 3, axis=2)], axis=1)
        if len(self.pictures) > 4 * self.shown:  # keep only the worst few in memory
            self._keep_worst()
        return quality

    def _keep_worst(self) -> None:
        worst = {f"{r['split']}/{r['tile']}" for r in sorted(self.rows, key=lambda r: r["quality"])
                 [:self.shown]}
        self.pictures = {key: value for key, value in self.pictures.items() if key in worst}

    def write(self, output_dir: Path) -> Dict[str, Any]:
        """Write the table and the picture; return the summary entry (median quality per split,
        the worst tiles)."""
        ordered = sorted(self.rows, key=lambda r: r["quality"])
        write_csv(output_dir / QUALITY_FILE, ordered)
        self._keep_worst()
        cells = [_captioned(self.pictures[f"{r['split']}/{r['tile']}"],
                            f"{r['split']}/{r['tile']}  quality {r['quality']:.2f}")
                 for r in ordered[:self.shown]]
        if cells:
            width = max(cell.shape[1] for cell in cells)
            write_rgb(output_dir / WORST_PICTURE, np.concatenate(
                [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0))) for c in cells], axis=0))
        splits = sorted({r["split"] for r in self.rows})
        return {"median": {s: float(np.median([r["quality"] for r in self.rows if r["split"] == s]))
                           for s in splits},
                "worst": [f"{r['split']}/{r['tile']}" for r in ordered[:self.shown]],
                "table": QUALITY_FILE, "picture": WORST_PICTURE}

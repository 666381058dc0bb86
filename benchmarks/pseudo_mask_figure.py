"""A picture of a run's pseudo masks on val tiles: the tile, its ground truth, its pseudo mask.

    .venv/bin/python benchmarks/pseudo_mask_figure.py runs/ebhi-axis docs/figures/ebhi_axis_val.jpg \
        [--count 6] [--seed 0]

Draws ``--count`` val tiles of a ``segmix run`` folder (a seeded sample, one per class where the
classes allow) finished up to its pseudo masks, each row: tile, ground truth, pseudo mask (class
colours over the tile, background left as it is), with the tile's mIoU in the row's caption.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pseudo_masks import ConfusionMatrix, segmentation_metrics
from segmix.artifacts import RunLayout, pseudo_mask_path
from segmix.config import load_config
from segmix.data import (
    dataset_classes,
    mask_convention,
    overlay,
    read_label_mask,
    read_mask_png,
    read_rgb,
    read_split,
    unique_names,
)
from segmix.stages.pseudo_masks import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=160, help="px of each cell")
    args = parser.parse_args()
    layout = RunLayout(args.run)
    data = load_config(layout.pseudo_masks_dir / "config.yaml", DEFAULTS)["data"]
    classes = dataset_classes(data)
    samples = read_split(data, "val", progress=False)
    names = dict(zip((s.image for s in samples), unique_names(samples)))
    rng = np.random.default_rng(args.seed)
    by_class = {}
    for index in rng.permutation(len(samples)):
        by_class.setdefault(samples[index].labels[0], []).append(samples[index])
    chosen = []
    while len(chosen) < min(args.count, len(samples)):
        for label in sorted(by_class):
            if by_class[label] and len(chosen) < args.count:
                chosen.append(by_class[label].pop(0))
    rows = []
    for sample in chosen:
        rgb = read_rgb(sample.image)
        truth = read_label_mask(sample.mask, sample.labels, len(classes), mask_convention(data))
        pseudo = read_mask_png(pseudo_mask_path(layout.pseudo_masks_dir, "val", names[sample.image]))
        matrix = ConfusionMatrix(len(classes))
        matrix.update(torch.from_numpy(pseudo), torch.from_numpy(truth))
        score = segmentation_metrics(matrix, "with_background")["mIoU"]
        cells = [Image.fromarray(image).resize((args.size, args.size)) for image in
                 (rgb, overlay(rgb, truth, len(classes), alpha=0.6),
                  overlay(rgb, pseudo, len(classes), alpha=0.6))]
        row = Image.new("RGB", (3 * args.size, args.size + 14), "white")
        ImageDraw.Draw(row).text((2, 1), f"{classes[sample.labels[0]]}: tile, ground truth,"
                                 f" pseudo mask (tile mIoU {100 * score:.0f})", fill="black")
        for i, cell in enumerate(cells):
            row.paste(cell, (i * args.size, 14))
        rows.append(row)
    picture = Image.new("RGB", (3 * args.size, sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        picture.paste(row, (0, i * rows[0].height))
    picture.save(args.out, quality=85)
    print(f"wrote {args.out} ({len(rows)} val tiles)")


if __name__ == "__main__":
    main()

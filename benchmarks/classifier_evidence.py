"""Where does a classifier's evidence lie on EBHI-Seg tiles: in the lesion/glands, or around them?

    .venv/bin/python benchmarks/classifier_evidence.py --classifier runs/bench-cls/none/classifier.pt

For every val tile the classifier sees four versions: the tile; only the ground-truth foreground
(lesion/glands) with the rest replaced by the tile blurred (Gaussian, sigma 16 px: colour kept,
texture gone); only the background (stroma, lumen) with the foreground replaced likewise; and the
whole tile blurred. Val accuracy on each says which part carries the class: if the background
alone classifies as well as the foreground, an image-level label gives CAMs no reason to point at
the glands. Writes ``results.md`` / ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from foreground_signals import blurred, write_report  # a sibling script in benchmarks/

from segmix.config import load_config
from segmix.data import mask_convention, read_label_mask, read_rgb, read_split
from segmix.models.factory import load_classifier
from segmix.stages.run import DEFAULTS as PIPELINE_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ("whole tile", "foreground only", "background only", "all blurred")
BLUR_SIGMA = 16


def views(rgb: np.ndarray, foreground: np.ndarray) -> Dict[str, np.ndarray]:
    """The four versions of one tile (uint8 RGB)."""
    soft = blurred(rgb, BLUR_SIGMA).round().astype(np.uint8)
    keep = foreground[..., None]
    return {"whole tile": rgb, "foreground only": np.where(keep, rgb, soft),
            "background only": np.where(keep, soft, rgb), "all blurred": soft}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ebhi-seg/labels.csv")
    parser.add_argument("--classifier", type=Path, action="append", required=True,
                        help="classifier.pt files (repeat)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "classifier-evidence")
    args = parser.parse_args()
    data = load_config(ROOT / "configs" / "ebhi.yaml", PIPELINE_DEFAULTS)["data"]
    data["train"]["path"] = data["val"]["path"] = str(args.data.resolve())
    samples = read_split(data, "val")
    convention = mask_convention(data)
    tiles = []
    for sample in samples:
        truth = read_label_mask(sample.mask, sample.labels, len(data["classes"]), convention)
        tiles.append((views(read_rgb(sample.image), truth > 0), sample.labels[0]))
    results: Dict[str, Dict[str, float]] = {}
    for path in args.classifier:
        model, info = load_classifier(path)
        mean = torch.tensor(info["mean"])[:, None, None]
        std = torch.tensor(info["std"])[:, None, None]
        correct = dict.fromkeys(VIEWS, 0)
        with torch.no_grad():
            for versions, label in tiles:
                batch = torch.from_numpy(np.stack([versions[v] for v in VIEWS]))
                batch = (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std
                predicted = model(batch).argmax(dim=1).tolist()
                for view, guess in zip(VIEWS, predicted):
                    correct[view] += int(guess == label)
        results[str(path)] = {view: correct[view] / len(tiles) for view in VIEWS}
    lines = ["| classifier | " + " | ".join(VIEWS) + " |", "|---" * (len(VIEWS) + 1) + "|"]
    for name, accuracy in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{accuracy[v]:.3f}" for v in VIEWS) + " |")
    report = (f"Val accuracy ({len(tiles)} tiles; replaced parts blurred, sigma {BLUR_SIGMA} px)\n\n"
              + "\n".join(lines) + "\n")
    write_report(args.out, report, results)


if __name__ == "__main__":
    main()

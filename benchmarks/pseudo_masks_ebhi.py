"""Pseudo masks on EBHI-Seg (val split) from the classifiers of ``train_cls_ebhi.py``.

    python benchmarks/pseudo_masks_ebhi.py --classifiers runs/bench-cls --out runs/bench-pseudo

Arms (each: ``segmix cams`` then ``segmix pseudo-masks`` with the background threshold swept on the
val split and recorded), next to the references without learning that DESIGN §8 asks for:

* ``trivial``: every pixel = the tile's class; ``tissue prior``: near-white = background, rest = class;
* ``<classifier> + cam`` / ``+ gradcam``: plain CAM / Grad-CAM on the final feature map;
* ``<classifier> + gradcam + shuffle TTA``: Grad-CAM averaged with 4 shuffled copies of each batch.

Scores: 7-class mIoU (background + 6 classes, the tile's label known) and foreground IoU. Writes
``results.md``, ``results.json`` and ``overlays.png`` (a few val tiles: image, ground truth, masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from pseudo_masks import ConfusionMatrix, segmentation_metrics, trivial_masks
from segmix.cli import main as segmix
from segmix.config import load_config
from segmix.data import (
    mask_convention,
    overlay,
    read_label_mask,
    read_mask_png,
    read_rgb,
    read_split,
    unique_names,
    write_rgb,
)
from segmix.stages.run import DEFAULTS as PIPELINE_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
SHUFFLE_TTA = "{enabled: true, patch_size: 32, fix_ratio: 0.5, draws: 4, mode: batch, group_size: null}"
ARMS = [  # (name, classifier run, CAM method, shuffle TTA)
    ("plain classifier + cam", "none", "cam", False),
    ("plain classifier + gradcam", "none", "gradcam", False),
    ("plain classifier + gradcam + shuffle TTA", "none", "gradcam", True),
    ("segmix classifier + cam", "segmix", "cam", False),
    ("segmix classifier + gradcam", "segmix", "gradcam", False),
    ("segmix classifier + gradcam + shuffle TTA", "segmix", "gradcam", True),
]


def score(masks: Dict[str, np.ndarray], truths: Dict[str, np.ndarray], classes: List[str]) -> Dict:
    matrix = ConfusionMatrix(len(classes))
    for name, truth in truths.items():
        matrix.update(torch.from_numpy(masks[name]), torch.from_numpy(truth))
    return segmentation_metrics(matrix, "with_background", classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ebhi-seg")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ebhi.yaml")
    parser.add_argument("--classifiers", type=Path, default=ROOT / "runs" / "bench-cls")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-pseudo")
    parser.add_argument("--figure-tiles", type=int, default=6)
    args = parser.parse_args()
    labels_csv = (args.data / "labels.csv").resolve()
    data = load_config(args.config, PIPELINE_DEFAULTS)["data"]
    data["train"]["path"] = data["val"]["path"] = str(labels_csv)
    classes = data["classes"]
    samples = read_split(data, "val")
    names = unique_names(samples)
    convention = mask_convention(data)
    truths = {n: read_label_mask(s.mask, s.labels, len(classes), convention)
              for n, s in zip(names, samples)}
    images = {n: read_rgb(s.image) for n, s in zip(names, samples)}

    results, figure_masks = [], {}
    for reference, use_tissue in (("trivial (every pixel = tile class)", False),
                                  ("tissue prior only", True)):
        masks = {}
        for n, s in zip(names, samples):
            label = torch.zeros(1, len(classes))
            label[0, list(s.labels)] = 1
            image = torch.from_numpy(images[n]).permute(2, 0, 1)[None] if use_tissue else None
            masks[n] = trivial_masks(label, *truths[n].shape, images=image)[0].numpy()
        metrics = score(masks, truths, classes)
        results.append({"arm": reference, "threshold": None, **_summary(metrics)})
        figure_masks[reference] = masks

    data_settings = [f"data.train.path={labels_csv}", f"data.val.path={labels_csv}"]
    for arm, run, method, tta in ARMS:
        classifier = args.classifiers / run / "classifier.pt"
        if not classifier.is_file():
            sys.exit(f"{classifier} not found: run benchmarks/train_cls_ebhi.py first")
        slug = arm.replace(" + ", "_").replace(" ", "-")
        cams_dir, masks_dir = args.out / slug / "cams", args.out / slug / "pseudo"
        common = ["--config", str(args.config)] + [a for s in data_settings for a in ("--set", s)]
        cam_args = ["cams", *common, "--output-dir", str(cams_dir), "--set", f"classifier={classifier}",
                    "--set", f"cam.method={method}", "--set", "splits=[val]"]
        if tta:
            cam_args += ["--set", f"cam.shuffle_tta={SHUFFLE_TTA}"]
        if not (cams_dir / "index.csv").exists() and segmix(cam_args) != 0:
            sys.exit(f"segmix cams failed for {arm}")
        mask_args = ["pseudo-masks", *common, "--output-dir", str(masks_dir), "--set",
                     f"cams_dir={cams_dir}", "--set", "splits=[val]", "--set", "sweep.enabled=true"]
        if not (masks_dir / "summary.json").exists() and segmix(mask_args) != 0:
            sys.exit(f"segmix pseudo-masks failed for {arm}")
        summary = json.loads((masks_dir / "summary.json").read_text())
        metrics = json.loads((masks_dir / "metrics.json").read_text())["val"]["with_background"]
        results.append({"arm": arm, "threshold": summary["sweep"]["chosen"], **_summary(metrics)})
        figure_masks[arm] = {n: read_mask_png(masks_dir / "masks" / "val" / f"{n}.png") for n in names}

    lines = ["| pseudo mask (val, tile label known) | threshold (swept on val) | mIoU (7 classes) |"
             " foreground IoU | background IoU |"
             " per-class IoU (Normal, Polyp, LGIN, HGIN, Adeno, Serrated) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        per_class = ", ".join(f"{100 * r['iou'][c]:.1f}" for c in classes)
        threshold = "-" if r["threshold"] is None else f"{r['threshold']:g}"
        lines.append(f"| {r['arm']} | {threshold} | {100 * r['mIoU']:.1f} |"
                     f" {100 * r['foreground_iou']:.1f} | {100 * r['iou']['background']:.1f} |"
                     f" {per_class} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _figure(args.out / "overlays.png", names, images, truths, figure_masks, classes, args.figure_tiles)


def _summary(metrics: Dict) -> Dict:
    return {"mIoU": metrics["mIoU"], "foreground_iou": metrics["foreground_iou"], "iou": metrics["iou"]}


def _figure(path: Path, names, images, truths, masks_by_arm, classes, count: int) -> None:
    """Rows = tiles (one per class where possible); columns = image, ground truth, each arm."""
    import cv2

    chosen, seen = [], set()
    for name in names:
        label = int(truths[name].max())
        if label not in seen:
            chosen.append(name)
            seen.add(label)
    chosen = (chosen + [n for n in names if n not in chosen])[:count]
    columns = ["image", "ground truth", *masks_by_arm]
    cell, header = 160, 40
    canvas = np.full((header + cell * len(chosen), cell * len(columns), 3), 255, np.uint8)
    for j, title in enumerate(columns):
        for k, part in enumerate(_wrap(title, 22)):
            cv2.putText(canvas, part, (j * cell + 3, 12 + 12 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                        (0, 0, 0), 1)
    for i, name in enumerate(chosen):
        tiles = [images[name], overlay(images[name], truths[name], len(classes))]
        tiles += [overlay(images[name], masks[name], len(classes)) for masks in masks_by_arm.values()]
        for j, tile in enumerate(tiles):
            canvas[header + i * cell: header + (i + 1) * cell, j * cell: (j + 1) * cell] = \
                cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_NEAREST)
    write_rgb(path, canvas)
    print(f"figure: {path}")


def _wrap(text: str, width: int) -> List[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


if __name__ == "__main__":
    main()

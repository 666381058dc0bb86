"""Score the val foreground maps of ``segmix localise`` folders against the ground truth.

    .venv/bin/python benchmarks/localiser_maps.py --config configs/wbc.yaml \\
        runs/wbc/localiser runs/evidence-wbc/localiser [--out runs/localiser-scores]

For each folder (any method), as ``benchmarks/foreground_signals.py`` scores a signal: the **AUC
inside tissue** of the maps (near-white removed; 0.5 = no information) and the best mIoU
(background + classes, tile label known, tissue prior on) of ``map >= t`` over a sweep of ``t``
chosen and scored on val, with the foreground IoU there; the trivial mask and the tissue prior
(``t`` = 0) as references. With ``--out``, writes ``results.md`` / ``results.json`` there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from foreground_signals import SignalScore, write_report
from pseudo_masks import ConfusionMatrix, segmentation_metrics, tissue_background
from segmix.artifacts import read_foreground_map
from segmix.config import load_config
from segmix.data import mask_convention, read_label_mask, read_rgb, read_split, unique_names
from segmix.stages.run import DEFAULTS as PIPELINE_DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the dataset's segmix config")
    parser.add_argument("folders", type=Path, nargs="+", help="segmix localise output folders")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = load_config(args.config, PIPELINE_DEFAULTS)["data"]
    classes = data["classes"]
    val = read_split(data, "val")
    names = unique_names(val)
    convention = mask_convention(data)
    scores = {folder: SignalScore(len(classes)) for folder in args.folders}
    trivial = ConfusionMatrix(len(classes))
    for sample, name in zip(val, names):
        truth = read_label_mask(sample.mask, sample.labels, len(classes), convention)
        tissue = ~tissue_background(torch.from_numpy(read_rgb(sample.image))[None])[0].numpy()
        trivial.update(torch.full(truth.shape, sample.labels[0] + 1, dtype=torch.uint8),
                       torch.from_numpy(truth))
        for folder, score in scores.items():
            score.add(read_foreground_map(folder, "val", name), truth, tissue, sample.labels[0] + 1)
    reference = segmentation_metrics(trivial, "with_background")
    results = {str(folder): score.result() for folder, score in scores.items()}
    prior = next(iter(results.values()))["miou_at_0"]
    lines = [f"{args.config.name}, {len(val)} val tiles. References: trivial mask mIoU"
             f" {100 * reference['mIoU']:.1f} (foreground IoU {100 * reference['foreground_iou']:.1f}),"
             f" tissue prior mIoU {100 * prior:.1f}.", "",
             "| localiser folder | method | AUC inside tissue | best mIoU | threshold |"
             " foreground IoU there |", "|---|---|---|---|---|---|"]
    for folder, r in results.items():
        summary = Path(folder) / "summary.json"
        method = json.loads(summary.read_text()).get("method", "") if summary.is_file() else ""
        lines.append(f"| {folder} | {method} | {r['auc']:.3f} | {100 * r['best_miou']:.1f} |"
                     f" {r['best_threshold']:.2f} | {100 * r['best_foreground_iou']:.1f} |")
    report = "\n".join(lines) + "\n"
    if args.out:
        write_report(args.out, report, {"trivial": reference, "tissue_prior_miou": prior,
                                        "folders": results})
    else:
        print(report)


if __name__ == "__main__":
    main()

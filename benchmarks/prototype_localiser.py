"""Does the prototype localiser find the foreground where CAMs do not? (val split of any dataset)

    .venv/bin/python benchmarks/prototype_localiser.py --config configs/wbc.yaml \
        --k 4 6 8 12 --seeds 0 1 2 --out runs/prototypes-wbc \
        [--classifier runs/wbc/classifier/classifier.pt --fill median blur]

Builds the prototypes exactly as ``segmix localise`` does
(:func:`segmix.localisers.prototypes.build_prototypes`: superpixels of up to ``--fit-tiles`` train tiles, k-means, naming) for each ``k``, seed and naming
(``labels``: class specificity of the prototypes' area shares; with ``--classifier``, also
``classifier``: the class evidence their removal costs, for each ``--fill``), then scores each val
tile's foreground map as ``benchmarks/foreground_signals.py`` does: the **AUC inside tissue**
(near-white removed; 0.5 = no information) and the best mIoU (background + classes, tile label
known, tissue prior on) of ``map >= t`` over a sweep of ``t`` chosen **and** scored on val (as the
pseudo-mask stage's sweep does), with the foreground IoU there. References in the same run: the
trivial mask (the tile's class everywhere) and the tissue prior (``t`` = 0).

Writes ``results.md`` / ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict

import torch
from foreground_signals import SignalScore, write_report

from pseudo_masks import ConfusionMatrix, segmentation_metrics, tissue_background
from segmix.config import apply_overrides, load_config
from segmix.data import mask_convention, read_label_mask, read_rgb, read_split
from segmix.localisers.base import fit_sample
from segmix.localisers.prototypes import (
    PrototypeLocaliser,
    build_prototypes,
    class_probability_of,
    describe,
)
from segmix.stages.localise import DEFAULTS as LOCALISER_DEFAULTS
from segmix.stages.run import DEFAULTS as PIPELINE_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the dataset's segmix config")
    parser.add_argument("--classifier", type=Path, default=None,
                        help="also name the prototypes by this classifier's class evidence")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 6, 8, 12])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fill", nargs="+", default=["median"], choices=["median", "blur"])
    parser.add_argument("--fit-tiles", type=int, default=LOCALISER_DEFAULTS["localiser"]["fit_tiles"])
    parser.add_argument("--set", action="append", default=[], help="more localiser.* overrides")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = apply_overrides(load_config(args.config, PIPELINE_DEFAULTS),
                             [f"localiser.fit_tiles={args.fit_tiles}", *args.set])
    if args.classifier:
        config["classifier"] = str(args.classifier)
    data, section = config["data"], config["localiser"]
    settings = PrototypeLocaliser.settings_of(section)
    classes = data["classes"]
    started = time.perf_counter()
    val = read_split(data, "val")
    convention = mask_convention(data)
    val_pixels = describe(val, settings)
    truths = [read_label_mask(s.mask, s.labels, len(classes), convention) for s in val]
    tissues = [~tissue_background(torch.from_numpy(read_rgb(s.image))[None])[0].numpy() for s in val]
    trivial = ConfusionMatrix(len(classes))
    for sample, truth in zip(val, truths):
        trivial.update(torch.full(truth.shape, sample.labels[0] + 1, dtype=torch.uint8),
                       torch.from_numpy(truth))
    class_probability = class_probability_of(config, classes) if args.classifier else None
    namings = [("labels", "labels", settings.fill)] + [
        (f"classifier, {fill} fill", "classifier", fill) for fill in args.fill if args.classifier]
    results: Dict[str, Dict] = {}
    for seed in args.seeds:
        samples = fit_sample(read_split(data, "train", progress=False), settings.fit_tiles, seed)
        fit_pixels = describe(samples, settings)
        for k in args.k:
            for naming, how, fill in namings:
                run = replace(settings, prototypes=k, seed=seed, naming=how, fill=fill)
                prototypes, shares, _ = build_prototypes(samples, run, len(classes), class_probability,
                                                         fit_pixels)
                score = SignalScore(len(classes))
                for sample, pixels, truth, tissue in zip(val, val_pixels, truths, tissues):
                    score.add(prototypes.foreground(pixels), truth, tissue, sample.labels[0] + 1)
                name = f"k={k}, {naming}"
                results.setdefault(name, {})[seed] = {**score.result(),
                                                      "scores": prototypes.scores.tolist(),
                                                      "area_shares": shares.tolist()}
                r = results[name][seed]
                print(f"{name}, seed {seed}: AUC {r['auc']:.3f}, best mIoU {100 * r['best_miou']:.1f}"
                      f" at {r['best_threshold']:.2f} ({time.perf_counter() - started:.0f} s)",
                      flush=True)
    trivial_scores = segmentation_metrics(trivial, "with_background")
    prior = next(iter(next(iter(results.values())).values()))["miou_at_0"]
    lines = [f"{args.config.name}: {len(samples)} train tiles fit the prototypes"
             f" ({settings.segments} superpixels each), {len(val)} val tiles scored; seeds"
             f" {args.seeds}. References: trivial mask mIoU {100 * trivial_scores['mIoU']:.1f}"
             f" (foreground IoU {100 * trivial_scores['foreground_iou']:.1f}), tissue prior mIoU"
             f" {100 * prior:.1f}.", "",
             "| prototypes, naming | AUC inside tissue | best mIoU | threshold | foreground IoU there |"
             " mIoU per seed |", "|---|---|---|---|---|---|"]

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name].values())

    for name in sorted(results, key=lambda n: -median(n, "best_miou")):
        per_seed = " / ".join(f"{100 * r['best_miou']:.1f}" for r in results[name].values())
        thresholds = sorted({r["best_threshold"] for r in results[name].values()})
        lines.append(f"| {name} | {median(name, 'auc'):.3f} | {100 * median(name, 'best_miou'):.1f} |"
                     f" {', '.join(f'{t:.2f}' for t in thresholds)} |"
                     f" {100 * median(name, 'best_foreground_iou'):.1f} | {per_seed} |")
    lines.append(f"\n(medians over seeds; {time.perf_counter() - started:.0f} s)")
    write_report(args.out, "\n".join(lines) + "\n",
                 {"trivial": trivial_scores, "tissue_prior_miou": prior,
                  "runs": {n: {str(s): r for s, r in v.items()} for n, v in results.items()}})


if __name__ == "__main__":
    main()

"""Real-data benchmark on EBHI-Seg: does shuffle feedback beat plain CAM, and how close to full
supervision does the final model get?

Arms (configs/ebhi_wsss/<arm>.yaml layered over configs/ebhi.yaml and its CAM-only variant
configs/ebhi_cam.yaml; same backbone, image size, epochs and seed): ``baseline`` (no shuffle
anywhere), ``segmix`` (shuffle + feedback curriculum, shuffle TTA, joint shuffle in segmentation),
``segmix_fixed`` (curriculum off), ``segmix_no_tta`` (reuses the segmix classifier),
``upper_bound`` (segmentation on ground truth), plus two references without learning: every pixel
= the tile's class, and the tissue prior only. Train split for training; val split for every
choice (the threshold sweep) and the report.

Each arm is a ``segmix run`` folder under ``--out``, so an interrupted benchmark continues where it
stopped when re-run with the same arguments. Writes ``results.json``, ``results.md``,
``val_examples_<arm>.png`` (image, ground truth, CAM of the tile's class, pseudo mask, prediction)
and ``curriculum.png`` (patch size, fix ratio and loss per epoch).

Usage:
  .venv/bin/python benchmarks/ebhi_wsss.py --quick            # smoke check, < 20 min on 2 CPU cores
  .venv/bin/python benchmarks/ebhi_wsss.py --epochs 12        # full mode (hours on a CPU; use a GPU)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from pseudo_masks import PROTOCOLS, ConfusionMatrix, segmentation_metrics, trivial_masks
from segmix.artifacts import SUMMARY_FILE
from segmix.config import apply_overrides, config_differences, load_config
from segmix.data import (
    dataset_classes,
    mask_convention,
    overlay,
    read_label_mask,
    read_mask_png,
    read_rgb,
    read_split,
)
from segmix.io import atomic_path, atomic_write_text, write_csv
from segmix.stages import pipeline, prepare_output_dir
from segmix.stages import run as run_stage

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("baseline", "segmix", "segmix_fixed", "segmix_no_tta", "upper_bound")
# Folders an arm borrows from another arm instead of computing them again.
BORROWS = {"segmix_no_tta": {"classifier": "segmix"}, "upper_bound": {"cams": "baseline"}}
ONLY = {"upper_bound": ["train-seg", "predict", "evaluate"]}


def quick_subset(csv_path: Path, out: Path, train_per_class: int, val_per_class: int,
                 seed: int = 0) -> Path:
    """A class-stratified subset of the labels CSV (absolute paths), for the quick mode."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = random.Random(seed)
    rng.shuffle(rows)
    keep, counts = [], {}
    limits = {"train": train_per_class, "val": val_per_class}
    for row in rows:
        key = (row["split"], row["label"])
        if row["split"] in limits and counts.get(key, 0) < limits[row["split"]]:
            counts[key] = counts.get(key, 0) + 1
            keep.append({**row, "image": str((csv_path.parent / row["image"]).resolve()),
                         "mask": str((csv_path.parent / row["mask"]).resolve())})
    path = out / "quick_data.csv"
    write_csv(path, keep)
    return path


def halve_patch_sizes(config: Dict[str, Any]) -> None:
    """Quick mode trains at 112 px: halve every shuffle patch size so the grids stay the same."""
    for section in ("augment", "seg_augment"):
        curriculum = config[section]["curriculum"]
        if curriculum["patch_sizes"]:
            curriculum["patch_sizes"] = [p // 2 for p in curriculum["patch_sizes"]]
    config["cam"]["shuffle_tta"]["patch_size"] //= 2


def arm_config(arm: str, data_csv: Path, args: argparse.Namespace) -> Dict[str, Any]:
    config = load_config(ROOT / "configs" / "ebhi.yaml", run_stage.DEFAULTS)
    config = load_config(ROOT / "configs" / "ebhi_cam.yaml", config)
    config = load_config(ROOT / "configs" / "ebhi_wsss" / f"{arm}.yaml", config)
    overrides = [f"data.train.path={data_csv}", f"data.val.path={data_csv}",
                 f"train.epochs={args.epochs}", f"seg_train.epochs={args.seg_epochs or args.epochs}"]
    if args.quick:
        overrides += ["data.image_size=112", "predict.scale=0.5"]
    config = apply_overrides(config, overrides + list(args.set))
    if args.quick:
        halve_patch_sizes(config)
    return config


def run_folder(config: Dict[str, Any], folder: Path, stages: Optional[List[str]] = None,
               borrow: Optional[Dict[str, Path]] = None) -> Dict[str, Any]:
    """Run (or continue) the pipeline's ``stages`` (all by default) in ``folder``, or read its
    summary if finished with the same settings; ``borrow`` links stage folders of another run."""
    if (folder / SUMMARY_FILE).exists():
        changed = config_differences(load_config(folder / "config.yaml", run_stage.DEFAULTS),
                                     config, {"output_dir", *run_stage.RESUMABLE_CHANGES})
        if changed:
            raise SystemExit(f"{folder} holds a finished run with other settings ({changed});"
                             " pass another --out")
        print(f"== {folder}: done, reading {folder / SUMMARY_FILE}", flush=True)
        return json.loads((folder / SUMMARY_FILE).read_text())
    print(f"== {folder}", flush=True)
    prepare_output_dir(run_stage, config, folder, overwrite=False)
    for name, source in (borrow or {}).items():
        if not (folder / name).exists():
            os.symlink(os.path.relpath(source, folder), folder / name)
    return pipeline.run_pipeline(config, folder, only=stages)


def run_arm(arm: str, config: Dict[str, Any], out: Path) -> Dict[str, Any]:
    borrow = {stage: out / source / stage for stage, source in BORROWS.get(arm, {}).items()}
    return run_folder(config, out / arm, ONLY.get(arm), borrow)


def references(data: Dict[str, Any]) -> Dict[str, Any]:
    """The two masks without learning, per split: the tile's class everywhere, and the tissue prior."""
    classes = dataset_classes(data)
    results: Dict[str, Any] = {"trivial": {}, "tissue_prior": {}}
    for split in ("train", "val"):
        matrices = {name: ConfusionMatrix(len(classes)) for name in results}
        for sample in read_split(data, split, progress=False):
            image = read_rgb(sample.image)
            truth = torch.from_numpy(read_label_mask(sample.mask, sample.labels, len(classes), mask_convention(data)))
            labels = torch.zeros(1, len(classes))
            labels[0, list(sample.labels)] = 1
            height, width = truth.shape
            images = torch.from_numpy(image).permute(2, 0, 1)[None]
            matrices["trivial"].update(trivial_masks(labels, height, width)[0], truth)
            matrices["tissue_prior"].update(trivial_masks(labels, height, width, images=images)[0],
                                            truth)
        for name, matrix in matrices.items():
            scores = segmentation_metrics(matrix, "with_background", classes)
            results[name][split] = {"mIoU": scores["mIoU"], "foreground_iou": scores["foreground_iou"]}
    return results


def arm_row(arm: str, summary: Dict[str, Any]) -> Dict[str, Any]:
    """One table row from an arm's ``summary.json`` (written by ``segmix run``)."""
    metrics = summary["metrics"]
    classifier = metrics.get("classifier") or {}
    segmenter = metrics.get("segmenter_training") or {}
    pseudo = metrics.get("pseudo_masks") or {}
    final = metrics["segmenter"]
    return {
        "arm": arm,
        "classifier_val_accuracy": classifier.get("val_accuracy"),
        "classifier_val_macro_f1": classifier.get("val_macro_f1"),
        **{f"pseudo_{split}_{key}": pseudo.get(split, {}).get(key) for split in ("train", "val")
           for key in ("mIoU", "foreground_iou")},
        "final_mIoU": final["mIoU"], "final_mIoU_classifier_label": final.get(
            "mIoU_classifier_label"), "final_foreground_iou": final["foreground_iou"],
        "final_FwIoU": final["FwIoU"], "final_mDice": final["mDice"], "final_iou": final["iou"],
        "final_mIoU_ignore_background": final["mIoU_ignore_background"],
        "classifier_images_per_s": classifier.get("images_per_s"),
        "segmenter_images_per_s": segmenter.get("images_per_s"),
        # stage wall times of this arm; a stage borrowed from another arm is counted there
        "seconds": sum(v for stage, v in summary["seconds"].items()
                       if v and summary["stages"][stage] not in BORROWS.get(arm, {})),
    }


def _pct(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _rate(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(rows: List[Dict[str, Any]], refs: Dict[str, Any], header: str) -> str:
    lines = [header, "",
             "| arm | cls val acc | pseudo train mIoU | pseudo train fg IoU | pseudo val mIoU |"
             " pseudo val fg IoU | final mIoU (no label) | final mIoU (cls label) | final fg IoU |"
             " final FwIoU | final mDice | cls img/s | seg img/s | wall min |",
             "|---" * 14 + "|"]
    for name, ref in refs.items():
        lines.append(f"| {name} (no learning) | | {_pct(ref['train']['mIoU'])} |"
                     f" {_pct(ref['train']['foreground_iou'])} | {_pct(ref['val']['mIoU'])} |"
                     f" {_pct(ref['val']['foreground_iou'])} | | | | | | | | |")
    for r in rows:
        acc = "" if r["classifier_val_accuracy"] is None else f"{r['classifier_val_accuracy']:.3f}"
        lines.append(
            f"| {r['arm']} | {acc} | {_pct(r['pseudo_train_mIoU'])} |"
            f" {_pct(r['pseudo_train_foreground_iou'])} | {_pct(r['pseudo_val_mIoU'])} |"
            f" {_pct(r['pseudo_val_foreground_iou'])} | {_pct(r['final_mIoU'])} |"
            f" {_pct(r['final_mIoU_classifier_label'])} | {_pct(r['final_foreground_iou'])} |"
            f" {_pct(r['final_FwIoU'])} | {_pct(r['final_mDice'])} |"
            f" {_rate(r['classifier_images_per_s'])} | {_rate(r['segmenter_images_per_s'])} |"
            f" {r['seconds'] / 60:.1f} |")
    classes = list(rows[0]["final_iou"]) if rows else []
    lines += ["", "Final model, val IoU per class (no label):", "",
              "| arm | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['arm']} | " + " | ".join(_pct(r["final_iou"][c]) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def _heat(cam: np.ndarray, image: np.ndarray) -> np.ndarray:
    x = np.clip(cam, 0, None)
    x = x / x.max() if x.max() > 0 else x
    rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], -1) * 255
    return (0.5 * image + 0.5 * rgb).astype(np.uint8)


def examples_figure(arm: str, out: Path, data: Dict[str, Any]) -> None:
    """Rows: one val tile per class; columns: image, truth, CAM of its class, pseudo mask,
    prediction (blank where the arm has no such stage of its own)."""
    import cv2
    from PIL import Image

    classes = dataset_classes(data)
    chosen: Dict[int, Any] = {}
    for sample in read_split(data, "val", progress=False):
        chosen.setdefault(sample.labels[0], sample)
    folder = out / arm
    own_cams = "cams" not in BORROWS.get(arm, {}) and arm not in ONLY
    rows = []
    for label in sorted(chosen):
        sample = chosen[label]
        stem = sample.image.stem
        image = read_rgb(sample.image)
        blank = np.full_like(image, 255)
        truth = read_label_mask(sample.mask, sample.labels, len(classes), mask_convention(data))
        cells = [image, overlay(image, truth, len(classes), alpha=0.6), blank]
        cam_file = folder / "cams" / "val" / f"{stem}.npz"
        if own_cams and cam_file.exists():
            with np.load(cam_file) as arrays:
                cam = arrays["cams"][label].astype(np.float32)
            cells[2] = _heat(cv2.resize(cam, image.shape[1::-1]), image)
        for mask_file in (folder / "pseudo-masks" / "masks" / "val" / f"{stem}.png",
                          folder / "predictions" / "masks" / f"{stem}.png"):
            cells.append(overlay(image, read_mask_png(mask_file), len(classes), alpha=0.6)
                         if mask_file.exists() else blank)
        rows.append(np.concatenate(cells, axis=1))
    with atomic_path(out / f"val_examples_{arm}.png") as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")


def curriculum_figure(out: Path, arms: List[str]) -> None:
    """Patch size, fix ratio and training loss per epoch of every shuffled training run.

    One row per stage, one colour and line style per arm, so arms whose trajectories coincide stay
    visible (a wide solid line under a narrow dashed one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ("classifier", "segmenter")
    styles = [dict(linestyle="-", linewidth=4.0, alpha=0.6), dict(linestyle="--", linewidth=1.8),
              dict(linestyle=":", linewidth=1.8)]
    fig, axes = plt.subplots(len(stages), 3, figsize=(14, 6.4), squeeze=False)
    for row, stage in zip(axes, stages):
        for arm in arms:
            path = out / arm / stage / "curriculum.csv"
            if not path.is_file() or (out / arm / stage).is_symlink():  # borrowed: drawn once
                continue
            with open(path, newline="") as handle:
                records = list(csv.DictReader(handle))
            epochs = [int(r["epoch"]) + 1 for r in records]
            drawn = len(row[2].lines)  # arms already in this row pick the line style
            style = dict(styles[drawn % len(styles)], color=f"C{arms.index(arm)}", label=arm)
            row[0].step(epochs, [float(r["patch_size"]) for r in records], where="mid", **style)
            row[1].step(epochs, [float(r["fix_ratio"]) for r in records], where="mid", **style)
            row[2].plot(epochs, [float(r["loss"]) for r in records], marker="o", markersize=3, **style)
        for ax, title in zip(row, ("patch size (px)", "fix ratio", "training loss")):
            ax.set_title(f"{stage}: {title}")
            ax.set_xlabel("epoch (the unshuffled cooldown epoch not shown)")
        if row[2].lines:  # no legend when no arm trained this stage with the shuffle
            row[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "curriculum.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ebhi-seg/labels.csv")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="112 px, a class-stratified subset, 2 epochs: a smoke check")
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (and seg)")
    parser.add_argument("--seg-epochs", type=int, default=None)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every arm")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 2 if args.quick else 12
    out = args.out or ROOT / "runs" / ("ebhi-wsss-quick" if args.quick else "ebhi-wsss")
    out.mkdir(parents=True, exist_ok=True)
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: pass --data path/to/ebhi-seg/labels.csv")
    data_csv = quick_subset(args.data, out, 40, 15) if args.quick else args.data.resolve()
    start = time.perf_counter()
    summaries = {}
    configs = {arm: arm_config(arm, data_csv, args) for arm in args.arms}
    for arm in args.arms:
        summaries[arm] = run_arm(arm, configs[arm], out)
    data = configs[args.arms[0]]["data"]
    refs = references(data)
    rows = [arm_row(arm, summaries[arm]) for arm in args.arms]
    for arm in args.arms:
        examples_figure(arm, out, data)
    curriculum_figure(out, args.arms)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    header = (f"EBHI-Seg WSSS benchmark ({'quick' if args.quick else 'full'} mode): "
              f"{platform.node()}, {device}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}; {args.epochs} classifier / {args.seg_epochs or args.epochs}"
              f" segmentation epochs; all arms {sum(r['seconds'] for r in rows) / 3600:.2f} h of"
              f" stage wall time (over every invocation), this invocation"
              f" {(time.perf_counter() - start) / 60:.1f} min")
    report = markdown(rows, refs, header)
    atomic_write_text(out / "results.md", report)
    atomic_write_text(out / "results.json", json.dumps(
        {"header": header, "references": refs, "arms": rows, "protocols": list(PROTOCOLS)},
        indent=2))
    print(report)


if __name__ == "__main__":
    main()

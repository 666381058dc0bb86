"""segmix against the plain classifier at convergence, over seeds: classifier accuracy, CAM pseudo
masks, and (``--stages`` up to evaluate) the final model.

Each arm is ``configs/ebhi_wsss/<arm>.yaml`` (``baseline``: no shuffle anywhere; ``segmix``: shuffle
feedback training and shuffle TTA) layered over ``--config`` (repeat it to layer files, as with
``segmix run``); ``--set`` overrides come last, for every arm; each (arm, seed) is a ``segmix run``
folder ``OUT/<arm>/seed<S>`` running ``--stages``, so an interrupted benchmark continues where it
stopped. A ``--variant NAME KEY=VALUE...`` re-runs the stages after the classifier on the same
classifier (and on its CAMs when the variant sets no ``cam.`` key) with other settings, in
``OUT/<arm>-<NAME>/seed<S>``: the same classifiers, another pseudo-mask recipe.

Writes ``OUT/results.md`` and ``OUT/results.json`` (one row per run, then mean and sd per arm) and
``OUT/curves.png`` (the classifier's training loss and val accuracy per epoch, every arm and seed).

Usage (a GPU: seconds per epoch; seeds in parallel processes, then ``--report`` alone):
  python benchmarks/convergence.py --config configs/ebhi.yaml --epochs 40 --seeds 0 1 2 \\
      --out runs/convergence-ebhi
  python benchmarks/convergence.py --config configs/wbc.yaml --epochs 100 --seeds 0 \\
      --variant gradcam localiser.method=none masks.foreground_weight=0 --out runs/convergence-wbc
  python benchmarks/convergence.py --config configs/wbc.yaml --out runs/convergence-wbc --report
  # the feature-axis pipeline, both arms through the final model (docs/benchmarks.md, "Feature-axis
  # localiser"): the arms then differ in the classifier's training alone
  python benchmarks/convergence.py --config configs/ebhi.yaml \
      --epochs 6 --seg-epochs 12 --seeds 0 1 2 --stages train-cls cams localise pseudo-masks \
      train-seg predict evaluate --set seg_augment.name=none --set cam.shuffle_tta.enabled=false \
      --out runs/axis-arms-seeds
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from ebhi_wsss import run_folder

from segmix.artifacts import SUMMARY_FILE
from segmix.config import apply_overrides, load_config
from segmix.io import atomic_path, atomic_write_text
from segmix.stages import pipeline

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("baseline", "segmix")
CLASSIFIER_STAGES = ["train-cls", "cams", "localise", "pseudo-masks"]
AFTER_CLASSIFIER = ["cams", "localise", "pseudo-masks", "train-seg", "predict", "evaluate"]


def arm_config(args: argparse.Namespace, arm: str, seed: int,
               variant: Sequence[str] = ()) -> Dict[str, Any]:
    config = pipeline.pipeline_defaults()
    for layer in args.config:
        config = load_config(layer, config)
    config = load_config(ROOT / "configs" / "ebhi_wsss" / f"{arm}.yaml", config)
    overrides = [f"seed={seed}", f"train.epochs={args.epochs}"]
    if args.seg_epochs:
        overrides.append(f"seg_train.epochs={args.seg_epochs}")
    return apply_overrides(config, overrides + list(args.set) + list(variant))


def train_arms(args: argparse.Namespace) -> None:
    for arm in args.arms:
        for seed in args.seeds:
            main_folder = args.out / arm / f"seed{seed}"
            run_folder(arm_config(args, arm, seed), main_folder, args.stages, {})
            for name, *overrides in args.variant:
                borrow = {"classifier": main_folder / "classifier"}
                if not any(o.startswith("cam.") for o in overrides):
                    borrow["cams"] = main_folder / "cams"
                stages = [s for s in args.stages if s not in borrow and s != "train-cls"]
                run_folder(arm_config(args, arm, seed, overrides),
                           args.out / f"{arm}-{name}" / f"seed{seed}", stages, borrow)


def epochs(folder: Path) -> List[Dict[str, float]]:
    path = folder / "classifier" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", "True", "False")}
                for row in csv.DictReader(handle)]


def run_row(arm: str, seed: int, folder: Path) -> Dict[str, Any]:
    metrics = json.loads((folder / SUMMARY_FILE).read_text())["metrics"]
    curve = epochs(folder)
    pseudo = metrics.get("pseudo_masks") or {}
    final = metrics.get("segmenter") or {}
    best = max(curve, key=lambda r: r.get("val_accuracy", 0.0)) if curve else {}
    return {
        "arm": arm, "seed": seed, "epochs": len(curve),
        "val_accuracy": curve[-1].get("val_accuracy") if curve else None,
        "val_macro_f1": curve[-1].get("val_macro_f1") if curve else None,
        "best_val_accuracy": best.get("val_accuracy"),
        "best_epoch": int(best["epoch"]) + 1 if best else None,
        "train_loss": curve[-1].get("train_loss") if curve else None,
        **{f"pseudo_{split}_{key}": (pseudo.get(split) or {}).get(key)
           for split in ("train", "val") for key in ("mIoU", "foreground_iou")},
        "final_mIoU": final.get("mIoU"), "final_foreground_iou": final.get("foreground_iou"),
        "final_mIoU_classifier_label": final.get("mIoU_classifier_label"),
    }


NUMBERS = ("val_accuracy", "val_macro_f1", "best_val_accuracy", "pseudo_train_mIoU",
           "pseudo_train_foreground_iou", "pseudo_val_mIoU", "pseudo_val_foreground_iou",
           "final_mIoU", "final_foreground_iou", "final_mIoU_classifier_label")


def aggregate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and sample sd of every number, per arm."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        entry: Dict[str, Any] = {"arm": arm, "seeds": [r["seed"] for r in mine]}
        for key in NUMBERS:
            values = [r[key] for r in mine if r[key] is not None]
            if values:
                entry[key] = statistics.mean(values)
                entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def _cell(value: Optional[float], percent: bool = True, sd: Optional[float] = None) -> str:
    if value is None:
        return ""
    scale, digits = (100, ".1f") if percent else (1, ".3f")
    text = f"{scale * value:{digits}}"
    return text if sd is None else f"{text} ± {scale * sd:{digits}}"


def markdown(rows: List[Dict[str, Any]], summary: List[Dict[str, Any]], header: str) -> str:
    columns = [("val_accuracy", False), ("val_macro_f1", False), ("pseudo_val_mIoU", True),
               ("pseudo_val_foreground_iou", True), ("pseudo_train_mIoU", True),
               ("final_mIoU", True), ("final_foreground_iou", True)]
    head = "| arm | seeds | cls val acc | cls val macro F1 | pseudo val mIoU | pseudo val fg IoU |" \
           " pseudo train mIoU | final mIoU | final fg IoU |"
    lines = [header, "", head, "|---" * 9 + "|"]
    for entry in summary:
        cells = [_cell(entry.get(k), pct, entry.get(f"{k}_sd")) for k, pct in columns]
        lines.append(f"| {entry['arm']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Per run (last epoch; best val accuracy and its epoch in brackets):", "",
              head.replace("| seeds |", "| seed |"), "|---" * 9 + "|"]
    for r in rows:
        cells = [_cell(r[k], pct) for k, pct in columns]
        if r["best_val_accuracy"] is not None:
            cells[0] += f" ({r['best_val_accuracy']:.3f}, ep {r['best_epoch']})"
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curves_figure(out: Path, runs: List[tuple]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    arms = list(dict.fromkeys(arm for arm, _, _ in runs))
    for arm, seed, folder in runs:
        curve = epochs(folder)
        if not curve or folder.joinpath("classifier").is_symlink():
            continue
        x = [r["epoch"] + 1 for r in curve]
        style = dict(color=f"C{arms.index(arm)}", alpha=0.8, linestyle=["-", "--", ":", "-."][seed % 4],
                     label=f"{arm} seed {seed}")
        axes[0].plot(x, [r["train_loss"] for r in curve], **style)
        axes[1].plot(x, [r.get("val_accuracy", float("nan")) for r in curve], **style)
    for ax, title in zip(axes, ("classifier training loss", "classifier val accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    runs = sorted((arm_dir.name, int(seed_dir.name[4:]), seed_dir)
                  for arm_dir in args.out.iterdir() if arm_dir.is_dir()
                  for seed_dir in arm_dir.glob("seed*")
                  if (seed_dir / SUMMARY_FILE).exists())
    if not runs:
        raise SystemExit(f"no finished runs under {args.out}")
    rows = [run_row(arm, seed, folder) for arm, seed, folder in runs]
    summary = aggregate(rows)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    header = (f"{' + '.join(map(str, args.config))}: {max(r['epochs'] for r in rows)} classifier"
              f" epochs, arms over seeds"
              f" (mean ± sd); report written on {platform.node()}, {device}, torch"
              f" {torch.__version__}")
    atomic_write_text(args.out / "results.md", markdown(rows, summary, header))
    atomic_write_text(args.out / "results.json", json.dumps(
        {"header": header, "runs": rows, "arms": summary}, indent=2))
    curves_figure(args.out, runs)
    print(markdown(rows, summary, header))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="YAML config; repeat to layer files, later ones over earlier ones")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40, help="classifier epochs")
    parser.add_argument("--seg-epochs", type=int, default=None)
    parser.add_argument("--stages", nargs="+", default=CLASSIFIER_STAGES,
                        choices=["train-cls", *AFTER_CLASSIFIER])
    parser.add_argument("--variant", nargs="+", action="append", default=[],
                        metavar=("NAME", "KEY=VALUE"),
                        help="another recipe after the classifier, on the same classifiers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every arm")
    parser.add_argument("--report", action="store_true", help="only gather the finished runs")
    args = parser.parse_args()
    if not args.report:
        train_arms(args)
    report(args)


if __name__ == "__main__":
    main()

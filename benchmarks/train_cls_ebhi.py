"""Stage 1 on real data: train the EBHI-Seg classifier with ``augment: none`` and ``segmix``.

    python benchmarks/train_cls_ebhi.py --data ../shared/data/ebhi-seg --epochs 6 --out runs/bench-cls
        [--arms none segmix] [--set train.amp=false ...]

Each arm runs ``segmix train-cls --config configs/ebhi.yaml`` with the same seed, backbone (offline
EfficientNet-Lite0 weights), image size and epochs; only ``augment.name`` differs. An arm that was
interrupted resumes; a finished arm is read back, not retrained. Prints a markdown table (validation
accuracy / macro F1 / mAP at the last epoch and the best macro F1, training images/s, wall time) and
writes it with a JSON copy into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parent.parent


def read_metrics(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_arm(arm: str, args: argparse.Namespace) -> Dict[str, object]:
    out = args.out / arm
    labels = args.data / "labels.csv"
    command = [
        sys.executable, "-m", "segmix.cli", "train-cls", "--config", str(args.config),
        "--output-dir", str(out),
        "--set", f"augment.name={arm}", "--set", f"train.epochs={args.epochs}",
        "--set", f"data.train.path={labels}", "--set", f"data.val.path={labels}",
        "--set", f"train.num_workers={args.num_workers}", "--set", f"seed={args.seed}",
        *[part for setting in args.set for part in ("--set", setting)],
    ]
    wall = None
    if not (out / "classifier.pt").exists():
        if (out / "checkpoints" / "last.pt").exists():
            command.append("--resume")
        print(f"== {arm}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
    rows = read_metrics(out / "metrics.csv")
    last = rows[-1]
    train_seconds = sum(float(r["train_seconds"]) for r in rows)
    images = sum(float(r["images_per_s"]) * float(r["train_seconds"]) for r in rows)
    return {
        "arm": arm,
        "epochs": len(rows),
        "val_accuracy": float(last["val_accuracy"]),
        "val_macro_f1": float(last["val_macro_f1"]),
        "val_mAP": float(last["val_mAP"]),
        "best_val_macro_f1": max(float(r["val_macro_f1"]) for r in rows),
        "train_images_per_s": images / train_seconds,
        "wall_seconds": wall,
        "curriculum": [
            {k: r[k] for k in ("epoch", "train_loss", "shuffle_patch_size", "shuffle_fix_ratio")}
            for r in rows if "shuffle_patch_size" in r
        ],
    }


def table(results: List[Dict[str, object]]) -> str:
    lines = ["| arm | epochs | val accuracy | val macro F1 | val mAP | best val macro F1 |"
             " train images/s | wall time (this run) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        wall = f"{r['wall_seconds'] / 60:.1f} min" if r["wall_seconds"] else "(read back)"
        lines.append(f"| {r['arm']} | {r['epochs']} | {r['val_accuracy']:.3f} |"
                     f" {r['val_macro_f1']:.3f} | {r['val_mAP']:.3f} | {r['best_val_macro_f1']:.3f} |"
                     f" {r['train_images_per_s']:.1f} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ebhi-seg")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ebhi.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-cls")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arms", nargs="+", default=["none", "segmix"])
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every arm, e.g. train.amp=false")
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(f"no labels.csv in {args.data}: pass --data <folder of EBHI-Seg>")
    args.data, args.out = args.data.resolve(), args.out.resolve()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    results = [run_arm(arm, args) for arm in args.arms]
    text = table(results)
    extra = f", overrides {' '.join(args.set)}" if args.set else ""
    print(f"\nEBHI-Seg val split, {args.epochs} epochs, seed {args.seed}, device: {device},"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads{extra}\n{text}")
    for r in results:
        if r["curriculum"]:
            print(f"\ncurriculum of {r['arm']}: " + "; ".join(
                f"epoch {c['epoch']}: patch {c['shuffle_patch_size']}, ratio {c['shuffle_fix_ratio']},"
                f" loss {float(c['train_loss']):.4f}" for c in r["curriculum"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Classifier arms with seeds: ``segmix train-cls`` once per arm and seed, then val accuracy, macro
F1 and per-class F1 of each final classifier, with the mean over seeds.

    .venv/bin/python benchmarks/classifier_arms.py --config configs/wbc.yaml --out runs/arms-wbc \
        --seeds 0 1 --arm base= \
        --arm supcon=train.difficulty.contrastive.weight=0.5 \
        --arm supcon_hn=train.difficulty.contrastive.weight=0.5,train.difficulty.contrastive.hard_negatives=0.5 \
        [--set train.difficulty.enabled=true ...]

``--set`` applies to every arm; an arm is ``name=key=value,key=value`` (``name=``: the config as it
is). A finished arm is read back, an interrupted one resumes. Prints a markdown table and writes
``arms.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from segmix.config import apply_overrides, load_config
from segmix.data import TileDataset, build_transform, dataset_classes, read_split
from segmix.models.factory import load_classifier
from segmix.stages.pipeline import pipeline_defaults


def parse_arm(text: str) -> Tuple[str, List[str]]:
    name, _, settings = text.partition("=")
    return name, [s for s in settings.split(",") if s]


def val_predictions(config_path: Path, settings: List[str], classifier_path: Path
                    ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Top class and true class of every single-label val tile under the final classifier."""
    config = apply_overrides(load_config(config_path, pipeline_defaults()), settings)
    data = config["data"]
    classes = dataset_classes(data)
    model, info = load_classifier(classifier_path, classes=classes)
    dataset = TileDataset(read_split(data, "val"), len(classes),
                          build_transform([], tuple(info["image_size"]), info["mean"], info["std"]))
    predicted, truth = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=32):
            predicted.append(model(batch["image"]).argmax(dim=1))
            truth.append(batch["target"].argmax(dim=1))
    return torch.cat(predicted).numpy(), torch.cat(truth).numpy(), classes


def scores(predicted: np.ndarray, truth: np.ndarray, classes: List[str]) -> Dict[str, object]:
    per_class = {}
    for k, name in enumerate(classes):
        tp = int(((predicted == k) & (truth == k)).sum())
        fp = int(((predicted == k) & (truth != k)).sum())
        fn = int(((predicted != k) & (truth == k)).sum())
        per_class[name] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    present = [v for v in per_class.values() if v == v]
    return {"accuracy": float((predicted == truth).mean()),
            "macro_f1": float(np.mean(present)), "f1": per_class}


def run_arm(args: argparse.Namespace, name: str, settings: List[str], seed: int) -> Dict[str, object]:
    out = args.out / f"{name}-s{seed}"
    every = [*args.set, f"seed={seed}", *settings]
    command = [sys.executable, "-m", "segmix.cli", "train-cls", "--config", str(args.config),
               "--output-dir", str(out)] + [a for s in every for a in ("--set", s)]
    if not (out / "classifier.pt").exists():
        resume = ["--resume"] if (out / "checkpoints" / "last.pt").exists() else []
        subprocess.run(command + resume, check=True)
    predicted, truth, classes = val_predictions(args.config, every, out / "classifier.pt")
    result = scores(predicted, truth, classes)
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    result["best_val_macro_f1"] = max(float(r["val_macro_f1"]) for r in rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=K=V,K=V")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict[int, Dict[str, object]]] = {}
    for text in args.arm:
        name, settings = parse_arm(text)
        results[name] = {seed: run_arm(args, name, settings, seed) for seed in args.seeds}
    classes = list(next(iter(next(iter(results.values())).values()))["f1"])
    header = ["arm", *[f"acc s{s}" for s in args.seeds], "acc mean",
              *[f"macro F1 s{s}" for s in args.seeds], "macro F1 mean",
              *[f"F1 {c}" for c in classes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, by_seed in results.items():
        acc = [by_seed[s]["accuracy"] for s in args.seeds]
        f1 = [by_seed[s]["macro_f1"] for s in args.seeds]
        per_class = [np.nanmean([by_seed[s]["f1"][c] for s in args.seeds]) for c in classes]
        cells = [name, *[f"{a:.3f}" for a in acc], f"**{np.mean(acc):.3f}**",
                 *[f"{f:.3f}" for f in f1], f"**{np.mean(f1):.3f}**",
                 *[f"{v:.2f}" for v in per_class]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"{platform.node()}, {torch.get_num_threads()} threads; val, final epoch;"
          f" per-class F1 is the mean over seeds")
    print(table)
    (args.out / "arms.json").write_text(json.dumps(
        {"config": str(args.config), "set": args.set, "arms": args.arm, "seeds": args.seeds,
         "results": {n: {str(s): r for s, r in by_seed.items()} for n, by_seed in results.items()},
         "table": table}, indent=2))


if __name__ == "__main__":
    main()

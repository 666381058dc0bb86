"""Label noise found by the difficulty memory: flip a share of the train labels, train, compare.

    .venv/bin/python benchmarks/label_noise.py --config configs/wbc.yaml --output runs/noise-wbc \
        [--fraction 0.1] [--seed 0] [--set train.difficulty.window=3 ...]

Writes a copy of the config's train CSV (``data.train.path``, every split kept, image and mask paths
made absolute) with ``fraction`` of the train tiles' labels changed to another class, drawn with
``seed``; trains ``segmix train-cls`` on it with ``train.difficulty.enabled=true`` (and any
``--set``); then reads ``difficulty.csv``: how many flipped tiles the noisy list holds (recall) and
how many of its tiles were flipped (precision), per grade. Prints a table and writes
``label_noise.json`` in the output folder. Single-label CSVs (one class per row).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from segmix.config import apply_overrides, load_config
from segmix.data import dataset_classes
from segmix.stages.pipeline import pipeline_defaults
from segmix.stages.train_cls import DIFFICULTY_FILE


def write_noisy_csv(source: Path, target: Path, classes: List[str], fraction: float,
                    seed: int) -> List[str]:
    """Copy ``source`` to ``target`` with ``fraction`` of its train rows relabelled; returns the
    flipped images (absolute paths, as written)."""
    with open(source, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        for column in ("image", "mask"):
            if row.get(column):
                row[column] = str((source.parent / row[column]).resolve())
    train = [i for i, row in enumerate(rows) if row.get("split", "train") == "train"]
    rng = np.random.default_rng(seed)
    flipped = rng.choice(train, size=round(fraction * len(train)), replace=False)
    for index in flipped:
        others = [c for c in classes if c != rows[index]["label"]]
        rows[index]["label"] = others[int(rng.integers(len(others)))]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return sorted(rows[i]["image"] for i in flipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = apply_overrides(load_config(args.config, pipeline_defaults()), args.set)
    source = Path(config["data"]["train"]["path"])
    noisy_csv = args.output / "noisy_labels.csv"
    flipped = write_noisy_csv(source, noisy_csv, dataset_classes(config["data"]), args.fraction,
                              args.seed)
    classifier = args.output / "classifier"
    settings = [f"data.train.path={noisy_csv}", "train.difficulty.enabled=true", *args.set]
    command = [sys.executable, "-m", "segmix.cli", "train-cls", "--config", str(args.config),
               "--output-dir", str(classifier)] + [a for s in settings for a in ("--set", s)]
    if not (classifier / "classifier.pt").exists():  # an interrupted training resumes
        resume = ["--resume"] if (classifier / "checkpoints" / "last.pt").exists() else []
        subprocess.run(command + resume, check=True)
    with open(classifier / DIFFICULTY_FILE, newline="") as handle:
        table = list(csv.DictReader(handle))
    flipped_set = set(flipped)
    result: Dict[str, object] = {"config": str(args.config), "fraction": args.fraction,
                                 "seed": args.seed, "set": args.set, "tiles": len(table),
                                 "flipped": len(flipped), "grades": {}}
    lines = ["| grade | tiles | of them flipped | precision | recall |", "|---|---|---|---|---|"]
    for grade in ("noisy", "hard", "easy"):
        tiles = [row["image"] for row in table if row["difficulty"] == grade]
        hits = sum(str(Path(t).resolve()) in flipped_set for t in tiles)
        precision = hits / len(tiles) if tiles else float("nan")
        recall = hits / len(flipped) if flipped else float("nan")
        result["grades"][grade] = {"tiles": len(tiles), "flipped": hits, "precision": precision,
                                   "recall": recall}
        lines.append(f"| {grade} | {len(tiles)} | {hits} | {precision:.2f} | {recall:.2f} |")
    with open(classifier / "metrics.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    result["val_accuracy"] = float(last["val_accuracy"]) if last.get("val_accuracy") else None
    (args.output / "label_noise.json").write_text(json.dumps(result, indent=2))
    print(f"{len(flipped)} of {len(table)} train labels flipped (seed {args.seed});"
          f" val accuracy {result['val_accuracy']}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

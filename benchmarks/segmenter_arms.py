"""Final-model arms against their own upper bounds: the segmentation stage trained again on the
pseudo masks of finished ``segmix run`` folders, once per arm, and (``--upper-bound``) the same arm
on the true masks; every model predicts the val split as the run predicts it and is scored as the
run scores its own (with background, tile label unknown). Prints val mIoU, foreground IoU and
per-class IoU per arm (means over the runs), and each arm's share of its upper bound.

    .venv/bin/python benchmarks/segmenter_arms.py --runs runs/wbc-s0 runs/wbc-s1 \
        --out runs/seg-arms-wbc --upper-bound --arm shuffle= --arm none=seg_augment.name=none

Each run trains with its own saved config (``<run>/config.yaml``: seed, data and recipe) and its
pseudo masks; ``--set`` applies to every arm; an arm is ``name=key=value,key=value`` (``name=``:
the run's recipe as it is: on the pseudo masks that is the run's own model, whose evaluation is
read, not trained again). ``--val-data CSV`` scores against another val CSV (a labels-only run's
split with its masks). A finished step is read back, an interrupted training resumes. Writes
``arms.json`` in ``--out``.

Three seeds of the default path against the bound trained the same way (on a GPU, at once):

    for s in 0 1 2; do segmix run --config configs/ebhi.yaml --set seed=$s \
        --output-dir runs/ebhi-s$s & done; wait
    .venv/bin/python benchmarks/segmenter_arms.py --runs runs/ebhi-s0 runs/ebhi-s1 runs/ebhi-s2 \
        --out runs/ebhi-arms --upper-bound --arm default= --jobs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from classifier_arms import parse_arm  # a sibling script in benchmarks/: the same arm syntax

ARM_TARGETS = {"pseudo masks": [], "upper bound": ["targets=ground_truth"]}


def segmix(stage: str, run: Path, out: Path, settings: List[str], log: Optional[Path]) -> None:
    """``segmix <stage> --config <run>/config.yaml`` into ``out`` with ``settings``; its output
    goes to ``log`` (appended) when given, else to this terminal."""
    command = [sys.executable, "-m", "segmix.cli", stage, "--config", str(run / "config.yaml"),
               "--output-dir", str(out)] + [a for s in settings for a in ("--set", s)]
    if stage == "train-seg" and (out / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    if log is None:
        subprocess.run(command, check=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as stream:
        if subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"segmix {stage} into {out} failed: see {log}")


def run_arm(run: Path, out: Path, settings: List[str], val_data: Optional[Path],
            logged: bool = False) -> Dict[str, object]:
    """Train, predict and score one arm of one run; returns the with-background val metrics.
    Without settings or ``val_data`` the arm is the run's own model: its evaluation is read.
    ``logged``: each step's output goes to ``<out>/log.txt`` (for arms trained side by side)."""
    metrics_file = out / "evaluation" / "metrics.json"
    if not settings and not val_data:
        metrics_file = run / "evaluation" / "metrics.json"
        if not metrics_file.exists():
            raise FileNotFoundError(f"{metrics_file} does not exist: an arm without settings is"
                                    f" the run's own model (re-run segmix run to finish {run})")
    elif not metrics_file.exists():
        log = out / "log.txt" if logged else None
        data = [f"data.val.path={val_data}"] if val_data else []
        segmenter = out / "segmenter" / "segmenter.pt"
        if not segmenter.exists():
            segmix("train-seg", run, out / "segmenter",
                   [f"pseudo_masks_dir={run / 'pseudo-masks'}", *data, *settings], log)
        if not (out / "predictions" / "summary.json").exists():
            segmix("predict", run, out / "predictions",
                   [f"segmenter_path={segmenter}", "split=val", *data], log)
        segmix("evaluate", run, out / "evaluation",
               [f"predictions={out / 'predictions' / 'masks'}", "split=val", *data], log)
    metrics = json.loads(metrics_file.read_text())["with_background"]
    return {"mIoU": metrics["mIoU"], "foreground_iou": metrics["foreground_iou"],
            "iou": metrics["iou"]}


def table(results: Dict[str, Dict[str, Dict[str, Dict[str, object]]]], runs: List[str]) -> str:
    """One row per arm and target: mean over runs of mIoU (and each run's), foreground IoU, share
    of the arm's upper bound, per-class IoU; in %."""
    first = next(iter(next(iter(results.values())).values()))
    classes = list(next(iter(first.values()))["iou"])
    header = ["arm", "trained on", *[f"mIoU {r}" for r in runs], "mIoU mean", "fg IoU",
              "/ upper bound", *classes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, by_target in results.items():
        bound = by_target.get("upper bound")
        for target, by_run in by_target.items():
            mean = np.mean([by_run[r]["mIoU"] for r in runs])
            share = (f"{100 * mean / np.mean([bound[r]['mIoU'] for r in runs]):.0f}%"
                     if bound and target != "upper bound" else "")
            cells = [arm, target, *[f"{100 * by_run[r]['mIoU']:.1f}" for r in runs],
                     f"**{100 * mean:.1f}**",
                     f"{100 * np.mean([by_run[r]['foreground_iou'] for r in runs]):.1f}", share,
                     *[f"{100 * np.mean([by_run[r]['iou'][c] for r in runs]):.1f}"
                       for c in classes]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True,
                        help="finished segmix run folders (each with config.yaml, pseudo-masks/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=K=V,K=V")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--upper-bound", action="store_true",
                        help="also train each arm on the true masks")
    parser.add_argument("--val-data", type=Path, help="a val CSV with masks to score against")
    parser.add_argument("--jobs", type=int, default=1,
                        help="arms trained at once (on a GPU, where two data-loading workers a"
                             " job leave it idle); each one's output goes to <its folder>/log.txt")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    for run in args.runs:
        for needed in (run / "config.yaml", run / "pseudo-masks" / "summary.json"):
            if not needed.exists():
                parser.error(f"{needed} does not exist: --runs takes finished segmix run folders")
    targets = ARM_TARGETS if args.upper_bound else {"pseudo masks": []}
    names = [run.name for run in args.runs]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            arm: {target: {run.name: pool.submit(
                run_arm, run, args.out / run.name / (arm + ("-ub" if extra else "")),
                [*args.set, *settings, *extra], args.val_data, args.jobs > 1)
                for run in args.runs} for target, extra in targets.items()}
            for arm, settings in map(parse_arm, args.arm)}
        results = {arm: {target: {name: future.result() for name, future in by_run.items()}
                         for target, by_run in by_target.items()}
                   for arm, by_target in futures.items()}
    text = table(results, names)
    print(f"{platform.node()}, {torch.get_num_threads()} threads; val, with background, final"
          " epoch; per-class IoU is the mean over runs (%)")
    print(text)
    (args.out / "arms.json").write_text(json.dumps(
        {"runs": [str(r) for r in args.runs], "set": args.set, "arms": args.arm,
         "upper_bound": args.upper_bound, "val_data": str(args.val_data or ""),
         "results": results, "table": text}, indent=2))


if __name__ == "__main__":
    main()

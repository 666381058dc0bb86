"""``segmix run``: every stage in one output folder, from image-level labels to a scored model.

train-cls -> cams -> pseudo-masks -> train-seg -> predict -> evaluate, each in its own subfolder of
``output_dir`` (``classifier/``, ``cams/``, ``pseudo-masks/``, ``segmenter/``, ``predictions/``,
``evaluation/``) with its own resolved ``config.yaml``. The config holds every stage's sections
(one file serves all); the paths that connect the stages and the splits each works on are set
here. A stage whose outputs are complete is skipped, an interrupted training stage resumes from
its checkpoint, and the other stages compute only their missing files, so re-running the same
command after an interruption continues the run. ``summary.json`` (marks the run finished) gathers
the metrics of every stage and their wall times (each stage folder keeps its time in
``seconds.json``, summed over the invocations that worked on it, interrupted ones included).
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

from .data import read_split
from .io import atomic_write_text, read_json
from .run_folders import prepare_output_dir
from .stage_clock import StageClock, recorded_seconds
from .training import checkpoint_path

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "STAGES", "run"]

DONE_FILE = "summary.json"
TIMING_FILE = "seconds.json"  # in each stage folder: its wall time over all invocations (StageClock)
Wiring = Callable[[Path, List[str]], Dict[str, Any]]


@dataclass(frozen=True)
class PipelineStage:
    """A stage of the pipeline: its CLI name, module, subfolder and the keys the pipeline sets."""

    name: str
    module: str
    folder: str
    wiring: Wiring
    needs_val: bool = False  # predicts or scores the validation split

    def load(self) -> ModuleType:
        return importlib.import_module(f"segmix.{self.module}")


STAGES = (
    PipelineStage("train-cls", "train_cls", "classifier", lambda out, splits: {}),
    PipelineStage("cams", "cams_stage", "cams", lambda out, splits: {
        "classifier": str(out / "classifier" / "classifier.pt"), "splits": splits}),
    PipelineStage("pseudo-masks", "pseudo_stage", "pseudo-masks", lambda out, splits: {
        "cams_dir": str(out / "cams"), "splits": splits}),
    PipelineStage("train-seg", "train_seg", "segmenter", lambda out, splits: {
        "pseudo_masks_dir": str(out / "pseudo-masks")}),
    PipelineStage("predict", "predict_stage", "predictions", lambda out, splits: {
        "segmenter_path": str(out / "segmenter" / "segmenter.pt"), "split": "val", "input": None,
        "input_split": None}, needs_val=True),
    PipelineStage("evaluate", "evaluate_stage", "evaluation", lambda out, splits: {
        "predictions": str(out / "predictions" / "masks"), "split": "val",
        "tile_classes_from": str(out / "cams")}, needs_val=True),
)
# Keys the pipeline sets for its stages; a config file may hold them (for single stages), but
# `segmix run` does not read them.
WIRED = frozenset(key for stage in STAGES for key in stage.wiring(Path("."), []))


def _pipeline_defaults() -> Dict[str, Any]:
    defaults: Dict[str, Any] = {"output_dir": "runs/pipeline"}
    for stage in STAGES:
        for key, value in stage.load().DEFAULTS.items():
            if key in WIRED or key == "output_dir":
                continue
            if key in defaults and defaults[key] != value:
                raise RuntimeError(f"stages disagree on the default of {key!r}: {defaults[key]!r}"
                                   f" vs {value!r} ({stage.module})")
            defaults.setdefault(key, copy.deepcopy(value))
    return defaults


DEFAULTS: Dict[str, Any] = _pipeline_defaults()
RESUMABLE_CHANGES = set().union(*(getattr(s.load(), "RESUMABLE_CHANGES", set()) for s in STAGES))


def stage_config(stage: PipelineStage, config: Dict[str, Any], output_dir: Path,
                 splits: List[str]) -> Dict[str, Any]:
    """The config of one stage: its keys from the pipeline config, plus the pipeline's wiring."""
    defaults = stage.load().DEFAULTS
    result = {key: copy.deepcopy(config[key]) for key in defaults if key in config}
    result.update(stage.wiring(output_dir, splits))
    result["output_dir"] = str(output_dir / stage.folder)
    return result


def _val_state(data: Dict[str, Any]) -> str:
    """``none`` (no val split configured), ``unlabelled`` (some tiles lack masks) or ``labelled``."""
    if not (data.get("val") or {}).get("path"):
        return "none"
    samples = read_split({**data, "verify_files": False}, "val", progress=False)
    return "labelled" if all(s.mask for s in samples) else "unlabelled"


def _last_epoch(folder: Path) -> Optional[Dict[str, Any]]:
    """Loss, speed and validation metrics of a training stage's last epoch (``metrics.csv``)."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {k: float(v) for k, v in last.items()
            if v and (k.startswith("val_") or k in ("train_loss", "images_per_s"))}


def collect_metrics(output_dir: Path) -> Dict[str, Any]:
    """The headline numbers of every finished stage of a pipeline folder."""
    pseudo = read_json(output_dir / "pseudo-masks" / "metrics.json") or {}
    final = read_json(output_dir / "evaluation" / "metrics.json")
    summary: Dict[str, Any] = {
        "classifier": _last_epoch(output_dir / "classifier"),
        "segmenter_training": _last_epoch(output_dir / "segmenter"),
        "pseudo_masks": {split: {"mIoU": m["with_background"]["mIoU"],
                                 "mIoU_ignore_background": m["ignore_background"]["mIoU"],
                                 "foreground_iou": m["with_background"]["foreground_iou"]}
                         for split, m in pseudo.items()},
        "segmenter": None,
    }
    if final is not None:
        summary["segmenter"] = {
            "mIoU": final["with_background"]["mIoU"], "FwIoU": final["with_background"]["FwIoU"],
            "mDice": final["with_background"]["mDice"],
            "foreground_iou": final["with_background"]["foreground_iou"],
            "mIoU_ignore_background": final["ignore_background"]["mIoU"],
            "iou": final["with_background"]["iou"]}
        if "classifier_label" in final:
            summary["segmenter"]["mIoU_classifier_label"] = final["classifier_label"]["mIoU"]
    return summary


def run(config: Dict[str, Any], output_dir: Path, *, overwrite: bool = False,
        only: Optional[List[str]] = None, **_: Any) -> Dict[str, Any]:
    """Run (or continue) every stage, or the stages named in ``only``; returns the summary
    written to ``summary.json``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("segmix run is one process; for several GPUs launch train-cls and"
                         " train-seg under torchrun, and the other stages on their own")
    unknown = sorted(set(only or ()) - {s.name for s in STAGES})
    if unknown:
        raise ValueError(f"unknown stages {unknown}; valid: {[s.name for s in STAGES]}")
    val = _val_state(config["data"])
    splits = ["train"] + (["val"] if val != "none" else [])
    seconds: Dict[str, Optional[float]] = {}
    for number, stage in enumerate(STAGES, start=1):
        module, folder = stage.load(), output_dir / stage.folder
        header = f"[{number}/{len(STAGES)}] {stage.name} -> {folder}"
        skip_reason, done = None, False
        if only is not None and stage.name not in only:
            skip_reason = "not asked for"
        elif stage.needs_val and val == "none":
            skip_reason = "no data.val split to predict"
        elif stage.name == "evaluate" and val == "unlabelled":
            skip_reason = "the val split has no ground-truth masks to score against"
        elif (folder / module.DONE_FILE).exists() and not overwrite:
            skip_reason, done = f"done ({module.DONE_FILE} exists)", True
        if skip_reason:
            print(f"{header}: skipped, {skip_reason}", flush=True)
            seconds[stage.name] = recorded_seconds(folder / TIMING_FILE) if done else None
            continue
        print(header, flush=True)
        settings = stage_config(stage, config, output_dir, splits)
        prepare_output_dir(module, settings, folder, overwrite=overwrite)
        resume = not overwrite and checkpoint_path(folder).exists()
        with StageClock(folder / TIMING_FILE, fresh=overwrite) as clock:
            module.run(settings, folder, resume=resume, overwrite=overwrite)
        seconds[stage.name] = clock.seconds
    summary = {"metrics": collect_metrics(output_dir), "seconds": seconds,
               "stages": {s.name: s.folder for s in STAGES}}
    atomic_write_text(output_dir / DONE_FILE, json.dumps(summary, indent=2))
    print_summary(summary["metrics"])
    return summary


def print_summary(metrics: Dict[str, Any]) -> None:
    """A short table of the pipeline's results."""
    lines = ["", "results (with background, tile label unknown to the final model):"]
    classifier = metrics.get("classifier") or {}
    if "val_accuracy" in classifier:
        lines.append(f"  classifier       val accuracy {classifier['val_accuracy']:.3f},"
                     f" macro F1 {classifier.get('val_macro_f1', float('nan')):.3f}")
    for split, m in metrics.get("pseudo_masks", {}).items():
        lines.append(f"  pseudo masks     {split:5s} mIoU {m['mIoU']:.3f}, foreground IoU"
                     f" {m['foreground_iou']:.3f}")
    final = metrics.get("segmenter")
    if final:
        lines.append(f"  segmenter        val   mIoU {final['mIoU']:.3f}, foreground IoU"
                     f" {final['foreground_iou']:.3f}, FwIoU {final['FwIoU']:.3f}")
        if "mIoU_classifier_label" in final:
            lines.append(f"  segmenter + classifier's tile class: val mIoU"
                         f" {final['mIoU_classifier_label']:.3f}")
    print("\n".join(lines), flush=True)

"""``segmix run``: every stage in one output folder, from image-level labels to a scored model.

train-cls -> cams -> localise -> pseudo-masks -> train-seg -> predict -> evaluate, each in its own
subfolder of ``output_dir`` (``classifier/``, ``cams/``, ``localiser/``, ``pseudo-masks/``,
``segmenter/``, ``predictions/``, ``evaluation/``) with its own resolved ``config.yaml``. The config
holds every stage's sections (one file serves all); the paths that connect the stages and the splits
each works on are set here. A stage whose outputs are complete is skipped, an interrupted training
stage resumes from its checkpoint, and the other stages compute only their missing files, so
re-running the same command after an interruption continues the run. ``summary.json`` (marks the run
finished) gathers the metrics of every stage and their wall times (each stage folder keeps its time
in ``seconds.json``, summed over the invocations that worked on it, interrupted ones included).

Before the first stage starts, the config of every stage the run will execute is validated, so a
bad value deep in the last stage's section fails in the first second, not hours in.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..artifacts import SUMMARY_FILE, TIMING_FILE, RunLayout, checkpoint_path, collect_metrics
from ..config import ConfigError
from ..data import read_split
from ..io import write_json
from ..models.factory import create_classifier
from . import Stage, get_stage, holding_output_dir, pipeline_stages, prepare_output_dir
from .clock import StageClock, recorded_seconds

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "run_pipeline", "stage_config",
           "validate", "validate_stages"]

DONE_FILE = SUMMARY_FILE
PIPELINE = pipeline_stages()  # the stages `segmix run` executes, in order
# Keys the pipeline sets for its stages; a config file may hold them (for single stages), but
# `segmix run` does not read them.
WIRED = frozenset(key for stage in PIPELINE for key in stage.wiring(RunLayout(Path(".")), []))


def _pipeline_defaults() -> Dict[str, Any]:
    defaults: Dict[str, Any] = {"output_dir": "runs/pipeline"}
    for stage in PIPELINE:
        for key, value in stage.load().DEFAULTS.items():
            if key in WIRED or key == "output_dir":
                continue
            if key in defaults and defaults[key] != value:
                raise RuntimeError(f"stages disagree on the default of {key!r}: {defaults[key]!r}"
                                   f" vs {value!r} ({stage.name})")
            defaults.setdefault(key, copy.deepcopy(value))
    return defaults


DEFAULTS: Dict[str, Any] = _pipeline_defaults()
RESUMABLE_CHANGES = set().union(*(getattr(s.load(), "RESUMABLE_CHANGES", set()) for s in PIPELINE))


def stage_config(stage: Stage, config: Dict[str, Any], output_dir: Path,
                 splits: List[str]) -> Dict[str, Any]:
    """The config of one stage: its keys from the pipeline config, plus the pipeline's wiring."""
    defaults = stage.load().DEFAULTS
    result = {key: copy.deepcopy(config[key]) for key in defaults if key in config}
    layout = RunLayout(output_dir)
    result.update(stage.wiring(layout, splits))
    result["output_dir"] = str(stage.folder(layout))
    return result


def _splits(data: Dict[str, Any]) -> List[str]:
    return ["train"] + (["val"] if (data.get("val") or {}).get("path") else [])


def validate_stages(config: Dict[str, Any], only: Optional[List[str]] = None) -> None:
    """Validate the config of every stage the run will execute (``only``: those named), and what
    connects them: the CAM layers must exist in the classifier that train-cls will build."""
    unknown = sorted(set(only or ()) - {s.name for s in PIPELINE})
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; valid: {[s.name for s in PIPELINE]}")
    output_dir = Path(config["output_dir"])
    splits = _splits(config["data"])
    for stage in PIPELINE:
        if only is None or stage.name in only:
            stage.load().validate(stage_config(stage, config, output_dir, splits))
    blends = get_stage("pseudo-masks").load().uses_foreground(config)  # the stage's own rule
    if blends and config["localiser"]["method"] == "none" and (only is None
                                                                or "pseudo-masks" in only):
        raise ConfigError("masks.foreground_weight (or a sweep of it) blends in the localiser's"
                          " foreground maps, but localiser.method is none: set"
                          " localiser.method (prototypes, evidence or axis) or masks.foreground_weight=0")
    _check_classifier_layers(config, only)


def _check_classifier_layers(config: Dict[str, Any], only: Optional[List[str]]) -> None:
    """The layers that later stages read from the classifier (``cam.target_layers``; with the
    feature-axis localiser on the classifier, ``localiser.feature_layers``) must exist in the one
    train-cls will build."""
    checks = []
    if config["cam"]["target_layers"] and (only is None or "cams" in only):
        checks.append(("cam.target_layers", config["cam"]["target_layers"]))
    localiser = config["localiser"]
    if (localiser["method"] == "axis" and localiser["features"] == "classifier"
            and (only is None or "localise" in only)):
        checks.append(("localiser.feature_layers", localiser["feature_layers"]))
    if not checks:
        return
    model = create_classifier(config["model"]["name"], max(1, len(config["data"]["classes"])))
    known = [name for name, _ in model.named_modules() if name]
    for key, layers in checks:
        missing = [name for name in layers if name not in known]
        if missing:
            close = difflib.get_close_matches(missing[0], known, n=6, cutoff=0.4)
            raise ConfigError(f"{key}: {config['model']['name']} has no layer(s) {missing}; close"
                              f" names: {close}")


def validate(config: Dict[str, Any]) -> None:
    """Check every stage's settings and that the data paths exist (see :mod:`segmix.stages`)."""
    validate_stages(config)
    for split in ("train", "val"):
        spec = config["data"].get(split) or {}
        for key in ("path", "masks"):
            if spec.get(key) and not Path(spec[key]).exists():
                raise ConfigError(f"data.{split}.{key}: {spec[key]} does not exist")


def _val_state(data: Dict[str, Any]) -> str:
    """``none`` (no val split configured), ``unlabelled`` (some tiles lack masks) or ``labelled``."""
    if not (data.get("val") or {}).get("path"):
        return "none"
    samples = read_split({**data, "verify_files": False}, "val", progress=False)
    return "labelled" if all(s.mask for s in samples) else "unlabelled"


def run_pipeline(config: Dict[str, Any], output_dir: Path, *, overwrite: bool = False,
                 only: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run (or continue) every stage, or the stages named in ``only``; returns the summary
    written to ``summary.json``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("segmix run is one process; for several GPUs launch train-cls and"
                          " train-seg under torchrun, and the other stages on their own")
    validate_stages(config, only)
    val = _val_state(config["data"])
    splits = _splits(config["data"])
    layout = RunLayout(output_dir)
    seconds: Dict[str, Optional[float]] = {}
    for number, stage in enumerate(PIPELINE, start=1):
        module, folder = stage.load(), stage.folder(layout)
        header = f"[{number}/{len(PIPELINE)}] {stage.name} -> {folder}"
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
        with holding_output_dir(folder):
            prepare_output_dir(module, settings, folder, overwrite=overwrite)
            resume = not overwrite and checkpoint_path(folder).exists()
            with StageClock(folder / TIMING_FILE, fresh=overwrite) as clock:
                module.run(settings, folder, resume=resume, overwrite=overwrite)
        seconds[stage.name] = clock.seconds
    summary = {"metrics": collect_metrics(layout), "seconds": seconds,
               "stages": {s.name: s.folder(layout).name for s in PIPELINE}}
    write_json(output_dir / DONE_FILE, summary)
    print_summary(summary["metrics"])
    return summary


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """``segmix run``: every stage, continuing an interrupted run (``resume`` is implied)."""
    return run_pipeline(config, output_dir, overwrite=overwrite)


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

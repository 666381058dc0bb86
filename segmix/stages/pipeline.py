"""The orchestration of stages: the one place (with the registry) that loads stage modules and runs
them in order, for ``segmix run``, ``segmix demo`` and the reuse of a finished run by
``segmix pseudo-masks --from-run``. A stage never runs another stage itself; it asks this module.

:func:`run_pipeline` runs (or continues) every pipeline stage of :data:`segmix.stages.STAGES` in
one folder layout (:class:`segmix.artifacts.RunLayout`), each in its subfolder with its own config
(:func:`stage_config`: the stage's keys of one pipeline config plus the wiring that connects the
stages); :func:`validate_stages` checks every stage's config before the first starts;
:func:`run_step` runs one stage into a folder as the pipeline does (skipped when finished).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..artifacts import (
    SUMMARY_FILE,
    TIMING_FILE,
    RunLayout,
    checkpoint_path,
    collect_metrics,
)
from ..config import ConfigError
from ..data import count_masks
from ..io import write_json
from ..models.factory import create_classifier
from ..runtime import launch
from . import Stage, get_stage, holding_output_dir, pipeline_stages, prepare_output_dir
from .clock import StageClock, recorded_seconds

__all__ = ["PIPELINE", "pipeline_defaults", "pipeline_resumable_changes", "print_summary",
           "run_pipeline",
           "run_step", "stage_config", "stage_defaults", "stage_folder", "validate_stages"]

PIPELINE = pipeline_stages()  # the stages `segmix run` executes, in order
# Keys the pipeline sets for its stages; a config file may hold them (for single stages), but
# `segmix run` does not read them.
WIRED = frozenset(key for stage in PIPELINE for key in stage.wiring(RunLayout(Path(".")), []))


# Stage modules are loaded when a function below is called, never when this module is imported:
# a pipeline stage that imports this module (pseudo-masks, for --from-run) may be the first one
# loaded.
def pipeline_defaults() -> Dict[str, Any]:
    """The pipeline config: every pipeline stage's sections, without the keys the pipeline wires
    (a new dict at each call)."""
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


def pipeline_resumable_changes() -> set:
    """Keys that may differ when a pipeline run is continued: any stage's."""
    return set().union(*(getattr(s.load(), "RESUMABLE_CHANGES", set()) for s in PIPELINE))


def stage_defaults(name: str) -> Dict[str, Any]:
    """The ``DEFAULTS`` of the stage called ``name``."""
    return get_stage(name).load().DEFAULTS


def stage_folder(name: str, layout: RunLayout) -> Path:
    """The folder of the pipeline stage ``name`` in ``layout``."""
    return get_stage(name).folder(layout)


def run_step(name: str, config: Dict[str, Any], overwrite: bool) -> None:
    """Run the stage ``name`` on its ``config`` into ``config['output_dir']`` as the pipeline
    does (a training continues from its checkpoint), unless it is finished there (and not
    ``overwrite``)."""
    module, folder = get_stage(name).load(), Path(config["output_dir"])
    if (folder / module.DONE_FILE).exists() and not overwrite:
        print(f"{name}: done ({folder / module.DONE_FILE} exists)", flush=True)
        return
    prepare_output_dir(module, config, folder, overwrite=overwrite)
    module.run(config, folder, resume=not overwrite and checkpoint_path(folder).exists(),
               overwrite=overwrite)


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


def _val_state(data: Dict[str, Any]) -> str:
    """``none`` (no val split configured), ``unlabelled`` (some tiles lack masks) or ``labelled``."""
    if not (data.get("val") or {}).get("path"):
        return "none"
    tiles, masked = count_masks(data, "val")
    return "labelled" if masked == tiles else "unlabelled"


def run_pipeline(config: Dict[str, Any], output_dir: Path, *, overwrite: bool = False,
                 only: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run (or continue) every stage, or the stages named in ``only``; returns the summary
    written to ``summary.json``."""
    if launch().world_size > 1:
        raise ConfigError("segmix run is one process; for several GPUs launch each stage under"
                          " torchrun into the run's folders (train-cls and train-seg train with"
                          " DDP; cams, localise, pseudo-masks and predict share their tiles),"
                          " then segmix run picks up the finished stages")
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
    write_json(output_dir / SUMMARY_FILE, summary)
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

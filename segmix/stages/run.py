"""``segmix run``: every stage in one output folder, from image-level labels to a scored model.

train-cls -> cams -> localise -> pseudo-masks -> train-seg -> self-train -> predict -> evaluate,
each in its own subfolder of ``output_dir`` (``classifier/``, ``cams/``, ``localiser/``,
``pseudo-masks/``, ``segmenter/``, ``self-training/``, ``predictions/``, ``evaluation/``) with its
own resolved ``config.yaml``. The config holds every stage's sections (one file serves all); the
paths that connect the stages and the splits each works on are set here. A stage whose outputs are
complete is skipped, an interrupted training stage resumes from its checkpoint, and the other stages
compute only their missing files, so re-running the same command after an interruption continues the
run. ``summary.json`` (marks the run finished) gathers the metrics of every stage and their wall
times (each stage folder keeps its time in ``seconds.json``, summed over the invocations that worked
on it, interrupted ones included).

Before the first stage starts, the config of every stage the run will execute is validated, so a
bad value deep in the last stage's section fails in the first second, not hours in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..artifacts import CONFIG_FILE, SUMMARY_FILE, RunLayout
from ..config import ConfigError
from . import pipeline

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "finished_hint", "run", "validate"]

DONE_FILE = SUMMARY_FILE
DEFAULTS: Dict[str, Any] = pipeline.pipeline_defaults()
RESUMABLE_CHANGES = pipeline.pipeline_resumable_changes()


def finished_hint(output_dir: Path) -> str:
    """Added to the refusal of a finished run (``--overwrite`` would redo every stage): the
    one-stage route that keeps it."""
    stage_dir = RunLayout(output_dir).self_training_dir
    return (" To run one stage again with other settings, keep this run and give that stage its"
            " saved config and a new folder, e.g. one round of self-training: segmix self-train"
            f" --config {stage_dir / CONFIG_FILE} --set self_training.rounds=1 --output-dir"
            f" {stage_dir}-1")


def validate(config: Dict[str, Any]) -> None:
    """Check every stage's settings and that the data paths exist (see :mod:`segmix.stages`)."""
    pipeline.validate_stages(config)
    for split in ("train", "val"):
        spec = config["data"].get(split) or {}
        for key in ("path", "masks"):
            if spec.get(key) and not Path(spec[key]).exists():
                raise ConfigError(f"data.{split}.{key}: {spec[key]} does not exist")


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """``segmix run``: every stage, continuing an interrupted run (``resume`` is implied)."""
    return pipeline.run_pipeline(config, output_dir, overwrite=overwrite)

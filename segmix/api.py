"""segmix from Python: every stage of the CLI as a function, and the trained models as objects.

Each stage is a function named after its subcommand (``train-cls`` -> :func:`train_cls`) that takes
what the command line takes::

    from segmix import api

    result = api.train_cls("configs/ebhi.yaml", output_dir="runs/cls", train={"epochs": 3})
    result.metrics["val_accuracy"], result.files["classifier.pt"]

* ``config``: a YAML file, a dict (a partial config: missing keys take the stage's defaults), or a
  list of them layered in order; keys that belong to other stages are skipped, as on the command
  line, so one config serves every stage;
* keyword overrides: a section as a dict (``train={"epochs": 3}``, merged into the section) or one
  dotted key (``**{"train.epochs": 3}``), applied after ``config``; ``overrides`` takes
  ``--set``-style strings;
* ``output_dir``, ``overwrite`` and ``resume`` as the flags of the same names (the shortcut
  flags are config keys: ``--model`` is ``api.predict(segmenter_path=...)`` and
  ``api.export(model=...)``, ``--format`` is ``api.export(export={"format": ...})``).

The config is validated before anything runs (a :class:`segmix.config.ConfigError` names the key)
and saved as ``config.yaml`` in the output folder. A call returns a :class:`StageResult`. The CLI is
a thin layer over :func:`resolve_config` and :func:`run_resolved`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .config import ConfigError, apply_overrides, follow_run_seed, load_config, merge
from .models.pretrained import Classifier, Prediction, Segmenter, load_pretrained
from .stages import STAGES, Stage, get_stage, holding_output_dir, prepare_output_dir

ConfigSource = Union[None, str, Path, Mapping[str, Any]]

# and one function per stage (STAGE_FUNCTIONS, at the end): train_cls, cams, localise, ...
__all__ = ["StageResult", "resolve_config", "run_resolved", "run_stage", "Classifier", "Segmenter",
           "Prediction", "load_pretrained", "STAGE_FUNCTIONS", "function_name"]


@dataclass(frozen=True)
class StageResult:
    """What a stage call did: its folder, resolved config, headline metrics and output paths.

    ``metrics``: a training stage's last epoch (``metrics.csv``'s last row); otherwise the summary
    or metrics the stage wrote (``summary.json``, ``metrics.json``, ``export.json``), or the number
    of tiles it wrote. ``files``: the entries of the output folder by name (``classifier.pt``,
    ``model``, ``metrics.csv``, ...)."""

    stage: str
    output_dir: Path
    config: Dict[str, Any]
    metrics: Dict[str, Any]
    files: Dict[str, Path]


def _stage(stage: Union[str, Stage]) -> Stage:
    if isinstance(stage, Stage):
        return stage
    try:
        return get_stage(stage)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from error


def _sources(config: Union[ConfigSource, Sequence[ConfigSource]]) -> List[ConfigSource]:
    if config is None:
        return []
    if isinstance(config, (str, Path, Mapping)):
        return [config]
    return list(config)


def _plain(value: Any) -> Any:
    """``value`` with paths as strings (a config holds YAML types only)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _nested(key: str, value: Any) -> Dict[str, Any]:
    nested: Any = _plain(value)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def resolve_config(stage: Union[str, Stage],
                   config: Union[ConfigSource, Sequence[ConfigSource]] = None, *,
                   output_dir: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
                   **sections: Any) -> Dict[str, Any]:
    """The validated config of ``stage``: defaults <- ``config`` (files and dicts, in order) <-
    keyword ``sections`` <- ``overrides`` strings <- ``output_dir``; a section's ``seed: null``
    becomes the run's ``seed`` (:func:`segmix.config.follow_run_seed`)."""
    stage = _stage(stage)
    module = stage.load()
    sources = _sources(config)
    foreign = set()
    if sources:  # one config may hold every stage's settings: the others' keys are skipped here
        foreign = {key for other in STAGES for key in other.load().DEFAULTS} - set(module.DEFAULTS)
    resolved = module.DEFAULTS
    for source in sources:
        if isinstance(source, Mapping):
            resolved = merge(resolved, {k: _plain(v) for k, v in source.items()
                                        if k in module.DEFAULTS or k not in foreign})
        else:
            resolved = load_config(Path(source), resolved, foreign)
    for key, value in sections.items():
        resolved = merge(resolved, _nested(key, value))
    resolved = follow_run_seed(apply_overrides(resolved, overrides))
    if output_dir is not None:
        resolved["output_dir"] = str(output_dir)
    module.validate(resolved)
    return resolved


def _metrics(stage: Stage, value: Any) -> Dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if stage.resumable and value:  # a training stage's rows, one per epoch
        return dict(value[-1])
    return {"tiles": len(value or [])}


def run_resolved(stage: Union[str, Stage], config: Dict[str, Any], *, overwrite: bool = False,
                 resume: bool = False) -> StageResult:
    """Run ``stage`` on a config from :func:`resolve_config`: hold its output folder (a second run
    into it is refused), refuse a folder holding a finished run or other settings (unless
    ``overwrite``), save ``config.yaml``, run, collect the result."""
    stage = _stage(stage)
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    module, output_dir = stage.load(), Path(config["output_dir"])
    with holding_output_dir(output_dir, config):
        prepare_output_dir(module, config, output_dir, overwrite=overwrite)
        options = {"resume": resume} if stage.resumable else {}
        value = module.run(config, output_dir, overwrite=overwrite, **options)
    files = ({path.name: path for path in sorted(output_dir.iterdir())
              if not path.name.startswith(".")} if output_dir.is_dir() else {})
    return StageResult(stage.name, output_dir, config, _metrics(stage, value), files)


def run_stage(stage: Union[str, Stage], config: Union[ConfigSource, Sequence[ConfigSource]] = None,
              *, output_dir: Optional[Union[str, Path]] = None, overwrite: bool = False,
              resume: bool = False, overrides: Sequence[str] = (), **sections: Any) -> StageResult:
    """Resolve the config of ``stage`` (see :func:`resolve_config`) and run it."""
    resolved = resolve_config(stage, config, output_dir=output_dir, overrides=overrides,
                              **sections)
    return run_resolved(stage, resolved, overwrite=overwrite, resume=resume)


def _stage_function(stage: Stage) -> Callable[..., StageResult]:
    def call(config: Union[ConfigSource, Sequence[ConfigSource]] = None,
             **options: Any) -> StageResult:
        return run_stage(stage, config, **options)

    call.__name__ = call.__qualname__ = function_name(stage)
    call.__doc__ = (f"``segmix {stage.name}``: {stage.help}.\n\nArguments as :func:`run_stage`"
                    f" (config, output_dir, overwrite, resume, overrides, keyword sections);"
                    f" returns a :class:`StageResult`.")
    return call


def function_name(stage: Stage) -> str:
    """The name of a stage's function: its subcommand with ``_`` for ``-`` (``train-cls`` ->
    ``train_cls``)."""
    return stage.name.replace("-", "_")


# One function per stage, derived from the one list (segmix.stages.STAGES): a new stage gets its
# function by being registered.
STAGE_FUNCTIONS: Dict[str, Callable[..., StageResult]] = {
    function_name(stage): _stage_function(stage) for stage in STAGES}
globals().update(STAGE_FUNCTIONS)
__all__ += list(STAGE_FUNCTIONS)

"""``masks.foreground_weight`` of the pseudo-mask stage: how much the localiser's foreground maps
decide foreground against the CAMs. Unset (``null``, the default, or ``auto``) it is 1 where the
stage's ``localiser_dir`` holds maps (a finished ``segmix localise`` run of any method but ``none``)
and 0 otherwise (the CAMs alone); it is resolved when the stage runs, after the localiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..artifacts import localiser_method
from ..config import ConfigError

__all__ = ["AUTO_WEIGHT", "checked_weight", "resolve_foreground_weight", "uses_foreground"]

AUTO_WEIGHT = None  # the default: resolved from the localiser's run ("auto" says the same)


def _is_auto(weight: Any) -> bool:
    return weight is None or weight == "auto"


def _numeric_weight(masks: Dict[str, Any], auto: float) -> Dict[str, Any]:
    """The mask settings with an unset ``foreground_weight`` replaced by ``auto``."""
    weight = masks["foreground_weight"]
    return {**masks, "foreground_weight": auto if _is_auto(weight) else weight}


def checked_weight(masks: Dict[str, Any]) -> Dict[str, Any]:
    """The mask settings to validate: unset stands for a valid weight (0); a string other than
    ``auto`` is refused."""
    weight = masks["foreground_weight"]
    if isinstance(weight, (str, bool)) and not _is_auto(weight):
        raise ConfigError("masks.foreground_weight must be a number in [0, 1], or null / auto (1"
                          f" with the localiser's maps, 0 without), got {weight!r}")
    return _numeric_weight(masks, 0.0)


def resolve_foreground_weight(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config with an unset ``masks.foreground_weight`` (null or auto) resolved: 1 where
    ``localiser_dir`` holds a finished localiser run that made maps, 0 without ``localiser_dir``
    or where its method is ``none``."""
    if not _is_auto(config["masks"]["foreground_weight"]):
        return config
    folder = config.get("localiser_dir")
    method = localiser_method(Path(folder)) if folder else "none"
    if method is None:
        raise ConfigError(f"masks.foreground_weight is unset (auto) and localiser_dir={folder}"
                          " holds no finished `segmix localise` run: run it first, or set"
                          " masks.foreground_weight (0: the CAMs alone)")
    weight = 0.0 if method == "none" else 1.0
    print(f"masks.foreground_weight (auto): {weight}"
          + (f" (the {method} localiser's maps decide foreground)" if weight else
             " (no localiser maps: the CAMs alone)"), flush=True)
    return {**config, "masks": _numeric_weight(config["masks"], weight)}


def uses_foreground(config: Dict[str, Any]) -> bool:
    """Whether the masks blend in the localiser's foreground maps (a weight above 0 or a sweep of
    the weight; an unset weight counts only once resolved, see :func:`resolve_foreground_weight`)."""
    sweep_cfg = config["sweep"]
    weight = config["masks"]["foreground_weight"]
    return (not _is_auto(weight) and weight > 0) or (
        sweep_cfg["enabled"] and sweep_cfg["key"] == "foreground_weight"
        and any(value > 0 for value in sweep_cfg["values"]))

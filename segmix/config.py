"""YAML configs: load a file over a stage's defaults, apply ``--set key=value`` overrides, save.

Every key a user may set exists in the defaults, so a typo is an error that names the valid keys,
not a silently ignored setting; a value of the wrong kind (text where the default is a number, a
single value where it is a list) is an error that names the key. Ranges and choices are checked
by each stage's ``validate`` when the config is resolved.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import yaml

from .errors import SegmixError
from .io import atomic_write_text

__all__ = ["ConfigError", "load_config", "apply_overrides", "merge", "save_config",
           "config_differences", "check_number", "check_path", "follow_run_seed"]

Config = Dict[str, Any]


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that ``1e-4`` is a number (YAML 1.2), not text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(SegmixError, ValueError):
    """A config file, override or value that cannot be used; the message names the key."""


def check_number(key: str, value: Any, *, integer: bool = False, positive: bool = True) -> None:
    """Refuse ``value`` of the dotted ``key`` unless it is a finite number (an ``int`` with
    ``integer``) above 0 (at least 0 without ``positive``): NaN and infinity are refused too; the
    error names the key, the rule and the value."""
    kinds = (int,) if integer else (int, float)
    if (isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value)
            or value < 0 or (positive and value == 0)):
        noun = "integer" if integer else "number"
        rule = f"a positive {noun}" if positive else f"{'an' if integer else 'a'} {noun} >= 0"
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def check_path(key: str, value: Any, what: str) -> None:
    """Refuse an unset ``key`` (saying it should be ``what``) or a path that does not exist."""
    if not value:
        raise ConfigError(f"{key} is not set: {what}")
    if not Path(value).exists():
        raise ConfigError(f"{key}: {value} does not exist")


def _kind_error(path: str, default: Any, value: Any) -> Optional[str]:
    """What kind of value ``path`` needs, if ``value`` is not of the kind of its ``default``.

    A number's default also admits a list (sizes are ``n`` or ``[height, width]``); a string's or
    a list's admits null (an unset name, path or choice)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, (int, float)):
        return "a number" if isinstance(value, (str, bool, Mapping)) else None
    if isinstance(default, str):
        return None if value is None or isinstance(value, str) else "a string"
    if isinstance(default, list):
        return None if value is None or isinstance(value, list) else "a list"
    return None


def merge(defaults: Mapping[str, Any], update: Mapping[str, Any], *, where: str = "") -> Config:
    """Deep-merge ``update`` into a copy of ``defaults``; unknown keys raise :class:`ConfigError`."""
    merged = copy.deepcopy(dict(defaults))
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in merged:
            valid = ", ".join(sorted(map(str, merged))) or "(none)"
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {valid}")
        if isinstance(merged[key], dict) and merged[key]:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key {path!r} must be a mapping, got {type(value).__name__}"
                )
            merged[key] = merge(merged[key], value, where=path)
        else:
            kind = _kind_error(path, merged[key], value)
            if kind:
                raise ConfigError(f"config key {path!r} must be {kind}, got {value!r}")
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: Optional[Path], defaults: Mapping[str, Any],
                foreign_keys: Sequence[str] = ()) -> Config:
    """Read a YAML file over ``defaults`` (``path=None`` gives the defaults).

    Top-level keys in ``foreign_keys`` (sections of other stages sharing the file) are skipped;
    any other unknown key is an error."""
    if path is None:
        return copy.deepcopy(dict(defaults))
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = {k: v for k, v in data.items() if k in defaults or k not in set(foreign_keys)}
    try:
        return merge(defaults, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> Config:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (``3``, ``0.5``, ``[16, 32]``)."""
    result = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = _load_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {error}") from error
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        result = merge(result, nested)
    return result


def follow_run_seed(config: Mapping[str, Any]) -> Config:
    """A copy of ``config`` in which each section's ``seed: null`` (``cam.seed``,
    ``localiser.seed``) is the run's top-level ``seed``, so ``--set seed=1`` varies every seeded
    draw of a run and the saved config names the seed each section used."""
    result = copy.deepcopy(dict(config))
    if "seed" not in result:
        return result
    for section in result.values():
        if isinstance(section, dict) and "seed" in section and section["seed"] is None:
            section["seed"] = result["seed"]
    return result


def save_config(config: Mapping[str, Any], path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))


def _flatten(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       allowed: Sequence[str] = ()) -> str:
    """A readable list of the dotted keys whose values differ (outside ``allowed``); '' if none."""
    before, after = _flatten(old), _flatten(new)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and k not in set(allowed))
    return "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:8])

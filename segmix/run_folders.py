"""Output folders of stage runs: refuse to clobber a finished run or mix settings, save the config."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Dict

from .config import config_differences, load_config, save_config
from .runtime import is_main_process

__all__ = ["OutputDirError", "prepare_output_dir"]


class OutputDirError(ValueError):
    """An output folder that holds a finished run, or a run with other settings."""


def prepare_output_dir(stage: ModuleType, config: Dict[str, Any], output_dir: Path, *,
                       overwrite: bool) -> None:
    """Refuse a folder whose run is finished or was made with other settings (unless
    ``overwrite``), then save ``config`` as its ``config.yaml`` (on the main process)."""
    done = output_dir / stage.DONE_FILE
    if done.exists() and not overwrite:
        raise OutputDirError(f"{done} exists: this run is finished. Use --overwrite to replace it"
                             " or --output-dir for a new folder.")
    saved = output_dir / "config.yaml"
    if saved.exists() and not overwrite:
        allowed = {"output_dir", *getattr(stage, "RESUMABLE_CHANGES", ())}
        differences = config_differences(load_config(saved, stage.DEFAULTS), config, allowed)
        if differences:
            raise OutputDirError(f"{saved} holds a run with other settings ({differences}). Use"
                                 " --overwrite to start again or --output-dir for a new folder.")
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved)

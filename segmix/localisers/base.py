"""What every localiser method shares: its typed settings, the interface the localise stage drives,
and the steps around a fit (the seeded sample of train tiles, reusing a saved fit, the classifier
that measures class evidence, the pictures of a few tiles beside their maps).

A method is a :class:`Localiser` subclass: :meth:`~Localiser.build` makes it from a config,
:func:`fit_or_reuse` fits it on train tiles (:meth:`~Localiser.fit`) and saves it
(:meth:`~Localiser.save`), or loads an earlier fit made with the same classes and settings
(:meth:`~Localiser.load`); :meth:`~Localiser.maps` then gives any tile's foreground map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

import numpy as np
import torch

from ..config import ConfigError
from ..data import Sample, read_rgb, read_split, write_rgb
from ..models.pretrained import Classifier
from ..runtime import atomic_torch_save, load_torch_file

__all__ = ["ClassifierProbability", "Localiser", "LocaliserSettings", "check_shuffle_patch",
           "draw_maps", "fit_or_reuse", "fit_sample", "grey", "load_classifier", "write_rows"]

_CONVERT: Dict[str, Callable[[Any], Any]] = {
    "str": str, "int": int, "float": float, "Tuple[str, ...]": tuple,
    "Optional[int]": lambda value: None if value is None else int(value)}
SettingsT = TypeVar("SettingsT", bound="LocaliserSettings")


@dataclass(frozen=True)
class LocaliserSettings:
    """The keys of the ``localiser`` config section every method reads (``fill`` resolved to the
    method's default where the config leaves it ``null``); each method adds its own."""

    fill: str
    blur_sigma: float   # fill blur: how much the tile is blurred (px)
    patch_size: int     # fill shuffle: patch size (px at the classifier's input size)
    fit_tiles: Optional[int]  # train tiles (a seeded sample) to fit on; None: all
    seed: int
    batch_size: int
    device: str

    @classmethod
    def from_section(cls: Type[SettingsT], section: Dict[str, Any], fill: str) -> SettingsT:
        """The typed settings of a (validated) ``localiser`` section."""
        def typed(field: Any) -> Any:
            value = section[field.name]
            return value if value is None else _CONVERT[str(field.type)](value)

        return cls(fill=fill, **{field.name: typed(field) for field in fields(cls)
                                 if field.name != "fill"})


class Localiser(ABC):
    """A foreground map for any tile, fitted on train tiles with image-level labels only.

    Subclasses name their method, the file a fit is saved in (:mod:`segmix.artifacts`), the fills
    they accept (the first is the default), the settings a fit depends on (another value needs a
    new fit) and their settings type."""

    method: ClassVar[str]
    file_name: ClassVar[str]
    fills: ClassVar[Tuple[str, ...]]
    build_keys: ClassVar[Tuple[str, ...]]
    settings_type: ClassVar[Type[LocaliserSettings]]

    settings: LocaliserSettings
    classes: List[str]
    built_with: Dict[str, Any]  # the settings of the fit, as saved beside it

    @classmethod
    @abstractmethod
    def build(cls, config: Dict[str, Any], classes: List[str]) -> "Localiser":
        """The unfitted localiser of a stage config (its ``localiser`` section, ``classifier``)."""

    @abstractmethod
    def fit(self, samples: List[Sample], output_dir: Path) -> None:
        """Fit on the train tiles ``samples``; write the pictures and tables that show the fit."""

    @abstractmethod
    def maps(self, samples: List[Sample]) -> List[np.ndarray]:
        """Each sample's foreground map in [0, 1] at its tile's size."""

    @abstractmethod
    def state(self) -> Dict[str, Any]:
        """The fitted parameters, as saved (the first entries of the file)."""

    @abstractmethod
    def record(self) -> Dict[str, Any]:
        """What the fit measured, saved after the parameters and reported by :meth:`summary`."""

    @abstractmethod
    def load_state(self, saved: Dict[str, Any]) -> None:
        """Take the fitted parameters (and record) of a saved file."""

    @abstractmethod
    def summary(self) -> Dict[str, Any]:
        """The method's entries of the localise stage's ``summary.json``."""

    @classmethod
    def fill_of(cls, section: Dict[str, Any]) -> str:
        """The fill a ``localiser`` section uses: its ``fill``, or the method's default."""
        return section["fill"] or cls.fills[0]

    @classmethod
    def settings_of(cls, section: Dict[str, Any]) -> LocaliserSettings:
        """The typed settings of a ``localiser`` section, its ``fill`` resolved."""
        return cls.settings_type.from_section(section, cls.fill_of(section))

    @classmethod
    def build_settings(cls, section: Dict[str, Any]) -> Dict[str, Any]:
        """The keys of ``section`` a fit depends on, as recorded in its file."""
        return {key: cls.fill_of(section) if key == "fill" else section[key]
                for key in cls.build_keys}

    def save(self, path: Path) -> None:
        """Write the fit to ``path`` (atomically; its presence means the fit finished)."""
        atomic_torch_save(path, {**self.state(), "classes": self.classes,
                                 "settings": self.built_with, **self.record()})

    def load(self, path: Path, overwrite: bool = False) -> bool:
        """Take the fit saved at ``path`` if there is one (and not ``overwrite``); one made for
        other classes or settings is refused with both named. Returns whether it was taken."""
        if not path.is_file() or overwrite:
            return False
        saved = load_torch_file(path, "localiser file")
        if not isinstance(saved, dict) or not {"classes", "settings"} <= set(saved):
            raise ConfigError(f"{path} is not a segmix localiser file: use another output folder"
                              " or --overwrite")
        if saved["classes"] != self.classes or saved["settings"] != self.built_with:
            raise ConfigError(f"{path} was built for classes {saved['classes']} with"
                              f" {saved['settings']}; this run has classes {self.classes} with"
                              f" {self.built_with}: use another output folder or --overwrite")
        print(f"localiser: reusing {path}", flush=True)
        self.load_state(saved)
        return True


def fit_or_reuse(localiser: Localiser, data: Dict[str, Any], output_dir: Path,
                 overwrite: bool) -> None:
    """Load the fit of ``output_dir`` (same classes and settings), or fit ``localiser`` on a
    seeded sample of the train tiles of ``data`` and save it last."""
    path = output_dir / localiser.file_name
    if localiser.load(path, overwrite):
        return
    settings = localiser.settings
    localiser.fit(fit_sample(read_split(data, "train"), settings.fit_tiles, settings.seed),
                  output_dir)
    localiser.save(path)


def fit_sample(samples: List[Sample], count: Any, seed: int) -> List[Sample]:
    """The train tiles a localiser is fitted on: all, or a seeded sample of ``count``."""
    if count is None or count >= len(samples):
        return samples
    chosen = np.random.default_rng(seed).choice(len(samples), int(count), replace=False)
    return [samples[i] for i in sorted(chosen)]


class ClassifierProbability:
    """``(images, labels) -> [N]``: the classifier's mean probability of ``labels`` for uint8 RGB
    images (:meth:`Classifier.predict`)."""

    def __init__(self, classifier: Classifier, batch_size: int) -> None:
        self.classifier, self.batch_size = classifier, batch_size

    def __call__(self, images: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
        probabilities = torch.from_numpy(self.classifier.predict(images, self.batch_size))
        return probabilities[:, list(labels)].mean(dim=1).numpy()


def load_classifier(config: Dict[str, Any], classes: List[str]) -> Classifier:
    """The classifier of ``config['classifier']`` on the localiser's device, checked against
    ``classes``."""
    return Classifier.from_pretrained(Path(config["classifier"]), classes=classes,
                                      device=config["localiser"]["device"])


def check_shuffle_patch(settings: LocaliserSettings, classifier: Classifier,
                        path: str) -> None:
    """With the shuffle fill, its patch size must divide the classifier's input size."""
    height, width = classifier.image_size
    if settings.fill == "shuffle" and (height % settings.patch_size or width % settings.patch_size):
        raise ConfigError(f"localiser.patch_size {settings.patch_size} must divide the classifier's"
                          f" input size {height}x{width} ({path})")


def grey(foreground: np.ndarray) -> np.ndarray:
    """A foreground map as an RGB picture (white = foreground)."""
    values = np.rint(np.clip(foreground, 0, 1) * 255).astype(np.uint8)
    return np.repeat(values[..., None], 3, axis=2)


def draw_maps(path: Path, samples: List[Sample],
              maps_of: Callable[[List[Sample]], List[np.ndarray]]) -> None:
    """Rows of: the tile, its foreground map (``maps_of``; white = foreground)."""
    write_rows(path, [[read_rgb(sample.image), grey(foreground)]
                      for sample, foreground in zip(samples, maps_of(samples))])


def write_rows(path: Path, rows: List[List[np.ndarray]]) -> None:
    """A picture of ``rows`` of RGB images side by side (rows padded to the widest)."""
    joined = [np.concatenate(row, axis=1) for row in rows]
    width = max(row.shape[1] for row in joined)
    write_rgb(path, np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)))
                                    for row in joined], axis=0))

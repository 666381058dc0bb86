"""The prototype localiser over tile files (``localiser.method: prototypes``): superpixel prototypes
of stain and texture (:mod:`pseudo_masks.prototypes`) named by label statistics or by the
classifier's evidence, and a foreground map for any tile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from pseudo_masks.fill import blurred, median_fill
from pseudo_masks.prototypes import (
    FEATURE_NAMES,
    FILLS,
    Prototypes,
    Superpixels,
    class_specificity,
    cluster_evidence,
    fit_prototypes,
    prototype_shares,
    superpixels,
)

from ..artifacts import LOCALISER_FILE
from ..config import ConfigError
from ..data import Sample, overlay, read_rgb
from ..io import write_csv
from .base import (
    ClassifierProbability,
    Localiser,
    LocaliserSettings,
    grey,
    load_classifier,
    write_rows,
)

__all__ = ["NAMINGS", "PrototypeLocaliser", "PrototypeSettings", "build_prototypes",
           "class_probability_of", "describe", "superpixels_of"]

NAMINGS = ("labels", "classifier")


@dataclass(frozen=True)
class PrototypeSettings(LocaliserSettings):
    naming: str         # labels (class specificity) | classifier (class evidence)
    prototypes: int     # k-means prototypes (kinds of tissue)
    segments: int       # SLIC superpixels per tile
    compactness: float  # SLIC, higher = squarer superpixels


class PrototypeLocaliser(Localiser):
    """Prototypes fitted on train tiles and named (``prototypes.csv`` and ``prototypes.png`` show
    them); a tile's map is each superpixel's prototype score."""

    method = "prototypes"
    file_name = LOCALISER_FILE
    fills = FILLS
    build_keys = ("naming", "prototypes", "segments", "compactness", "fill", "blur_sigma",
                  "fit_tiles", "seed")
    settings_type = PrototypeSettings

    def __init__(self, settings: PrototypeSettings, classes: List[str],
                 config: Dict[str, Any]) -> None:
        self.settings, self.classes, self.config = settings, classes, config
        self.built_with = self.build_settings(config["localiser"])
        self.prototypes: Optional[Prototypes] = None
        self.fitted: Dict[Path, Superpixels] = {}  # the fit tiles' superpixels, by image path

    @classmethod
    def build(cls, config: Dict[str, Any], classes: List[str]) -> "PrototypeLocaliser":
        return cls(cls.settings_of(config["localiser"]), classes, config)

    def fit(self, samples: List[Sample], output_dir: Path) -> None:
        settings = self.settings
        class_probability = (class_probability_of(self.config, self.classes)
                             if settings.naming == "classifier" else None)
        prototypes, shares, described = build_prototypes(samples, settings, len(self.classes),
                                                         class_probability)
        raw_means = prototypes.centroids * prototypes.std + prototypes.mean
        write_csv(output_dir / "prototypes.csv", [
            {"prototype": c, "score": float(prototypes.scores[c]), "area_share": shares[c],
             **{name: float(raw_means[c, f]) for f, name in enumerate(FEATURE_NAMES)}}
            for c in range(prototypes.k)])
        _draw(output_dir / "prototypes.png", samples[:4], described[:4], prototypes)
        order = torch.argsort(prototypes.scores, descending=True).tolist()
        meaning = ("class specificity of the area share" if settings.naming == "labels" else
                   "drop of the class probability when removed")
        print(f"prototypes by score ({meaning}): "
              + ", ".join(f"#{c} {prototypes.scores[c]:+.3f} ({100 * shares[c]:.0f}% of area)"
                          for c in order), flush=True)
        self.prototypes = prototypes
        self.fitted = {sample.image: pixels for sample, pixels in zip(samples, described)}

    def maps(self, samples: List[Sample]) -> List[np.ndarray]:
        assert self.prototypes is not None, "fit or load the prototypes first"
        return [self.prototypes.foreground(self.fitted[s.image] if s.image in self.fitted
                                           else superpixels_of(s, self.settings))
                for s in samples]

    def state(self) -> Dict[str, Any]:
        assert self.prototypes is not None, "fit or load the prototypes first"
        return {"prototypes": self.prototypes.state_dict()}

    def record(self) -> Dict[str, Any]:
        return {}

    def load_state(self, saved: Dict[str, Any]) -> None:
        self.prototypes = Prototypes.from_state_dict(saved["prototypes"])

    def summary(self) -> Dict[str, Any]:
        assert self.prototypes is not None, "fit or load the prototypes first"
        return {"naming": self.settings.naming, "scores": self.prototypes.scores.tolist()}


def class_probability_of(config: Dict[str, Any], classes: List[str]) -> ClassifierProbability:
    """The probability function of the classifier ``config['classifier']`` (checked against
    ``classes``) for naming by class evidence."""
    return ClassifierProbability(load_classifier(config, classes),
                                 int(config["localiser"]["batch_size"]))


def describe(samples: Sequence[Sample], settings: PrototypeSettings) -> List[Superpixels]:
    """The superpixels of every sample."""
    return [superpixels_of(sample, settings)
            for sample in tqdm(samples, desc="superpixels", unit="tile")]


def superpixels_of(sample: Sample, settings: PrototypeSettings) -> Superpixels:
    return superpixels(read_rgb(sample.image), settings.segments, settings.compactness)


def build_prototypes(samples: List[Sample], settings: PrototypeSettings, num_classes: int,
                     class_probability: Optional[ClassifierProbability] = None,
                     described: Optional[List[Superpixels]] = None,
                     ) -> Tuple[Prototypes, np.ndarray, List[Superpixels]]:
    """Fit prototypes on ``samples`` (their superpixels ``described``, computed if not given) and
    name them (``settings.naming``: by label statistics, or by the class evidence
    ``class_probability`` measures); returns them, each one's mean share of the tiles' area, and
    the tiles' superpixels."""
    described = described if described is not None else describe(samples, settings)
    k = settings.prototypes
    prototypes = fit_prototypes([p.features for p in described], k, seed=settings.seed)
    maps = [prototypes.prototype_map(pixels) for pixels in described]
    shares = np.stack([prototype_shares(m, k) for m in maps])
    if settings.naming == "labels":
        try:
            scores = class_specificity(shares, [s.labels for s in samples], num_classes)
        except ValueError as error:
            raise ConfigError(f"localiser.naming=labels: {error} among the {len(samples)} fit"
                              " tiles; use localiser.naming=classifier") from error
    else:
        drops = np.zeros(k)
        for sample, prototype_map, share in tqdm(list(zip(samples, maps, shares)),
                                                 desc="naming prototypes", unit="tile"):
            rgb = read_rgb(sample.image)
            fill = median_fill(rgb) if settings.fill == "median" else blurred(
                rgb, settings.blur_sigma)
            drops += share * cluster_evidence(rgb, prototype_map, list(sample.labels), k,
                                              class_probability, fill=fill)
        scores = drops / np.maximum(shares.sum(axis=0), 1e-12)
    prototypes.scores = torch.from_numpy(scores).float()
    return prototypes, shares.mean(axis=0), described


def _draw(path: Path, samples: Sequence[Sample], described: Sequence[Superpixels],
          prototypes: Prototypes) -> None:
    """Rows of: the tile, its prototypes in colour, its foreground map (white = foreground)."""
    rows = []
    for sample, pixels in zip(samples, described):
        rgb = read_rgb(sample.image)
        kinds = overlay(rgb, prototypes.prototype_map(pixels).astype(np.int64) + 1, prototypes.k,
                        alpha=0.6)
        rows.append([rgb, kinds, grey(prototypes.foreground(pixels))])
    write_rows(path, rows)

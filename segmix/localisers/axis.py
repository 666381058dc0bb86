"""The feature-axis localiser over tile files (``localiser.method: axis``): dense features of a
frozen backbone, the main axis of their variation inside tiles, named by the classifier's evidence
(:mod:`pseudo_masks.feature_axis`), and a foreground map for any tile."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pseudo_masks.feature_axis import (
    FeatureAxis,
    fit_feature_axis,
    fuse_feature_maps,
    sample_cells,
    side_evidence,
    smoothed_centred,
)
from pseudo_masks.fill import ClassProbability, blurred, shuffle_fills
from pseudo_masks.tissue import tissue_background

from ..artifacts import AXIS_FILE
from ..config import ConfigError
from ..data import Sample, build_transform, read_rgb
from ..models.factory import (
    LITE0_ARCH,
    OFFLINE_LITE0,
    create_classifier,
    normalization_of,
    weights_fingerprint,
)
from .base import (
    ClassifierProbability,
    Localiser,
    LocaliserSettings,
    check_shuffle_patch,
    draw_maps,
    load_classifier,
)

__all__ = ["AXIS_FEATURES", "AxisLocaliser", "AxisSettings", "MAX_CELLS", "fit_axis"]

AXIS_FEATURES = ("classifier", "imagenet")
MAX_CELLS = 200_000  # tissue cells (over all fit tiles) the principal axis is computed from


@dataclass(frozen=True)
class AxisSettings(LocaliserSettings):
    features: str                    # the backbone: classifier (of `classifier`) | imagenet
    feature_layers: Tuple[str, ...]  # modules whose maps are fused
    smoothing: int                   # fitted on features averaged over this many cells (odd)
    naming_tiles: int                # fit tiles on which the classifier names the axis's sign


class AxisLocaliser(Localiser):
    """Dense features of ``network`` at the modules ``settings.feature_layers`` for tiles resized
    to ``image_size`` and normalised by ``mean`` / ``std``; with an ``axis``, each tile's
    foreground map (from the features unsmoothed: the axis is fitted on smoothed ones, so that it
    follows regions, and then scores every cell). ``axis.png`` shows a few tiles beside their maps."""

    method = "axis"
    file_name = AXIS_FILE
    fills = ("blur", "shuffle")
    build_keys = ("features", "feature_layers", "smoothing", "fill", "blur_sigma", "naming_tiles",
                  "fit_tiles", "seed")
    settings_type = AxisSettings

    def __init__(self, settings: AxisSettings, classes: List[str], network: nn.Module, *,
                 image_size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 device: torch.device, built_with: Dict[str, Any],
                 class_probability: Optional[ClassProbability] = None) -> None:
        modules = dict(network.named_modules())
        missing = [name for name in settings.feature_layers if name not in modules]
        if missing:
            top = [name for name in modules if name and name.count(".") <= 1]
            raise ConfigError(f"localiser.feature_layers {missing} are not modules of the backbone;"
                              f" some that are: {top[:30]}")
        self.settings, self.classes, self.built_with = settings, classes, built_with
        self.network, self.device = network.eval().to(device), device
        self.modules = [modules[name] for name in settings.feature_layers]
        self.image_size = image_size
        self.transform = build_transform([], image_size, mean, std)
        self.class_probability = class_probability
        self.axis: FeatureAxis | None = None
        self.naming: Dict[str, float] = {}

    @classmethod
    def build(cls, config: Dict[str, Any], classes: List[str]) -> "AxisLocaliser":
        """The feature extractor of ``localiser.features`` at the classifier's input size; the
        classifier names the axis."""
        section = config["localiser"]
        settings = cls.settings_of(section)
        classifier = load_classifier(config, classes)
        check_shuffle_patch(settings, classifier, config["classifier"])
        if settings.features == "classifier":
            network, (mean, std) = classifier.network, (classifier.mean, classifier.std)
        else:
            network = create_classifier(LITE0_ARCH, 1000, weights=OFFLINE_LITE0)
            mean, std = normalization_of(network)
        # the features and the naming, hence the axis, depend on the classifier and its input size
        built_with = {**cls.build_settings(section), "image_size": list(classifier.image_size),
                      "classifier_weights": weights_fingerprint(classifier.network)}
        if settings.fill == "shuffle":  # recorded only where it matters: blur-named files stay valid
            built_with["patch_size"] = section["patch_size"]
        return cls(settings, classes, network, image_size=classifier.image_size, mean=mean,
                   std=std, device=classifier.device, built_with=built_with,
                   class_probability=ClassifierProbability(classifier, settings.batch_size))

    @contextmanager
    def _hooked(self) -> Iterator[List[torch.Tensor]]:
        outputs: List[torch.Tensor] = []
        handles = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
                   for module in self.modules]
        try:
            yield outputs
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def tissue(images: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """Each tile's tissue (the tissue prior, ``[H, W]`` bool) at its own size."""
        return [~tissue_background(torch.from_numpy(image)[None])[0] for image in images]

    @torch.no_grad()
    def features(self, images: Sequence[np.ndarray], smoothing: int = 1,
                 tissue: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tile-centred features ``[N, C, h, w]`` of uint8 RGB tiles, averaged over ``smoothing``
        cells across, and their tissue cells ``[N, h, w]`` (``tissue``, from :meth:`tissue` if not
        given, averaged onto the feature grid)."""
        batch = torch.stack([self.transform(image=image)["image"] for image in images])
        with self._hooked() as outputs:
            self.network(batch.to(self.device))
            fused = fuse_feature_maps(outputs).cpu()
        tissue = self.tissue(images) if tissue is None else tissue
        cells = torch.stack([F.interpolate(inside[None, None].float(), size=fused.shape[-2:],
                                           mode="area")[0, 0] > 0.5 for inside in tissue])
        return smoothed_centred(fused, cells, smoothing), cells

    def score_maps(self, images: Sequence[np.ndarray],
                   tissue: Optional[List[torch.Tensor]] = None) -> List[np.ndarray]:
        """Each tile's foreground score in [0, 1] at its own size, 0 outside ``tissue`` (from
        :meth:`tissue` if not given)."""
        if self.axis is None:
            raise RuntimeError("the axis is not fitted yet (fit_axis)")
        tissue = self.tissue(images) if tissue is None else tissue
        centred, _ = self.features(images, tissue=tissue)
        scores = self.axis.scores(centred)
        out = []
        for inside, score in zip(tissue, scores):
            full = F.interpolate(score[None, None], size=tuple(inside.shape), mode="bilinear",
                                 align_corners=False)[0, 0]
            out.append((full * inside).numpy())
        return out

    def maps(self, samples: List[Sample]) -> List[np.ndarray]:
        """:meth:`score_maps` of the samples' tiles."""
        return self.score_maps([read_rgb(sample.image) for sample in samples])

    def fit(self, samples: List[Sample], output_dir: Path) -> None:
        if self.class_probability is None:
            raise RuntimeError("the axis is named by a classifier: build it with one")
        self.naming = fit_axis(self, samples, self.class_probability)
        naming = self.naming
        print(f"localiser: feature axis named by the classifier: keeping the foreground side holds"
              f" the class probability {naming['side_evidence']:.3f} higher than keeping the other"
              f" ({100 * naming['tiles_agreeing']:.0f}% of {naming['tiles']} tiles agree)",
              flush=True)
        draw_maps(output_dir / "axis.png", samples[:4], self.maps)

    def state(self) -> Dict[str, Any]:
        assert self.axis is not None, "fit or load the axis first"
        return {"axis": self.axis.state_dict()}

    def record(self) -> Dict[str, Any]:
        return {"naming": self.naming}

    def load_state(self, saved: Dict[str, Any]) -> None:
        self.axis = FeatureAxis.from_state_dict(saved["axis"])
        self.naming = saved["naming"]

    def summary(self) -> Dict[str, Any]:
        return {"features": self.settings.features, "naming": self.naming}


def fit_axis(localiser: AxisLocaliser, samples: Sequence[Sample],
             class_probability: ClassProbability) -> Dict[str, float]:
    """Fit ``localiser.axis`` on the tiles of ``samples`` (features smoothed over
    ``settings.smoothing`` cells) and name its sign by the classifier's evidence on the first
    ``settings.naming_tiles`` of them, the removed side filled per ``settings.fill``: the tile
    blurred by ``blur_sigma``, or (``shuffle``) ``patch_size`` patches of the other tiles named
    with it. Returns the naming's numbers: the mean evidence of the side chosen as foreground
    over the other, the share of tiles that agree and how many were asked."""
    settings = localiser.settings
    batch_size = settings.batch_size
    per_tile = max(1, math.ceil(MAX_CELLS / max(len(samples), 1)))
    generator = torch.Generator().manual_seed(settings.seed)
    cells = []
    for start in tqdm(range(0, len(samples), batch_size), desc="axis features", unit="batch"):
        images = [read_rgb(s.image) for s in samples[start:start + batch_size]]
        centred, tissue = localiser.features(images, settings.smoothing)
        cells.append(sample_cells(centred, tissue, per_tile, generator))
    localiser.axis = fit_feature_axis(torch.cat(cells))
    named = list(samples[:settings.naming_tiles])
    # chunks of even size, so that none is a single tile (a shuffle fill needs another one)
    chunks = np.array_split(np.arange(len(named)), max(1, math.ceil(len(named) / batch_size)))
    evidence = []
    for indices in tqdm(chunks, desc="naming the axis", unit="batch"):
        chunk = [named[i] for i in indices]
        images = [read_rgb(s.image) for s in chunk]
        tissue = localiser.tissue(images)
        fills = (shuffle_fills(images, localiser.image_size, settings.patch_size, generator)
                 if settings.fill == "shuffle" else
                 [blurred(image, settings.blur_sigma) for image in images])
        for sample, image, inside, score, fill in zip(chunk, images, tissue,
                                                      localiser.score_maps(images, tissue), fills):
            evidence.append(side_evidence(image, score, inside.numpy(), list(sample.labels),
                                          class_probability, fill))
    mean = float(np.mean(evidence)) if evidence else 0.0
    if mean < 0:
        localiser.axis = localiser.axis.flipped()
    agree = float(np.mean(np.sign(evidence) == np.sign(mean))) if evidence else 0.0
    return {"side_evidence": abs(mean), "tiles_agreeing": agree, "tiles": len(evidence)}

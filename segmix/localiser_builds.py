"""Each localiser method's build over tile files (``segmix localise``): fit it on a seeded sample
of train tiles, or reuse the file an earlier run saved with the same classes and settings (another
build is refused with both named), draw a few tiles beside their maps, and save it last.

``prototypes``: superpixel prototypes named by label statistics or the classifier's evidence
(:mod:`pseudo_masks.prototypes`); ``evidence``: the mask head (:mod:`segmix.evidence_localiser`);
``axis``: the feature axis (:mod:`segmix.axis_localiser`). Settings are the ``localiser`` config
section; :func:`fill_of` gives the fill in use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from pseudo_masks.evidence import EVIDENCE_FILLS, EvidenceMask
from pseudo_masks.feature_axis import FeatureAxis
from pseudo_masks.prototypes import (
    FEATURE_NAMES,
    FILLS,
    Prototypes,
    Superpixels,
    blurred,
    class_specificity,
    cluster_evidence,
    fit_prototypes,
    median_fill,
    prototype_shares,
    superpixels,
)

from .artifacts import AXIS_FILE, EVIDENCE_FILE, LOCALISER_FILE
from .axis_localiser import AxisLocaliser, fit_axis
from .config import ConfigError
from .data import Sample, overlay, read_rgb, read_split, write_rgb
from .evidence_localiser import EvidenceLocaliser, train_evidence, warn_if_collapsed
from .io import write_csv
from .models.factory import (
    LITE0_ARCH,
    OFFLINE_LITE0,
    create_classifier,
    normalization_of,
    weights_fingerprint,
)
from .models.pretrained import Classifier
from .training.runtime import atomic_torch_save, load_torch_file

__all__ = ["METHOD_FILLS", "ClassifierProbability", "build_prototypes", "class_probability_of",
           "describe", "fill_of", "fit_sample", "load_or_build_prototypes", "load_or_fit_axis",
           "load_or_train_evidence", "superpixels_of"]

# The settings a prototypes / evidence file is built with: a different value needs a new one.
BUILD_KEYS = {
    "prototypes": ("naming", "prototypes", "segments", "compactness", "fill", "blur_sigma",
                   "fit_tiles", "seed"),
    "evidence": ("fill", "blur_sigma", "patch_size", "epochs", "lr", "area_weight", "fit_tiles",
                 "seed"),
    "axis": ("features", "feature_layers", "smoothing", "fill", "blur_sigma", "naming_tiles",
             "fit_tiles", "seed"),
}
# What a removed region becomes, per method; the first is the default (``fill: null``).
METHOD_FILLS = {"prototypes": FILLS, "evidence": EVIDENCE_FILLS[::-1],  # evidence: shuffle first
                "axis": ("blur", "shuffle")}


def fill_of(settings: Dict[str, Any]) -> str:
    """The fill in use: the configured one, or the method's default."""
    return settings["fill"] or METHOD_FILLS[settings["method"]][0]


def _built_with(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {key: fill_of(settings) if key == "fill" else settings[key]
            for key in BUILD_KEYS[settings["method"]]}


class ClassifierProbability:
    """``(images, labels) -> [N]``: the classifier's mean probability of ``labels`` for uint8 RGB
    images (:meth:`Classifier.predict`)."""

    def __init__(self, classifier: Classifier, batch_size: int) -> None:
        self.classifier, self.batch_size = classifier, batch_size

    def __call__(self, images: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
        probabilities = torch.from_numpy(self.classifier.predict(images, self.batch_size))
        return probabilities[:, list(labels)].mean(dim=1).numpy()


def class_probability_of(config: Dict[str, Any], classes: List[str]) -> ClassifierProbability:
    """The probability function of the classifier ``config['classifier']`` (checked against
    ``classes``) for naming by class evidence."""
    return ClassifierProbability(_classifier(config, classes), int(config["localiser"]["batch_size"]))


def _classifier(config: Dict[str, Any], classes: List[str]) -> Classifier:
    """The classifier of ``config['classifier']`` on the localiser's device, checked against
    ``classes``."""
    return Classifier.from_pretrained(Path(config["classifier"]), classes=classes,
                                      device=config["localiser"]["device"])


def fit_sample(samples: List[Sample], count: Any, seed: int) -> List[Sample]:
    """The train tiles the prototypes are fitted on: all, or a seeded sample of ``count``."""
    if count is None or count >= len(samples):
        return samples
    chosen = np.random.default_rng(seed).choice(len(samples), int(count), replace=False)
    return [samples[i] for i in sorted(chosen)]


def describe(samples: Sequence[Sample], settings: Dict[str, Any]) -> List[Superpixels]:
    """The superpixels of every sample."""
    return [superpixels_of(sample, settings)
            for sample in tqdm(samples, desc="superpixels", unit="tile")]


def superpixels_of(sample: Sample, settings: Dict[str, Any]) -> Superpixels:
    return superpixels(read_rgb(sample.image), int(settings["segments"]),
                       float(settings["compactness"]))


def build_prototypes(samples: List[Sample], settings: Dict[str, Any], num_classes: int,
                     class_probability: Optional[ClassifierProbability] = None,
                     described: Optional[List[Superpixels]] = None,
                     ) -> Tuple[Prototypes, np.ndarray, List[Superpixels]]:
    """Fit prototypes on ``samples`` (their superpixels ``described``, computed if not given) and
    name them (``settings['naming']``: by label statistics, or by the class evidence
    ``class_probability`` measures); returns them, each one's mean share of the tiles' area, and
    the tiles' superpixels."""
    described = described if described is not None else describe(samples, settings)
    k = int(settings["prototypes"])
    prototypes = fit_prototypes([p.features for p in described], k, seed=int(settings["seed"]))
    maps = [prototypes.prototype_map(pixels) for pixels in described]
    shares = np.stack([prototype_shares(m, k) for m in maps])
    if settings["naming"] == "labels":
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
            fill = median_fill(rgb) if fill_of(settings) == "median" else blurred(
                rgb, settings["blur_sigma"])
            drops += share * cluster_evidence(rgb, prototype_map, list(sample.labels), k,
                                              class_probability, fill=fill)
        scores = drops / np.maximum(shares.sum(axis=0), 1e-12)
    prototypes.scores = torch.from_numpy(scores).float()
    return prototypes, shares.mean(axis=0), described


def _saved(path: Path, classes: List[str], built_with: Dict[str, Any],
           overwrite: bool) -> Optional[Dict[str, Any]]:
    """The localiser file ``path`` if it exists (and not ``overwrite``), built for ``classes`` with
    the settings ``built_with``; another build is refused with both named."""
    if not path.is_file() or overwrite:
        return None
    saved = load_torch_file(path, "localiser file")
    if not isinstance(saved, dict) or not {"classes", "settings"} <= set(saved):
        raise ConfigError(f"{path} is not a segmix localiser file: use another output folder or"
                          " --overwrite")
    if saved["classes"] != classes or saved["settings"] != built_with:
        raise ConfigError(f"{path} was built for classes {saved['classes']} with"
                          f" {saved['settings']}; this run has classes {classes} with"
                          f" {built_with}: use another output folder or --overwrite")
    print(f"localiser: reusing {path}", flush=True)
    return saved


def load_or_build_prototypes(config: Dict[str, Any], classes: List[str], output_dir: Path,
                   overwrite: bool) -> Tuple[Prototypes, Dict[Path, Superpixels]]:
    """The prototypes of ``output_dir`` if built with the same classes and settings, else new
    ones (with ``prototypes.csv`` and ``prototypes.png``); and the superpixels of the tiles a
    new build was fitted on, by image path (a map needs them again)."""
    settings = config["localiser"]
    path = output_dir / LOCALISER_FILE
    built_with = _built_with(settings)
    saved = _saved(path, classes, built_with, overwrite)
    if saved is not None:
        return Prototypes.from_state_dict(saved["prototypes"]), {}
    class_probability = (class_probability_of(config, classes)
                         if settings["naming"] == "classifier" else None)
    samples = fit_sample(read_split(config["data"], "train"), settings["fit_tiles"], int(settings["seed"]))
    prototypes, shares, described = build_prototypes(samples, settings, len(classes),
                                                     class_probability)
    raw_means = prototypes.centroids * prototypes.std + prototypes.mean
    write_csv(output_dir / "prototypes.csv", [
        {"prototype": c, "score": float(prototypes.scores[c]), "area_share": shares[c],
         **{name: float(raw_means[c, f]) for f, name in enumerate(FEATURE_NAMES)}}
        for c in range(prototypes.k)])
    _draw(output_dir / "prototypes.png", samples[:4], described[:4], prototypes)
    # written last: its presence means the build finished (a re-run reuses it)
    atomic_torch_save(path, {"prototypes": prototypes.state_dict(), "classes": classes,
                             "settings": built_with})
    order = torch.argsort(prototypes.scores, descending=True).tolist()
    meaning = ("class specificity of the area share" if settings["naming"] == "labels" else
               "drop of the class probability when removed")
    print(f"prototypes by score ({meaning}): "
          + ", ".join(f"#{c} {prototypes.scores[c]:+.3f} ({100 * shares[c]:.0f}% of area)"
                      for c in order), flush=True)
    return prototypes, {sample.image: pixels for sample, pixels in zip(samples, described)}


def _draw(path: Path, samples: Sequence[Sample], described: Sequence[Superpixels],
          prototypes: Prototypes) -> None:
    """Rows of: the tile, its prototypes in colour, its foreground map (white = foreground)."""
    rows = []
    for sample, pixels in zip(samples, described):
        rgb = read_rgb(sample.image)
        kinds = overlay(rgb, prototypes.prototype_map(pixels).astype(np.int64) + 1, prototypes.k,
                        alpha=0.6)
        rows.append([rgb, kinds, _grey(prototypes.foreground(pixels))])
    _write_rows(path, rows)


def _grey(foreground: np.ndarray) -> np.ndarray:
    grey = np.rint(np.clip(foreground, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _draw_maps(path: Path, samples: List[Sample],
               maps_of: Callable[[List[Sample]], List[np.ndarray]]) -> None:
    """Rows of: the tile, its foreground map (``maps_of``; white = foreground)."""
    _write_rows(path, [[read_rgb(sample.image), _grey(foreground)]
                       for sample, foreground in zip(samples, maps_of(samples))])


def _write_rows(path: Path, rows: List[List[np.ndarray]]) -> None:
    """A picture of ``rows`` of RGB images side by side (rows padded to the widest)."""
    joined = [np.concatenate(row, axis=1) for row in rows]
    width = max(row.shape[1] for row in joined)
    write_rgb(path, np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)))
                                    for row in joined], axis=0))


def _check_shuffle_patch(config: Dict[str, Any], classifier: Classifier) -> None:
    """With ``localiser.fill: shuffle``, its patch size must divide the classifier's input size."""
    height, width = classifier.image_size
    patch = int(config["localiser"]["patch_size"])
    if fill_of(config["localiser"]) == "shuffle" and (height % patch or width % patch):
        raise ConfigError(f"localiser.patch_size {patch} must divide the classifier's input size"
                          f" {height}x{width} ({config['classifier']})")


# -- evidence removal -----------------------------------------------------------------------------
def load_or_train_evidence(config: Dict[str, Any], classes: List[str], output_dir: Path,
                            overwrite: bool) -> Tuple[EvidenceLocaliser, Dict[str, float]]:
    """The mask head of ``output_dir`` if trained with the same classes and settings, else a new
    one trained on the train tiles (with ``evidence.csv`` and ``evidence.png``); and the losses
    of its last training epoch."""
    settings = config["localiser"]
    classifier = _classifier(config, classes)
    info, device = classifier.info, classifier.device
    _check_shuffle_patch(config, classifier)
    with torch.random.fork_rng(devices=[]):  # the head's start depends on the seed alone
        torch.manual_seed(int(settings["seed"]))
        head = EvidenceMask(classifier.network).to(device)
    localiser = EvidenceLocaliser(head, info, device)
    path, built_with = output_dir / EVIDENCE_FILE, _built_with(settings)
    saved = _saved(path, classes, built_with, overwrite)
    if saved is not None:
        head.load_state_dict(saved["head"])
        return localiser, saved["history"][-1]
    samples = fit_sample(read_split(config["data"], "train"), settings["fit_tiles"],
                         int(settings["seed"]))
    history = train_evidence(localiser, samples, {**settings, "fill": fill_of(settings)}, info,
                             len(classes))
    head.eval()
    warn_if_collapsed(history[-1]["area"], float(settings["area_weight"]))
    write_csv(output_dir / "evidence.csv", history)
    _draw_maps(output_dir / "evidence.png", samples[:4], localiser.maps)
    # written last: its presence means the training finished (a re-run reuses it)
    atomic_torch_save(path, {"head": head.state_dict(), "classes": classes,
                             "settings": built_with, "history": history})
    return localiser, history[-1]


# -- feature axis ---------------------------------------------------------------------------------
def _axis_localiser(config: Dict[str, Any], classifier: Classifier) -> AxisLocaliser:
    """The feature extractor of ``localiser.features`` at the classifier's input size."""
    settings = config["localiser"]
    if settings["features"] == "classifier":
        network, (mean, std) = classifier.network, (classifier.mean, classifier.std)
    else:
        network = create_classifier(LITE0_ARCH, 1000, weights=OFFLINE_LITE0)
        mean, std = normalization_of(network)
    return AxisLocaliser(network, settings["feature_layers"], image_size=classifier.image_size,
                         mean=mean, std=std, device=classifier.device)


def load_or_fit_axis(config: Dict[str, Any], classes: List[str], output_dir: Path,
                      overwrite: bool) -> Tuple[AxisLocaliser, Dict[str, float]]:
    """The axis of ``output_dir`` if fitted with the same classes and settings, else a new one
    (with ``axis.png``); and its naming's numbers."""
    settings = config["localiser"]
    classifier = _classifier(config, classes)
    _check_shuffle_patch(config, classifier)
    localiser = _axis_localiser(config, classifier)
    path = output_dir / AXIS_FILE
    # the features and the naming, hence the axis, depend on the classifier and its input size
    built_with = {**_built_with(settings), "image_size": list(classifier.image_size),
                  "classifier_weights": weights_fingerprint(classifier.network)}
    if fill_of(settings) == "shuffle":  # recorded only where it matters: blur-named files stay valid
        built_with["patch_size"] = settings["patch_size"]
    saved = _saved(path, classes, built_with, overwrite)
    if saved is not None:
        localiser.axis = FeatureAxis.from_state_dict(saved["axis"])
        return localiser, saved["naming"]
    samples = fit_sample(read_split(config["data"], "train"), settings["fit_tiles"],
                         int(settings["seed"]))
    probability = ClassifierProbability(classifier, int(settings["batch_size"]))
    naming = fit_axis(localiser, samples, {**settings, "fill": fill_of(settings)}, probability)
    print(f"localiser: feature axis named by the classifier: keeping the foreground side holds"
          f" the class probability {naming['side_evidence']:.3f} higher than keeping the other"
          f" ({100 * naming['tiles_agreeing']:.0f}% of {naming['tiles']} tiles agree)",
          flush=True)
    _draw_maps(output_dir / "axis.png", samples[:4], localiser.maps)
    # written last: its presence means the fit finished (a re-run reuses it)
    atomic_torch_save(path, {"axis": localiser.axis.state_dict(), "classes": classes,
                             "settings": built_with, "naming": naming})
    return localiser, naming

"""``segmix localise``: a foreground map per tile, from image-level labels only, by one of three
methods (``localiser.method``).

``prototypes`` (:mod:`pseudo_masks.prototypes`) fits ``localiser.prototypes`` k-means prototypes of superpixel stain and texture features on (up to
``localiser.fit_tiles``) train tiles, names each (``localiser.naming``: ``labels``, how unevenly it
covers the tiles of the different classes; or ``classifier``, the class evidence its removal costs
the classifier of ``classifier``), and writes for every tile of ``splits`` its foreground map
(``maps/<split>/<tile stem>.png``, greyscale 0-255). ``prototypes.pt`` keeps the prototypes with the
classes and settings they were built for; ``prototypes.csv`` and ``prototypes.png`` show them;
``summary.json`` marks the run finished. A re-run reuses the prototypes (if built with the same
classes and settings) and writes only missing maps. ``pseudo-masks`` blends the maps with the CAMs
by ``masks.foreground_weight``.

``evidence`` (:mod:`pseudo_masks.evidence`) trains a small mask head on the frozen classifier of
``classifier`` for ``localiser.epochs`` over (up to ``localiser.fit_tiles``) train tiles: keeping
the masked region must keep the tile's class, removing it (``localiser.fill``: ``shuffle``, other
tiles' patches, or ``blur``) must bring the class down to its prior, and ``localiser.area_weight``
prices the mask's share of the tissue. ``evidence.pt`` keeps the head with its classes and
settings (written last; a re-run reuses it), ``evidence.csv`` the losses per epoch and
``evidence.png`` a few tiles beside their maps. The maps are gated by the tissue prior.

``axis`` (:mod:`pseudo_masks.feature_axis`) takes the dense features of ``localiser.feature_layers``
of a frozen backbone (``localiser.features``: ``classifier``, the classifier of ``classifier``; or
``imagenet``, the offline ImageNet EfficientNet-Lite0), centred per tile, and fits their first
principal component over (up to ``localiser.fit_tiles``) train tiles, with the features averaged
over ``localiser.smoothing`` cells across: the main way tissue varies inside a tile, region by
region. The maps score the unsmoothed features. The classifier names its sign on
``localiser.naming_tiles`` tiles: the side that keeps the tile's class when the other is filled
(``localiser.fill``: ``blur``, or ``shuffle``, other tiles' patches) is foreground. ``axis.pt``
keeps the axis with its classes, settings, input size and a fingerprint of the classifier's weights
(a re-run reuses it; another classifier gets refused), ``axis.png`` shows a few tiles beside their
maps.

``localiser.method: none`` writes only the summary (the pseudo masks then come from CAMs alone).
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

from ..artifacts import (
    AXIS_FILE,
    EVIDENCE_FILE,
    LOCALISER_FILE,
    SUMMARY_FILE,
    foreground_map_path,
    write_foreground_map,
)
from ..axis_localiser import AxisLocaliser, fit_axis
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    Sample,
    dataset_classes,
    overlay,
    read_rgb,
    read_split,
    unique_names,
    validate_data,
    write_rgb,
)
from ..evidence_localiser import EvidenceLocaliser, train_evidence, warn_if_collapsed
from ..io import write_csv, write_json
from ..models import (
    LITE0_ARCH,
    OFFLINE_LITE0,
    create_classifier,
    normalization_of,
    weights_fingerprint,
)
from ..pretrained import Classifier
from ..runtime import atomic_torch_save, check_device, load_torch_file

__all__ = ["DEFAULTS", "DONE_FILE", "METHODS", "NAMINGS", "RESUMABLE_CHANGES", "build_prototypes",
           "class_probability_of", "describe", "fit_sample", "run", "validate"]

DONE_FILE = SUMMARY_FILE
METHODS = ("none", "prototypes", "evidence", "axis")
AXIS_FEATURES = ("classifier", "imagenet")
NAMINGS = ("labels", "classifier")
RESUMABLE_CHANGES = {"localiser.batch_size", "localiser.device"}
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

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/localiser",
    "classifier": "runs/classifier/classifier.pt",
    "data": DATA_DEFAULTS,
    "splits": ["val"],
    "localiser": {
        "method": "none",        # none | prototypes | evidence | axis
        "naming": "labels",      # prototypes: labels (class specificity) | classifier (class evidence)
        "prototypes": 8,         # prototypes: k-means prototypes (kinds of tissue)
        "segments": 150,         # prototypes: SLIC superpixels per tile
        "compactness": 10.0,     # prototypes: SLIC, higher = squarer superpixels
        "fill": None,            # a removed region becomes: prototypes median (default) | blur;
                                 # evidence shuffle (other tiles' patches, default) | blur;
                                 # axis (naming its sign) blur (default) | shuffle
        "blur_sigma": 16.0,      # with fill: blur, how much the tile is blurred (px)
        "patch_size": 32,        # fill shuffle: patch size (px at the classifier's size)
        "epochs": 3,             # evidence: passes over the fit tiles
        "lr": 0.001,             # evidence: Adam learning rate of the mask head
        "area_weight": 20.0,     # evidence: price of the mask's share of the tissue (ramped up)
        "features": "classifier",  # axis: the backbone, classifier (of `classifier`) | imagenet
        "feature_layers": ["blocks.2", "blocks.3", "blocks.4"],  # axis: modules whose maps are fused
        "smoothing": 5,          # axis: fitted on features averaged over this many cells (odd)
        "naming_tiles": 96,      # axis: fit tiles on which the classifier names the axis's sign
        "fit_tiles": 500,        # train tiles (a seeded sample) to fit the localiser on
        "seed": 0,
        "batch_size": 32,
        "device": "auto",
    },
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    settings = config["localiser"]
    check_device(settings["device"], "localiser.device")
    if settings["method"] not in METHODS:
        raise ConfigError(f"localiser.method must be one of {', '.join(METHODS)}, got"
                          f" {settings['method']!r}")
    splits = config["splits"]
    if not splits or any(split not in ("train", "val") for split in splits):
        raise ConfigError(f"splits must list train and/or val, got {splits!r}")
    if settings["method"] == "none":
        return
    method, fills = settings["method"], METHOD_FILLS[settings["method"]]
    if settings["fill"] is not None and settings["fill"] not in fills:
        raise ConfigError(f"localiser.fill must be one of {', '.join(fills)} with method {method},"
                          f" got {settings['fill']!r}")
    validate_data(config["data"], required=sorted({"train", *splits}))
    for key in ("batch_size", "fit_tiles", "seed"):
        if key != "fit_tiles" or settings[key] is not None:
            check_number(f"localiser.{key}", settings[key], integer=True, positive=key != "seed")
    check_number("localiser.blur_sigma", settings["blur_sigma"])
    if _fill(settings) == "shuffle":
        check_number("localiser.patch_size", settings["patch_size"], integer=True, positive=True)
        if int(settings["batch_size"]) < 2:
            raise ConfigError("localiser.fill=shuffle takes patches from other tiles of the batch:"
                              f" localiser.batch_size must be at least 2, got {settings['batch_size']}")
    if method == "axis":
        _validate_axis(settings)
        return
    if method == "evidence":
        for key in ("epochs", "patch_size"):
            check_number(f"localiser.{key}", settings[key], integer=True, positive=True)
        for key in ("lr", "area_weight"):
            check_number(f"localiser.{key}", settings[key])
        return
    if settings["naming"] not in NAMINGS:
        raise ConfigError(f"localiser.naming must be one of {', '.join(NAMINGS)}, got"
                          f" {settings['naming']!r}")
    for key in ("prototypes", "segments"):
        check_number(f"localiser.{key}", settings[key], integer=True, positive=True)
    check_number("localiser.compactness", settings["compactness"])
    k, fit_tiles = settings["prototypes"], settings["fit_tiles"]
    if k < 2:
        raise ConfigError(f"localiser.prototypes must be at least 2, got {k}")
    if fit_tiles is not None and fit_tiles < k:
        raise ConfigError(f"localiser.fit_tiles ({fit_tiles}) must be at least localiser.prototypes"
                          f" ({k}): each prototype needs tiles to come from")


def _validate_axis(settings: Dict[str, Any]) -> None:
    if settings["features"] not in AXIS_FEATURES:
        raise ConfigError(f"localiser.features must be one of {', '.join(AXIS_FEATURES)}, got"
                          f" {settings['features']!r}")
    layers = settings["feature_layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
        raise ConfigError(f"localiser.feature_layers must be a list of module names (e.g."
                          f" [blocks.2, blocks.4]), got {layers!r}")
    for key in ("smoothing", "naming_tiles"):
        check_number(f"localiser.{key}", settings[key], integer=True, positive=True)
    if settings["smoothing"] % 2 == 0:
        raise ConfigError(f"localiser.smoothing must be odd (a window centred on each cell), got"
                          f" {settings['smoothing']}")
    if _fill(settings) == "shuffle" and settings["naming_tiles"] < 2:
        raise ConfigError("localiser.fill=shuffle names the axis with other tiles' patches:"
                          f" localiser.naming_tiles must be at least 2, got {settings['naming_tiles']}")


def _fill(settings: Dict[str, Any]) -> str:
    """The fill in use: the configured one, or the method's default."""
    return settings["fill"] or METHOD_FILLS[settings["method"]][0]


def _built_with(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {key: _fill(settings) if key == "fill" else settings[key]
            for key in BUILD_KEYS[settings["method"]]}


class _ClassProbability:
    """``(images, labels) -> [N]``: the classifier's mean probability of ``labels`` for uint8 RGB
    images (:meth:`Classifier.predict`)."""

    def __init__(self, classifier: Classifier, batch_size: int) -> None:
        self.classifier, self.batch_size = classifier, batch_size

    def __call__(self, images: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
        probabilities = torch.from_numpy(self.classifier.predict(images, self.batch_size))
        return probabilities[:, list(labels)].mean(dim=1).numpy()


def class_probability_of(config: Dict[str, Any], classes: List[str]) -> _ClassProbability:
    """The probability function of the classifier ``config['classifier']`` (checked against
    ``classes``) for naming by class evidence."""
    return _ClassProbability(_classifier(config, classes), int(config["localiser"]["batch_size"]))


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
    return [_superpixels_of(sample, settings)
            for sample in tqdm(samples, desc="superpixels", unit="tile")]


def _superpixels_of(sample: Sample, settings: Dict[str, Any]) -> Superpixels:
    return superpixels(read_rgb(sample.image), int(settings["segments"]),
                       float(settings["compactness"]))


def build_prototypes(samples: List[Sample], settings: Dict[str, Any], num_classes: int,
                     class_probability: Optional[_ClassProbability] = None,
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
            fill = median_fill(rgb) if _fill(settings) == "median" else blurred(
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


def _load_or_build(config: Dict[str, Any], classes: List[str], output_dir: Path,
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


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Fit (or reuse) the prototypes and write the foreground map of every tile of
    ``config['splits']``; returns the summary written to ``summary.json``."""
    validate(config)
    settings, data = config["localiser"], config["data"]
    if settings["method"] == "none":
        summary = {"method": "none"}
        write_json(output_dir / DONE_FILE, summary)
        print("localiser.method is none: no foreground maps (pseudo masks from CAMs alone)")
        return summary
    classes = dataset_classes(data)
    if settings["method"] == "evidence":
        localiser, final_losses = _load_or_train_evidence(config, classes, output_dir, overwrite)
        written = _write_maps(config, output_dir, overwrite, localiser.maps)
        extra: Dict[str, Any] = {"fill": _fill(settings), "final_losses": final_losses}
    elif settings["method"] == "axis":
        axis_localiser, naming = _load_or_fit_axis(config, classes, output_dir, overwrite)
        written = _write_maps(config, output_dir, overwrite, axis_localiser.maps)
        extra = {"features": settings["features"], "naming": naming}
    else:
        prototypes, fitted = _load_or_build(config, classes, output_dir, overwrite)

        def prototype_maps(samples: List[Sample]) -> List[np.ndarray]:
            return [prototypes.foreground(fitted[s.image] if s.image in fitted
                                          else _superpixels_of(s, settings)) for s in samples]
        written = _write_maps(config, output_dir, overwrite, prototype_maps)
        extra = {"naming": settings["naming"], "scores": prototypes.scores.tolist()}
    summary = {"method": settings["method"], "classes": classes, **extra, "maps_written": written,
               "splits": list(config["splits"])}
    write_json(output_dir / DONE_FILE, summary)
    print(f"wrote {written} foreground maps and {output_dir / DONE_FILE}", flush=True)
    return summary


def _write_maps(config: Dict[str, Any], output_dir: Path, overwrite: bool,
                maps_of: Callable[[List[Sample]], List[np.ndarray]]) -> int:
    """Write the foreground map (``maps_of``: samples -> maps at their tiles' sizes) of every tile
    of ``config['splits']`` that has none yet; returns how many were written."""
    written, batch_size = 0, int(config["localiser"]["batch_size"])
    for split in config["splits"]:
        samples = read_split(config["data"], split)
        todo = [(sample, foreground_map_path(output_dir, split, name))
                for sample, name in zip(samples, unique_names(samples))]
        todo = [(sample, path) for sample, path in todo if overwrite or not path.exists()]
        with tqdm(total=len(todo), desc=f"maps {split}", unit="tile") as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                for (_, path), foreground in zip(chunk, maps_of([s for s, _ in chunk])):
                    write_foreground_map(path, foreground)
                written += len(chunk)
                bar.update(len(chunk))
    return written


def _check_shuffle_patch(config: Dict[str, Any], classifier: Classifier) -> None:
    """With ``localiser.fill: shuffle``, its patch size must divide the classifier's input size."""
    height, width = classifier.image_size
    patch = int(config["localiser"]["patch_size"])
    if _fill(config["localiser"]) == "shuffle" and (height % patch or width % patch):
        raise ConfigError(f"localiser.patch_size {patch} must divide the classifier's input size"
                          f" {height}x{width} ({config['classifier']})")


# -- evidence removal -----------------------------------------------------------------------------
def _load_or_train_evidence(config: Dict[str, Any], classes: List[str], output_dir: Path,
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
    history = train_evidence(localiser, samples, {**settings, "fill": _fill(settings)}, info,
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


def _load_or_fit_axis(config: Dict[str, Any], classes: List[str], output_dir: Path,
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
    if _fill(settings) == "shuffle":  # recorded only where it matters: blur-named files stay valid
        built_with["patch_size"] = settings["patch_size"]
    saved = _saved(path, classes, built_with, overwrite)
    if saved is not None:
        localiser.axis = FeatureAxis.from_state_dict(saved["axis"])
        return localiser, saved["naming"]
    samples = fit_sample(read_split(config["data"], "train"), settings["fit_tiles"],
                         int(settings["seed"]))
    probability = _ClassProbability(classifier, int(settings["batch_size"]))
    naming = fit_axis(localiser, samples, {**settings, "fill": _fill(settings)}, probability)
    print(f"localiser: feature axis named by the classifier: keeping the foreground side holds"
          f" the class probability {naming['side_evidence']:.3f} higher than keeping the other"
          f" ({100 * naming['tiles_agreeing']:.0f}% of {naming['tiles']} tiles agree)",
          flush=True)
    _draw_maps(output_dir / "axis.png", samples[:4], localiser.maps)
    # written last: its presence means the fit finished (a re-run reuses it)
    atomic_torch_save(path, {"axis": localiser.axis.state_dict(), "classes": classes,
                             "settings": built_with, "naming": naming})
    return localiser, naming

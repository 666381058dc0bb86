"""``segmix localise``: a foreground map per tile from class-agnostic prototypes named from the
image-level labels (:mod:`pseudo_masks.prototypes`).

Fits ``localiser.prototypes`` k-means prototypes of superpixel stain and texture features on (up to
``localiser.fit_tiles``) train tiles, names each (``localiser.naming``: ``labels``, how unevenly it
covers the tiles of the different classes; or ``classifier``, the class evidence its removal costs
the classifier of ``classifier``), and writes for every tile of ``splits`` its foreground map
(``maps/<split>/<tile stem>.png``, greyscale 0-255). ``prototypes.pt`` keeps the prototypes with the
classes and settings they were built for; ``prototypes.csv`` and ``prototypes.png`` show them;
``summary.json`` marks the run finished. A re-run reuses the prototypes (if built with the same
classes and settings) and writes only missing maps. ``pseudo-masks`` blends the maps with the CAMs
by ``masks.foreground_weight``.

``localiser.method: none`` writes only the summary (the pseudo masks then come from CAMs alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

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
    LOCALISER_FILE,
    SUMMARY_FILE,
    foreground_map_path,
    write_foreground_map,
)
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    Sample,
    build_transform,
    dataset_classes,
    image_size_of,
    overlay,
    read_rgb,
    read_split,
    unique_names,
    validate_data,
    write_rgb,
)
from ..io import write_csv, write_json
from ..models import load_classifier
from ..runtime import atomic_torch_save, setup_runtime

__all__ = ["DEFAULTS", "DONE_FILE", "METHODS", "NAMINGS", "RESUMABLE_CHANGES", "build_prototypes",
           "class_probability_of", "describe", "fit_sample", "run", "validate"]

DONE_FILE = SUMMARY_FILE
METHODS = ("none", "prototypes")
NAMINGS = ("labels", "classifier")
RESUMABLE_CHANGES = {"localiser.batch_size", "localiser.device"}
# The settings a prototypes file is built with: a different value needs new prototypes.
BUILD_KEYS = ("naming", "prototypes", "segments", "compactness", "fill", "blur_sigma", "fit_tiles", "seed")

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/localiser",
    "classifier": "runs/classifier/classifier.pt",
    "data": DATA_DEFAULTS,
    "splits": ["val"],
    "localiser": {
        "method": "none",        # none | prototypes
        "naming": "labels",      # labels (class specificity) | classifier (class evidence)
        "prototypes": 8,         # k-means prototypes (kinds of tissue)
        "segments": 150,         # SLIC superpixels per tile
        "compactness": 10.0,     # SLIC: higher = squarer superpixels, lower = closer to edges
        "fill": "median",        # a removed prototype becomes: median (the tile's median colour) | blur
        "blur_sigma": 16.0,      # with fill: blur, how much the tile is blurred
        "fit_tiles": 500,        # train tiles (a seeded sample) to fit and name the prototypes
        "seed": 0,
        "batch_size": 32,
        "device": "auto",
    },
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    settings = config["localiser"]
    if settings["method"] not in METHODS:
        raise ConfigError(f"localiser.method must be one of {', '.join(METHODS)}, got"
                          f" {settings['method']!r}")
    splits = config["splits"]
    if not splits or any(split not in ("train", "val") for split in splits):
        raise ConfigError(f"splits must list train and/or val, got {splits!r}")
    if settings["method"] == "none":
        return
    for key, valid in (("naming", NAMINGS), ("fill", FILLS)):
        if settings[key] not in valid:
            raise ConfigError(f"localiser.{key} must be one of {', '.join(valid)}, got"
                              f" {settings[key]!r}")
    validate_data(config["data"], required=sorted({"train", *splits}))
    for key in ("prototypes", "segments", "batch_size", "fit_tiles", "seed"):
        if key != "fit_tiles" or settings[key] is not None:
            check_number(f"localiser.{key}", settings[key], integer=True, positive=key != "seed")
    for key in ("compactness", "blur_sigma"):
        check_number(f"localiser.{key}", settings[key])
    k, fit_tiles = settings["prototypes"], settings["fit_tiles"]
    if k < 2:
        raise ConfigError(f"localiser.prototypes must be at least 2, got {k}")
    if fit_tiles is not None and fit_tiles < k:
        raise ConfigError(f"localiser.fit_tiles ({fit_tiles}) must be at least localiser.prototypes"
                          f" ({k}): each prototype needs tiles to come from")


class _ClassProbability:
    """``(images, labels) -> [N]``: the classifier's mean probability of ``labels`` for uint8 RGB
    images, each resized and normalised as the classifier was trained."""

    def __init__(self, model: torch.nn.Module, info: Dict[str, Any], device: torch.device,
                 batch_size: int) -> None:
        self.model, self.device, self.batch_size = model, device, batch_size
        self.transform = build_transform([], image_size_of(info["image_size"]), info["mean"],
                                         info["std"])
        self.softmax = info.get("loss") == "ce"

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(image=image)["image"]
                                 for image in images[start:start + self.batch_size]])
            logits = self.model(batch.to(self.device)).float()
            scores = torch.softmax(logits, dim=1) if self.softmax else torch.sigmoid(logits)
            out.append(scores[:, list(labels)].mean(dim=1).cpu())
        return torch.cat(out).numpy()


def class_probability_of(config: Dict[str, Any], classes: List[str]) -> _ClassProbability:
    """The probability function of the classifier ``config['classifier']`` (checked against
    ``classes``) for naming by class evidence."""
    settings = config["localiser"]
    runtime = setup_runtime(settings["device"])
    model, info = load_classifier(Path(config["classifier"]), map_location="cpu")
    if list(info["classes"]) != classes:
        raise ConfigError(f"the classifier {config['classifier']} was trained on classes"
                          f" {info['classes']}, data.classes is {classes}")
    return _ClassProbability(model.to(runtime.device), info, runtime.device,
                             int(settings["batch_size"]))


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
            fill = median_fill(rgb) if settings["fill"] == "median" else blurred(
                rgb, settings["blur_sigma"])
            drops += share * cluster_evidence(rgb, prototype_map, list(sample.labels), k,
                                              class_probability, fill=fill)
        scores = drops / np.maximum(shares.sum(axis=0), 1e-12)
    prototypes.scores = torch.from_numpy(scores).float()
    return prototypes, shares.mean(axis=0), described


def _load_or_build(config: Dict[str, Any], classes: List[str], output_dir: Path,
                   overwrite: bool) -> Tuple[Prototypes, Dict[Path, Superpixels]]:
    """The prototypes of ``output_dir`` if built with the same classes and settings, else new
    ones (with ``prototypes.csv`` and ``prototypes.png``); and the superpixels of the tiles a
    new build was fitted on, by image path (a map needs them again)."""
    settings = config["localiser"]
    path = output_dir / LOCALISER_FILE
    built_with = {key: settings[key] for key in BUILD_KEYS}
    if path.is_file() and not overwrite:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["classes"] != classes or saved["settings"] != built_with:
            raise ConfigError(f"{path} was built for classes {saved['classes']} with"
                              f" {saved['settings']}; this run has classes {classes} with"
                              f" {built_with}: use another output folder or --overwrite")
        print(f"prototypes: reusing {path}", flush=True)
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
        grey = np.rint(prototypes.foreground(pixels) * 255).astype(np.uint8)
        rows.append(np.concatenate([rgb, kinds, np.repeat(grey[..., None], 3, axis=2)], axis=1))
    width = max(row.shape[1] for row in rows)
    write_rgb(path, np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)))
                                    for row in rows], axis=0))


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
    prototypes, fitted = _load_or_build(config, classes, output_dir, overwrite)
    written = 0
    for split in config["splits"]:
        samples = read_split(data, split)
        for sample, name in tqdm(list(zip(samples, unique_names(samples))), desc=f"maps {split}",
                                 unit="tile"):
            path = foreground_map_path(output_dir, split, name)
            if path.exists() and not overwrite:
                continue
            pixels = fitted[sample.image] if sample.image in fitted else _superpixels_of(sample, settings)
            write_foreground_map(path, prototypes.foreground(pixels))
            written += 1
    summary = {"method": "prototypes", "classes": classes,
               "naming": settings["naming"], "scores": prototypes.scores.tolist(),
               "maps_written": written,
               "splits": list(config["splits"])}
    write_json(output_dir / DONE_FILE, summary)
    print(f"wrote {written} foreground maps and {output_dir / DONE_FILE}", flush=True)
    return summary

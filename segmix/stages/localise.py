"""``segmix localise``: a foreground map per tile, from image-level labels only, by one of three
methods (``localiser.method``; ``axis``, the default, is the one that works on EBHI-Seg and WBC-d2).

``prototypes`` (:mod:`pseudo_masks.prototypes`) fits ``localiser.prototypes`` k-means prototypes of
superpixel stain and texture features on (up to ``localiser.fit_tiles``) train tiles, names each
(``localiser.naming``: ``labels``, how unevenly it covers the tiles of the different classes; or
``classifier``, the class evidence its removal costs the classifier of ``classifier``), and writes
for every tile of ``splits`` its foreground map (``maps/<split>/<tile stem>.png``, greyscale 0-255).
``prototypes.pt`` keeps the prototypes with the classes and settings they were built for;
``prototypes.csv`` and ``prototypes.png`` show them; ``summary.json`` marks the run finished. A
re-run reuses the prototypes (if built with the same classes and settings) and writes only missing
maps. ``pseudo-masks`` blends the maps with the CAMs by ``masks.foreground_weight``.

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

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from tqdm import tqdm

from ..artifacts import SUMMARY_FILE, foreground_map_path, write_foreground_map
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    Sample,
    dataset_classes,
    read_split,
    unique_names,
    validate_data,
)
from ..io import write_json
from ..localisers import LOCALISERS, Localiser, fit_or_reuse
from ..localisers.axis import AXIS_FEATURES
from ..localisers.prototypes import NAMINGS
from ..runtime import check_device
from ..sharding import Shard, barrier, check_shard, current_shard, finish_share, join, wait_for_file

__all__ = ["DEFAULTS", "DONE_FILE", "METHODS", "NAMINGS", "RESUMABLE_CHANGES", "run", "validate"]

DONE_FILE = SUMMARY_FILE
METHODS = ("none", *LOCALISERS)
RESUMABLE_CHANGES = {"localiser.batch_size", "localiser.device"}

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/localiser",
    "seed": 0,  # the run's seed: localiser.seed follows it unless set
    "classifier": "runs/classifier/classifier.pt",
    "data": DATA_DEFAULTS,
    "splits": ["val"],
    "shard": None,  # i/n or slurm: this process's share of the tiles (docs/slides.md)
    "localiser": {
        "method": "axis",        # axis (default) | prototypes | evidence | none (CAMs alone)
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
        "seed": None,            # the sample and the fit; null: the run's `seed`
        "batch_size": 32,
        "device": "auto",
    },
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    check_shard(config["shard"])
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
    method, localiser = settings["method"], LOCALISERS[settings["method"]]
    fills = localiser.fills
    if settings["fill"] is not None and settings["fill"] not in fills:
        raise ConfigError(f"localiser.fill must be one of {', '.join(fills)} with method {method},"
                          f" got {settings['fill']!r}")
    validate_data(config["data"], required=sorted({"train", *splits}))
    for key in ("batch_size", "fit_tiles", "seed"):
        if key != "fit_tiles" or settings[key] is not None:
            check_number(f"localiser.{key}", settings[key], integer=True, positive=key != "seed")
    check_number("localiser.blur_sigma", settings["blur_sigma"])
    fill = localiser.fill_of(settings)
    if fill == "shuffle":
        check_number("localiser.patch_size", settings["patch_size"], integer=True, positive=True)
        if int(settings["batch_size"]) < 2:
            raise ConfigError("localiser.fill=shuffle takes patches from other tiles of the batch:"
                              f" localiser.batch_size must be at least 2, got {settings['batch_size']}")
    if method == "axis":
        _validate_axis(settings, fill)
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


def _validate_axis(settings: Dict[str, Any], fill: str) -> None:
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
    if fill == "shuffle" and settings["naming_tiles"] < 2:
        raise ConfigError("localiser.fill=shuffle names the axis with other tiles' patches:"
                          f" localiser.naming_tiles must be at least 2, got {settings['naming_tiles']}")


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Fit (or reuse) the localiser and write the foreground map of every tile of this process's
    share (:mod:`segmix.sharding`) of ``config['splits']``; returns the summary written to
    ``summary.json`` once every share is done."""
    validate(config)
    shard = current_shard(config["shard"])
    settings, data = config["localiser"], config["data"]
    if settings["method"] == "none":
        summary = {"method": "none"}
        write_json(output_dir / DONE_FILE, summary)
        print("localiser.method is none: no foreground maps (pseudo masks from CAMs alone)")
        return summary
    if overwrite and shard.count > 1 and not shard.torchrun:
        raise ConfigError("--overwrite with shard: the shares of a job array cannot tell a new fit"
                          " of the localiser from the old one; start the array in a new"
                          " --output-dir instead")
    join(shard)  # before the classifier joins the process group with its own backend
    start = time.perf_counter()
    classes = dataset_classes(data)
    localiser = LOCALISERS[settings["method"]].build(config, classes)
    _fit_once(localiser, data, output_dir, overwrite, shard)
    items = [(split, sample, foreground_map_path(output_dir, split, name))
             for split in config["splits"]
             for samples in (read_split(data, split),)
             for sample, name in zip(samples, unique_names(samples))]
    batches = [batch for _, batch in shard.take_batches(len(items), int(settings["batch_size"]))]
    todo = [[p for p in batch if overwrite or not items[p][2].exists()] for batch in batches]
    _write_maps(items, [batch for batch in todo if batch], localiser.maps)
    report = finish_share(shard, output_dir, items=sum(map(len, batches)),
                          computed=[p for batch in todo for p in batch], skipped={},
                          seconds=time.perf_counter() - start)
    if report is None:
        return {"shard": shard.name, "merged": False}
    summary = {"method": settings["method"], "classes": classes, **localiser.summary(),
               "maps_written": len(report.computed), "splits": list(config["splits"]),
               "ranks": report.ranks}
    write_json(output_dir / DONE_FILE, summary)
    print(f"wrote {len(report.computed)} foreground maps and {output_dir / DONE_FILE}", flush=True)
    return summary


def _fit_once(localiser: Localiser, data: Dict[str, Any], output_dir: Path, overwrite: bool,
              shard: Shard) -> None:
    """Fit (or reuse) the localiser in one process, the first, and give the others its fit:
    under torchrun after a barrier, in a job array once its file is there."""
    if shard.index == 0:
        fit_or_reuse(localiser, data, output_dir, overwrite)
    if shard.torchrun:
        barrier()
    if shard.index == 0:
        return
    path = output_dir / localiser.file_name
    wait_for_file(path, "the localiser's fit (share 0 fits it)")
    localiser.load(path)


def _write_maps(items: List[Tuple[str, Sample, Path]], batches: List[List[int]],
                maps_of: Callable[[List[Sample]], List[np.ndarray]]) -> None:
    """Write the foreground map (``maps_of``: samples -> maps at their tiles' sizes) of the
    positions of ``items`` (split, sample, map path) in ``batches``, a batch at a time."""
    with tqdm(total=sum(map(len, batches)), desc="maps", unit="tile") as bar:
        for batch in batches:
            chunk = [items[position] for position in batch]
            for (_, _, path), foreground in zip(chunk, maps_of([s for _, s, _ in chunk])):
                write_foreground_map(path, foreground)
            bar.update(len(chunk))

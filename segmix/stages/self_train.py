"""``segmix self-train``: rounds of self-training after the first segmenter, and the segmenter the
run hands on.

A round: the segmenter's foreground (one minus its background probability, flip-averaged)
fused with the localiser's foreground map (:func:`pseudo_masks.self_training_map`,
``self_training.weight``) gives new foreground maps (``round-N/maps``); the pseudo-mask stage runs
again on them with its own config (``round-N/pseudo-masks``: its sweep chooses the threshold
again, with or without masks; the CAMs still name the class within the tile's labels); a new
segmenter trains on those masks with the first one's config
(``round-N/segmenter``). Both steps run through :func:`segmix.stages.pipeline.run_step`, so an
interrupted round continues where it stopped.

Which segmenter is handed on: where the segmenters validate on ground truth, the round whose
final val mIoU is highest (round 0 is the first segmenter); without val masks the last round, as
the config asks (a segmenter scored on its own pseudo masks says nothing across rounds). It is
copied to ``segmenter.pt`` and ``model/`` here, with ``metrics.json`` and ``rounds.csv`` (each
round's pseudo-mask val mIoU or its estimate without masks, and its segmenter's val mIoU).
``self_training.rounds: 0`` (the default) hands on the first segmenter. With ``classifier_path``
(``segmix run`` sets the run's classifier) the model folder carries that tile classifier too
(``model/classifier/``), so one folder holds both readings: ``segmix predict --model FOLDER --set
classifier_path=FOLDER`` fuses them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from pseudo_masks import self_training_map

from ..artifacts import (
    CONFIG_FILE,
    MODEL_FOLDER,
    SEGMENTER_FILE,
    SUMMARY_FILE,
    CamRecord,
    foreground_map_path,
    last_epoch,
    localiser_method,
    read_cam_index,
    read_foreground_map,
    read_metrics,
    write_foreground_map,
    write_metrics,
)
from ..config import ConfigError, check_number, load_config
from ..data import read_rgb
from ..io import atomic_path, read_json, write_csv, write_json
from ..models.pretrained import Classifier, Segmenter
from ..models.sliding_window import FLIPS
from ..runtime import check_device
from . import pipeline

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "keep_round", "run", "validate"]

DONE_FILE = SEGMENTER_FILE
RESUMABLE_CHANGES = {"self_training.device"}

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/self-training",
    "segmenter_path": "runs/segmenter/segmenter.pt",  # the first segmenter (its folder's config)
    "pseudo_masks_dir": "runs/pseudo-masks",          # the first pseudo masks (their config)
    "classifier_path": None,  # a tile classifier for the handed-on model folder to carry
    # rounds: 0 hands on the first segmenter; weight: the segmenter's share of the new foreground
    # maps (the localiser's map the rest); flips: test-time flips of the segmenter's probabilities
    "self_training": {"rounds": 0, "weight": 0.5, "flips": ["horizontal"], "device": "auto"},
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    settings = config["self_training"]
    rounds = settings["rounds"]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"self_training.rounds must be a whole number >= 0, got {rounds!r}")
    check_number("self_training.weight", settings["weight"], positive=False)
    if settings["weight"] > 1:
        raise ConfigError(f"self_training.weight must be in [0, 1], got {settings['weight']!r}")
    flips = settings["flips"]
    if not isinstance(flips, list) or any(flip not in FLIPS for flip in flips):
        raise ConfigError(f"self_training.flips must be a list of {', '.join(FLIPS)}, got"
                          f" {flips!r}")
    check_device(settings["device"], "self_training.device")


def _first_configs(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The saved configs of the first pseudo masks and the first segmenter."""
    folders = {"pseudo-masks": Path(config["pseudo_masks_dir"]),
               "train-seg": Path(config["segmenter_path"]).parent}
    configs = {}
    for name, folder in folders.items():
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"self-training reads the config of the first {name} run, and"
                              f" {path} does not exist: run `segmix {name}` first (segmix run"
                              " does)")
        configs[name] = load_config(path, pipeline.stage_defaults(name))
    return configs


def _write_maps(records: List[CamRecord], segmenter_path: Path, localiser_dir: Optional[Path],
                maps_dir: Path, settings: Dict[str, Any], overwrite: bool) -> None:
    """One round's foreground maps (missing ones only, unless ``overwrite``)."""
    segmenter = Segmenter.from_pretrained(segmenter_path, device=settings["device"])
    for record in tqdm(records, desc=f"self-training maps ({maps_dir.parent.name})", unit="tile"):
        target = foreground_map_path(maps_dir, record.split, record.name)
        if target.exists() and not overwrite:
            continue
        image = read_rgb(record.image)
        probabilities = segmenter.predict(image, flips=settings["flips"],
                                          probabilities=True).probabilities
        localiser = (torch.from_numpy(read_foreground_map(localiser_dir, record.split, record.name))
                     if localiser_dir is not None else None)
        fused = self_training_map(torch.from_numpy(probabilities.astype(np.float32)), localiser,
                                  float(settings["weight"]))
        write_foreground_map(target, fused.numpy())
    write_json(maps_dir / SUMMARY_FILE, {
        "method": "self-training", "foreground": "1 - p(background)", "weight": settings["weight"],
        "segmenter": str(segmenter_path),
        "flips": settings["flips"], "localiser_dir": str(localiser_dir) if localiser_dir else None})


def _round_row(number: int, pseudo_dir: Path, segmenter_dir: Path) -> Dict[str, Any]:
    """One round's numbers: its pseudo masks on val (true mIoU where masks exist, the estimate
    without) and its segmenter's last epoch."""
    metrics = read_metrics(pseudo_dir) or {}
    quality = (read_json(pseudo_dir / SUMMARY_FILE) or {}).get("quality") or {}
    estimate = (quality.get("estimated_mIoU") or {}).get("val") or {}
    epoch = last_epoch(segmenter_dir) or {}
    return {"round": number,
            "pseudo_masks_val_mIoU": (metrics.get("val") or {}).get("with_background",
                                                                   {}).get("mIoU"),
            "pseudo_masks_val_estimated_mIoU": estimate.get("estimate"),
            "segmenter_val_mIoU": epoch.get("val_mIoU"),
            "segmenter": str(segmenter_dir / SEGMENTER_FILE)}


def _tile_classifier(config: Dict[str, Any]) -> Optional[Classifier]:
    """The tile classifier of ``classifier_path`` (None if unset), checked against the first
    segmenter's classes before any round trains."""
    if not config["classifier_path"]:
        return None
    classes = Segmenter.from_pretrained(Path(config["segmenter_path"])).classes
    return Classifier.from_pretrained(Path(config["classifier_path"]), classes=classes)


def _hand_on(segmenter_dir: Path, output_dir: Path, classifier: Optional[Classifier]) -> None:
    """Write a round's model folder (carrying the tile classifier, if any) and (last: it marks the
    stage finished) copy its segmenter file."""
    segmenter = Segmenter.from_pretrained(segmenter_dir / MODEL_FOLDER)
    segmenter.classifier = classifier
    segmenter.save_pretrained(output_dir / MODEL_FOLDER)
    with atomic_path(output_dir / SEGMENTER_FILE) as tmp:
        shutil.copyfile(segmenter_dir / SEGMENTER_FILE, tmp)


def keep_round(rows: List[Dict[str, Any]], on_truth: bool) -> Tuple[Dict[str, Any], str]:
    """The round to hand on, and why: the highest final ``segmenter_val_mIoU`` (the first of
    equals) where the segmenters validated on ground truth, else the last round."""
    if on_truth and all(row["segmenter_val_mIoU"] is not None for row in rows):
        return (max(rows, key=lambda row: row["segmenter_val_mIoU"]),
                "the highest final val mIoU against the ground truth")
    return rows[-1], "the last round (no val masks to compare the rounds by)"


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Run ``self_training.rounds`` rounds after the first segmenter and hand on the best;
    returns the metrics written to ``metrics.json``."""
    validate(config)
    settings = config["self_training"]
    first = _first_configs(config)
    classifier = _tile_classifier(config)
    pseudo_config, segmenter_config = first["pseudo-masks"], first["train-seg"]
    localiser_dir = Path(pseudo_config["localiser_dir"]) if pseudo_config["localiser_dir"] else None
    if localiser_dir is not None and localiser_method(localiser_dir) in (None, "none"):
        localiser_dir = None  # no maps to fuse with: the segmenter's own foreground decides
    rows = [_round_row(0, Path(config["pseudo_masks_dir"]), Path(config["segmenter_path"]).parent)]
    if settings["rounds"]:
        records = [r for r in read_cam_index(Path(pseudo_config["cams_dir"]))
                   if r.split in pseudo_config["splits"]]
        print(f"self-training: {settings['rounds']} round(s); each fuses the segmenter's"
              f" foreground ({settings['weight']}) with "
              + ("the localiser's maps" if localiser_dir else "nothing (no localiser maps)"),
              flush=True)
    for number in range(1, settings["rounds"] + 1):
        folder = output_dir / f"round-{number}"
        _write_maps(records, Path(rows[-1]["segmenter"]), localiser_dir, folder / "maps", settings,
                    overwrite)
        pseudo = {**pseudo_config, "localiser_dir": str(folder / "maps"),
                  "masks": {**pseudo_config["masks"], "foreground_weight": 1.0},
                  "output_dir": str(folder / "pseudo-masks")}
        pipeline.run_step("pseudo-masks", pseudo, overwrite)
        trained = {**segmenter_config, "pseudo_masks_dir": str(folder / "pseudo-masks"),
                   "output_dir": str(folder / "segmenter")}
        pipeline.run_step("train-seg", trained, overwrite)
        rows.append(_round_row(number, folder / "pseudo-masks", folder / "segmenter"))
        print(f"self-training round {number}: {rows[-1]}", flush=True)
    on_truth = Segmenter.from_pretrained(Path(rows[0]["segmenter"])).info.get("validated_on")
    kept, why = keep_round(rows, on_truth == "ground truth")
    write_csv(output_dir / "rounds.csv", rows)
    metrics = {"rounds": rows, "kept_round": kept["round"], "kept_by": why}
    write_metrics(output_dir, metrics)
    print(f"self-training hands on round {kept['round']} ({why}): {kept['segmenter']}", flush=True)
    _hand_on(Path(kept["segmenter"]).parent, output_dir, classifier)
    return metrics

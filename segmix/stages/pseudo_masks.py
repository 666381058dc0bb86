"""``segmix pseudo-masks``: stage 4, CAMs (and foreground maps) -> one palette PNG mask per tile.

Reads the ``index.csv`` and ``.npz`` files of ``segmix cams``; CAMs are resized to each tile's own
size. With ``masks.foreground_weight`` > 0 it also reads the foreground maps of ``segmix localise``
(``localiser_dir``) and blends them in (:func:`pseudo_masks.cams_to_masks`); unset (the default, or
``auto``) it is 1 (the maps decide foreground, the CAMs the class) where ``localiser_dir`` holds
maps, else 0 (the CAMs alone). Writes ``masks/<split>/<stem>.png`` (0 background, 1..K classes, 255
ignore) with ``masks/legend.json``, optional ``overlays/<split>/<stem>.png``, ``masks.csv`` (class
and ignore fractions per tile), ``metrics.json`` for splits with ground-truth masks, and
``summary.json`` (settings used, sweep choice; marks the run finished). A re-run writes only missing
masks.

The sweep (``sweep.enabled``) tries each value of one setting (e.g. ``threshold``) on a split with
ground truth (the validation split: never the data you report on) and keeps the best.

**Pseudo masks for new tiles without retraining** (``from_run`` + ``input``, or ``segmix
pseudo-masks --from-run RUN --input CSV``): every row of a labelled CSV (``image,label[,mask]``,
labels from the run's classes) gets a mask made as the run made its own: the run's CAM settings and
classifier (``cams/`` under the output folder), its localiser's fitted prototypes, mask head or feature axis
(``localiser/``, where its masks used one) and the mask settings its sweep chose; masks are read
as the ``val`` split (``masks/val/<stem>.png``); with masks in the CSV, ``metrics.json`` scores them.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from tqdm import tqdm

from pseudo_masks import (
    PROTOCOLS,
    ConfusionMatrix,
    PseudoMaskConfig,
    ScoreHistogram,
    segmentation_metrics,
)
from pseudo_masks.crf import require_crf

from ..artifacts import (
    MASKS_FOLDER,
    SUMMARY_FILE,
    CamRecord,
    pseudo_mask_path,
    read_cam_index,
    read_cam_labels,
    write_legend,
    write_metrics,
)
from ..config import ConfigError
from ..data import (
    DATA_DEFAULTS,
    dataset_classes,
    overlay,
    read_mask_png,
    validate_data,
    write_mask_png,
    write_rgb,
)
from ..io import write_csv, write_json
from ..sharding import check_shard, current_shard, join, run_share
from .foreground_weight import AUTO_WEIGHT, checked_weight, resolve_foreground_weight, uses_foreground
from .from_run import from_run_config, validate_from_run
from .mask_sweep import (
    CLEAN_SPLIT,
    SWEEP_CRITERIA,
    SWEEP_METRICS,
    histogram_sweep,
    split_has_masks,
    sweep,
    sweep_criterion,
)
from .tile_inputs import tile_inputs, tile_masks, tile_truth
from .tile_quality import (
    QUALITY_FILE,
    WORST_PICTURE,
    TileQuality,
    measure_tile,
    quality_picture,
)

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "validate"]

DONE_FILE = SUMMARY_FILE
# Leaving unreadable tiles out changes nothing computed for the others: a run refused for a bad
# file continues with data.on_bad_file=skip, as its error message suggests.
RESUMABLE_CHANGES = {"data.on_bad_file"}
DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/pseudo-masks",
    "cams_dir": "runs/cams",
    "localiser_dir": None,  # the folder of `segmix localise`; needed when masks.foreground_weight > 0
    "data": DATA_DEFAULTS,
    "splits": ["val"],
    "masks": {**PseudoMaskConfig().to_dict(), "foreground_weight": AUTO_WEIGHT},
    "sweep": {"enabled": False, "key": "threshold",
              "values": [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
              "split": "val", "protocol": "with_background", "metric": "mIoU",
              "criterion": "auto"},
    "overlays": False,
    "shard": None,     # i/n or slurm: this process's share of the tiles (docs/slides.md)
    "from_run": None,  # a `segmix run` folder whose models and chosen settings make the masks
    "input": None,     # with from_run: a labelled CSV (image,label[,mask]) of the tiles to mask
}


def _mask_settings(values: Dict[str, Any], where: str) -> PseudoMaskConfig:
    try:
        return PseudoMaskConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    check_shard(config["shard"])
    if config["from_run"] or config["input"]:
        validate_from_run(config)
        return
    splits = config["splits"]
    if not splits or any(split not in ("train", "val") for split in splits):
        raise ConfigError(f"splits must list train and/or val, got {splits!r}")
    validate_data(config["data"])
    settings = _mask_settings(checked_weight(config["masks"]), "masks")
    if settings.crf or (config["sweep"]["enabled"] and config["sweep"]["key"] == "crf"):
        try:
            require_crf()
        except ImportError as error:
            raise ConfigError(f"masks.crf: {error}") from error
    sweep_cfg = config["sweep"]
    if uses_foreground(config) and not config.get("localiser_dir"):
        raise ConfigError("masks.foreground_weight > 0 (or a sweep of it) needs localiser_dir, the"
                          " folder of `segmix localise` with its foreground maps")
    if not sweep_cfg["enabled"]:
        return
    keys = [f.name for f in fields(PseudoMaskConfig)]
    if sweep_cfg["key"] not in keys:
        raise ConfigError(f"sweep.key must be a masks setting ({', '.join(keys)}), got"
                          f" {sweep_cfg['key']!r}")
    if not sweep_cfg["values"]:
        raise ConfigError("sweep.values must list at least one value")
    for value in sweep_cfg["values"]:
        _mask_settings({**settings.to_dict(), sweep_cfg["key"]: value}, f"sweep.values ({value!r})")
    for key, valid in (("protocol", PROTOCOLS), ("metric", SWEEP_METRICS),
                       ("split", ("train", "val")), ("criterion", SWEEP_CRITERIA)):
        if sweep_cfg[key] not in valid:
            raise ConfigError(f"sweep.{key} must be one of {', '.join(valid)}, got"
                              f" {sweep_cfg[key]!r}")
    has_masks = split_has_masks(config["data"], sweep_cfg["split"])
    if has_masks is not None:
        sweep_criterion(sweep_cfg, settings, has_masks)


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Write the pseudo masks of every tile of ``config['splits']`` (after the sweep, if any);
    returns the summary written to ``summary.json``."""
    validate(config)
    shard = current_shard(config["shard"])
    join(shard)  # before any model joins the process group with its own backend
    source = None
    if config["from_run"]:
        source = {"from_run": str(config["from_run"]), "input": str(config["input"])}
        config = from_run_config(config, output_dir, overwrite)
    config = resolve_foreground_weight(config)
    data = config["data"]
    classes = dataset_classes(data)
    tiles = read_cam_index(Path(config["cams_dir"]))
    settings = PseudoMaskConfig.from_dict(dict(config["masks"]))
    localiser_dir = Path(config["localiser_dir"]) if uses_foreground(config) else None
    summary: Dict[str, Any] = {"cams_dir": str(config["cams_dir"]),
                               "localiser_dir": str(localiser_dir) if localiser_dir else None,
                               **(source or {})}
    sweep_cfg = config["sweep"]
    if sweep_cfg["enabled"]:
        sweep_tiles = [t for t in tiles if t.split == sweep_cfg["split"]]
        if not sweep_tiles:
            raise ConfigError("the sweep split has no tiles: add it to splits and to the CAM run")
        criterion = sweep_criterion(sweep_cfg, settings,
                                    all(t.mask is not None for t in sweep_tiles))
        if criterion == "masks":
            chosen, table = sweep(sweep_tiles, data, settings, sweep_cfg["key"],
                                  list(sweep_cfg["values"]), sweep_cfg["protocol"],
                                  sweep_cfg["metric"], localiser_dir)
            by = f"{sweep_cfg['metric']} ({sweep_cfg['protocol']}) against the ground truth"
            rule = "masks"
        else:
            chosen, rule, table = histogram_sweep(sweep_tiles, settings,
                                                  list(sweep_cfg["values"]), localiser_dir)
            eta = max(row["eta"] for row in table)
            if rule == "otsu":
                by = (f"the score histogram (no masks: it splits cleanly in two, eta {eta:.2f} >="
                      f" {CLEAN_SPLIT}, and this threshold splits it best)")
            else:
                by = (f"the expected mIoU (no masks: the class scores do not split cleanly, eta"
                      f" {eta:.2f} < {CLEAN_SPLIT}, so read as foreground probabilities)")
        write_csv(output_dir / "sweep.csv", table)
        settings = PseudoMaskConfig.from_dict({**settings.to_dict(), sweep_cfg["key"]: chosen})
        summary["sweep"] = {"key": sweep_cfg["key"], "chosen": chosen, "on_split": sweep_cfg["split"],
                            "criterion": criterion, "rule": rule, "by": by, "table": table}
        print(f"sweep on {sweep_cfg['split']}: {sweep_cfg['key']} = {chosen}, chosen by {by}",
              flush=True)
    summary["settings"] = settings.to_dict()
    write_legend(output_dir / MASKS_FOLDER, classes)
    by_split = {split: [t for t in tiles if t.split == split] for split in config["splits"]}
    for split, split_tiles in by_split.items():
        if not split_tiles:
            raise ConfigError(f"no CAMs for split {split!r} in {config['cams_dir']}; run `segmix"
                              f" cams` with splits including {split!r}")

    # the quality check reads how the class scores split at a threshold background
    checked = settings.background == "threshold"
    measured: Dict[Tuple[str, str], Tuple[int, ScoreHistogram]] = {}  # the tiles measured here

    def compute(tile: CamRecord, bar: Any) -> bool:
        outputs = [pseudo_mask_path(output_dir, tile.split, tile.name)]
        if config["overlays"]:
            outputs.append(output_dir / "overlays" / tile.split / f"{tile.name}.png")
        if all(path.exists() for path in outputs) and not overwrite:
            return False
        inputs = tile_inputs(tile, localiser_dir)
        mask = tile_masks(inputs, settings).numpy()
        write_mask_png(outputs[0], mask, len(classes))
        if config["overlays"]:
            write_rgb(outputs[1], overlay(inputs["rgb"], mask, len(classes)))
        if checked:
            measured[tile.split, tile.name] = measure_tile(inputs, settings)
        return True

    everything = [tile for split_tiles in by_split.values() for tile in split_tiles]
    report = run_share(everything, compute, shard, output_dir, desc="masks", unit="tile")
    if report is None:
        return {"shard": shard.name, "merged": False}
    summary["ranks"] = report.ranks
    rows, metrics = [], {}
    checker = TileQuality(settings.threshold) if checked else None
    for split, split_tiles in by_split.items():  # merged from the masks on disk
        matrix = ConfusionMatrix(len(classes))
        scored = 0
        for tile in tqdm(split_tiles, desc=f"scoring {split}", unit="tile"):
            path = pseudo_mask_path(output_dir, split, tile.name)
            mask = read_mask_png(path)
            labels = torch.from_numpy(read_cam_labels(tile.cam_path).astype(np.float32))[None]
            quality = None
            if checker is not None:  # measured here, or by another process or an earlier run
                label, histogram = (measured.get((split, tile.name))
                                    or measure_tile(tile_inputs(tile, localiser_dir), settings))
                quality = checker.add(split, tile.name, label, histogram)
            truth = tile_truth(tile, data, labels, len(classes))
            if truth is not None:
                matrix.update(torch.from_numpy(mask), torch.from_numpy(truth))
                scored += 1
            fractions = np.bincount(mask.ravel(), minlength=256) / mask.size
            rows.append({"split": split, "image": str(tile.image),
                         "mask": str(path.relative_to(output_dir)),
                         "background": fractions[0], "ignore": fractions[255],
                         **{name: fractions[i + 1] for i, name in enumerate(classes)},
                         **({"quality": quality} if quality is not None else {})})
        if scored:
            metrics[split] = {p: segmentation_metrics(matrix, p, classes) for p in PROTOCOLS}
            metrics[split]["tiles_scored"] = scored
            line = ", ".join(f"{p} mIoU {metrics[split][p]['mIoU']:.4f}" for p in PROTOCOLS)
            print(f"{split}: {line}, foreground IoU"
                  f" {metrics[split]['with_background']['foreground_iou']:.4f}", flush=True)
    write_csv(output_dir / "masks.csv", rows)
    if checker is not None:
        records = {(tile.split, tile.name): tile for tile in everything}

        def picture(split: str, name: str) -> np.ndarray:
            mask = read_mask_png(pseudo_mask_path(output_dir, split, name))
            return quality_picture(tile_inputs(records[split, name], localiser_dir), mask, settings,
                                   len(classes))

        summary["quality"] = checker.write(output_dir, picture)
        for split, estimate in summary["quality"]["estimated_mIoU"].items():
            print(f"{split}: mIoU estimated without masks {estimate['estimate']:.3f} (between"
                  f" {estimate['low']:.3f} and {estimate['high']:.3f})", flush=True)
        print(f"tile quality without masks (eta at the threshold, 0-1; median"
              f" {summary['quality']['median']}): the least clean tiles are in"
              f" {output_dir / QUALITY_FILE} and {output_dir / WORST_PICTURE}", flush=True)
    if metrics:
        write_metrics(output_dir, metrics)
    summary["metrics"] = {split: {p: m[p]["mIoU"] for p in PROTOCOLS} for split, m in metrics.items()}
    write_json(output_dir / DONE_FILE, summary)
    return summary

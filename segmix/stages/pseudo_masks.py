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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pseudo_masks import (
    PROTOCOLS,
    ConfusionMatrix,
    PseudoMaskConfig,
    ScoreHistogram,
    choose_threshold,
    cams_to_masks,
    segmentation_metrics,
    threshold_scores,
)
from pseudo_masks.crf import require_crf

from ..artifacts import (
    MASKS_FOLDER,
    SUMMARY_FILE,
    CamRecord,
    pseudo_mask_path,
    read_cam_file,
    read_cam_index,
    read_cam_labels,
    read_foreground_map,
    write_legend,
    write_metrics,
)
from ..config import ConfigError
from ..data import (
    DATA_DEFAULTS,
    DatasetError,
    count_masks,
    dataset_classes,
    mask_convention,
    overlay,
    read_label_mask,
    read_mask_png,
    read_rgb,
    validate_data,
    write_mask_png,
    write_rgb,
)
from ..io import write_csv, write_json
from ..sharding import check_shard, current_shard, join, run_share
from .foreground_weight import AUTO_WEIGHT, checked_weight, resolve_foreground_weight, uses_foreground
from .from_run import from_run_config, validate_from_run
from .tile_quality import (
    QUALITY_FILE,
    WORST_PICTURE,
    TileQuality,
    measure_tile,
    quality_picture,
)

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "sweep", "validate"]

DONE_FILE = SUMMARY_FILE
# Leaving unreadable tiles out changes nothing computed for the others: a run refused for a bad
# file continues with data.on_bad_file=skip, as its error message suggests.
RESUMABLE_CHANGES = {"data.on_bad_file"}
SWEEP_METRICS = ("mIoU", "FwIoU", "foreground_iou", "mDice")
# How the sweep chooses: `masks`, the best score against the split's ground truth; `histogram`, no
# masks needed (pseudo_masks.choose_threshold: Otsu's split of the class scores where they split
# cleanly, else the largest expected mIoU); `auto`, masks where every tile of the split has one,
# else the histogram.
SWEEP_CRITERIA = ("auto", "masks", "histogram")
# From this split quality (Otsu's eta) up the histogram is cut where it splits in two: WBC-d2's axis
# maps split at 0.80-0.81 and Otsu matched the masks' choice; EBHI-Seg's split at 0.66, where Otsu
# was 4-10 mIoU points off and the expected mIoU 0.3 (docs/benchmarks.md, "Mask-free threshold
# criteria").
CLEAN_SPLIT = 0.75

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
    has_masks = _split_has_masks(config["data"], sweep_cfg["split"])
    if has_masks is not None:
        _sweep_criterion(sweep_cfg, settings, has_masks)


def _split_has_masks(data: Dict[str, Any], split: str) -> Optional[bool]:
    """Whether every tile of ``split`` has a ground-truth mask; ``None`` where its list cannot be
    read yet (a dataset a pipeline writes first, say: the stage checks again when it runs)."""
    spec = data.get(split) or {}
    if not spec.get("path") or not Path(spec["path"]).exists():
        return None
    try:
        tiles, masked = count_masks(data, split)
    except DatasetError:
        return None
    return 0 < tiles == masked


def _sweep_criterion(sweep_cfg: Dict[str, Any], settings: PseudoMaskConfig,
                     has_masks: bool) -> str:
    """The criterion the sweep uses (``masks`` or ``histogram``), or a ConfigError that says why
    neither can choose."""
    criterion = sweep_cfg["criterion"]
    if criterion == "auto":
        criterion = "masks" if has_masks else "histogram"
    if criterion == "masks" and not has_masks:
        raise ConfigError(f"sweep.criterion=masks needs a ground-truth mask for every tile of the"
                          f" {sweep_cfg['split']} split, and some have none: use"
                          " sweep.criterion=auto (the score histogram chooses without masks)")
    if criterion == "histogram" and (sweep_cfg["key"] != "threshold"
                                     or settings.background != "threshold"):
        why = ("the split has no ground-truth masks" if not has_masks
               else "sweep.criterion=histogram")
        raise ConfigError(f"{why}, so the sweep chooses from the score histogram, which can choose"
                          f" masks.threshold only (with masks.background=threshold); this sweep"
                          f" is of {sweep_cfg['key']} with background {settings.background}: set"
                          " sweep.key=threshold, or give the split masks, or sweep.enabled=false")
    return criterion


def _cams(record: CamRecord, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A tile's CAMs ``[1, K, H, W]`` resized to its own size, and its labels ``[1, K]``."""
    arrays = read_cam_file(record.cam_path)
    cams = torch.from_numpy(arrays["cams"].astype(np.float32))[None]
    if tuple(cams.shape[-2:]) != size:
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    return cams, torch.from_numpy(arrays["labels"].astype(np.float32))[None]


def _truth(record: CamRecord, data: Dict[str, Any], labels: torch.Tensor,
           num_classes: int) -> Optional[np.ndarray]:
    if record.mask is None:
        return None
    present = tuple(int(k) for k in torch.nonzero(labels[0]).flatten())
    return read_label_mask(record.mask, present, num_classes, mask_convention(data))


def _inputs(record: CamRecord, localiser_dir: Optional[Path]) -> Dict[str, Any]:
    """The tile's RGB array (``rgb``) and the arguments of :func:`cams_to_masks` at its size:
    ``cams``, ``labels``, ``images`` and ``foreground`` (``None`` without ``localiser_dir``)."""
    image = read_rgb(record.image)
    cams, labels = _cams(record, image.shape[:2])
    foreground = None
    if localiser_dir is not None:
        values = read_foreground_map(localiser_dir, record.split, record.name)
        if values.shape != image.shape[:2]:
            raise ConfigError(f"the foreground map of {record.image} in {localiser_dir} is"
                              f" {values.shape[1]}x{values.shape[0]} px, the tile"
                              f" {image.shape[1]}x{image.shape[0]}: run `segmix localise` again")
        foreground = torch.from_numpy(values)[None]
    return {"rgb": image, "cams": cams, "labels": labels, "foreground": foreground,
            "images": torch.from_numpy(image).permute(2, 0, 1)[None]}


def _masks(inputs: Dict[str, Any], settings: PseudoMaskConfig) -> torch.Tensor:
    return cams_to_masks(inputs["cams"], inputs["labels"], settings, images=inputs["images"],
                         foreground=inputs["foreground"])[0]


def sweep(tiles: List[CamRecord], data: Dict[str, Any], base: PseudoMaskConfig, key: str,
          values: List[Any], protocol: str, metric: str,
          localiser_dir: Optional[Path] = None) -> Tuple[Any, List[Dict[str, Any]]]:
    """Score each value of ``key`` on ``tiles`` (with ground truth); return the best and the table."""
    num_classes = len(dataset_classes(data))
    matrices = {value: ConfusionMatrix(num_classes) for value in values}
    for tile in tqdm(tiles, desc=f"sweep {key}", unit="tile"):
        inputs = _inputs(tile, localiser_dir)
        truth = _truth(tile, data, inputs["labels"], num_classes)
        if truth is None:
            raise ConfigError(f"the sweep needs ground-truth masks; {tile.image} has none (set"
                              " sweep.enabled=false or sweep.split to a labelled split)")
        for value in values:
            settings = PseudoMaskConfig.from_dict({**base.to_dict(), key: value})
            mask = _masks(inputs, settings)
            matrices[value].update(mask, torch.from_numpy(truth))
    rows = []
    for value in values:
        scores = segmentation_metrics(matrices[value], protocol)
        rows.append({key: value, "mIoU": scores["mIoU"], "FwIoU": scores["FwIoU"],
                     "foreground_iou": scores["foreground_iou"], "mDice": scores["mDice"]})
    best = max(rows, key=lambda r: r[metric])
    return best[key], rows


def histogram_sweep(tiles: List[CamRecord], base: PseudoMaskConfig, values: List[float],
                    localiser_dir: Optional[Path] = None
                    ) -> Tuple[float, str, List[Dict[str, Any]]]:
    """Choose the threshold among ``values`` without masks, from the class scores of ``tiles``
    (inside their tissue, with the tissue prior), one histogram per class (a tile counts for its
    first label): :func:`pseudo_masks.choose_threshold`. Returns the threshold, the criterion used
    and the table."""
    histograms: Dict[int, ScoreHistogram] = {}
    for tile in tqdm(tiles, desc="score histogram", unit="tile"):
        inputs = _inputs(tile, localiser_dir)
        first = int(torch.nonzero(inputs["labels"][0])[0, 0]) if inputs["labels"].any() else -1
        histograms.setdefault(first, ScoreHistogram()).add(
            *threshold_scores(inputs["cams"], inputs["labels"], base, images=inputs["images"],
                              foreground=inputs["foreground"]))
    return choose_threshold(list(histograms.values()), values, CLEAN_SPLIT)


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
        criterion = _sweep_criterion(sweep_cfg, settings,
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
    measured: Dict[Tuple[str, str], Tuple[float, float]] = {}  # the qualities computed here

    def compute(tile: CamRecord, bar: Any) -> bool:
        outputs = [pseudo_mask_path(output_dir, tile.split, tile.name)]
        if config["overlays"]:
            outputs.append(output_dir / "overlays" / tile.split / f"{tile.name}.png")
        if all(path.exists() for path in outputs) and not overwrite:
            return False
        inputs = _inputs(tile, localiser_dir)
        mask = _masks(inputs, settings).numpy()
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
    checker = TileQuality() if checked else None
    for split, split_tiles in by_split.items():  # merged from the masks on disk
        matrix = ConfusionMatrix(len(classes))
        scored = 0
        for tile in tqdm(split_tiles, desc=f"scoring {split}", unit="tile"):
            path = pseudo_mask_path(output_dir, split, tile.name)
            mask = read_mask_png(path)
            labels = torch.from_numpy(read_cam_labels(tile.cam_path).astype(np.float32))[None]
            quality = None
            if checker is not None:  # measured here, or by another process or an earlier run
                quality, tissue = (measured.get((split, tile.name))
                                   or measure_tile(_inputs(tile, localiser_dir), settings))
                checker.add(split, tile.name, quality, tissue)
            truth = _truth(tile, data, labels, len(classes))
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
            return quality_picture(_inputs(records[split, name], localiser_dir), mask, settings,
                                   len(classes))

        summary["quality"] = checker.write(output_dir, picture)
        print(f"tile quality without masks (eta at the threshold, 0-1; median"
              f" {summary['quality']['median']}): the least clean tiles are in"
              f" {output_dir / QUALITY_FILE} and {output_dir / WORST_PICTURE}", flush=True)
    if metrics:
        write_metrics(output_dir, metrics)
    summary["metrics"] = {split: {p: m[p]["mIoU"] for p in PROTOCOLS} for split, m in metrics.items()}
    write_json(output_dir / DONE_FILE, summary)
    return summary

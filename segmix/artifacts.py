"""What one stage writes and the next reads: folder and file names, and the readers and writers of
every file that passes between stages, side by side.

A pipeline run (``segmix run``) keeps each stage in a subfolder of its output folder
(:class:`RunLayout`); a stage run on its own names its inputs in its config (``classifier``,
``cams_dir``, ``pseudo_masks_dir``, ``segmenter_path``, ``predictions``). Either way the files
inside a stage folder are named here and nowhere else:

* train-cls / train-seg: ``classifier.pt`` / ``segmenter.pt`` (final model, marks the run
  finished; the format is :mod:`segmix.models.factory`'), ``model/`` (the same model as a
  model folder, :mod:`segmix.models.folder`), ``*_best.pt``, ``metrics.csv`` (one row per
  epoch), ``curriculum.csv``, ``checkpoints/last.pt``;
* cams: ``<split>/<tile stem>.npz`` (``cams`` float16 ``[K, h, w]``, raw; ``labels`` multi-hot;
  ``probabilities``) and ``index.csv`` (one row per tile, marks the run finished);
* localise: ``prototypes.pt`` (the fitted, named prototypes with the classes and settings they
  were built for), ``maps/<split>/<tile stem>.png`` (the foreground map, greyscale 0-255),
  ``prototypes.csv``, ``prototypes.png`` and ``summary.json`` (marks it finished);
* pseudo-masks: ``masks/<split>/<tile stem>.png`` (palette PNG in the label space of
  :mod:`segmix.labels`), ``metrics.json`` per split, ``summary.json`` (marks it finished);
* pseudo-masks and predict: ``masks/legend.json`` (each class's index, name and colour);
* predict: ``masks/<image stem>.png``, or for slides ``masks/<slide>.tiff`` (a mask pyramid);
  evaluate: ``metrics.json``;
* predict with ``predict.probabilities``: ``probabilities/<image stem>.npz`` (float16 softmax
  ``[K + 1, H, W]``, background first, and the ``classes``);
* tile: ``labels.csv`` (the tiles and their labels, as the demo's dataset) and ``data.yaml``
  (the ``data`` section that reads them);
* every stage folder: ``config.yaml`` (the resolved config) and, in a pipeline, ``seconds.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .data import DatasetError, Sample, read_mask, unique_names, write_rgb
from .data.palette import IGNORE_COLOR, palette_colors
from .io import atomic_write_npz, atomic_write_text, read_csv_rows, read_json, write_csv, write_json
from .labels import IGNORE_INDEX

__all__ = [
    "CONFIG_FILE", "TIMING_FILE", "SUMMARY_FILE", "CLASSIFIER_FILE", "SEGMENTER_FILE",
    "CAM_INDEX_FILE", "INPUT_FINGERPRINT_FILE", "LOCALISER_FILE", "EVIDENCE_FILE", "AXIS_FILE",
    "METRICS_FILE", "EPOCHS_FILE", "CURRICULUM_FILE", "MASKS_FOLDER", "MODEL_FOLDER",
    "PROBABILITIES_FOLDER",
    "LEGEND_FILE", "SLIDE_MASK_SUFFIXES", "LABELS_CSV", "TILE_DATA_FILE",
    "RunLayout", "CamRecord", "checkpoint_path", "best_model_name", "last_epoch",
    "cam_file_path", "write_cam_file", "read_cam_file", "read_cam_labels", "top_classes",
    "cam_index_row", "write_cam_index", "read_cam_index", "foreground_map_path",
    "write_foreground_map", "read_foreground_map", "localiser_method", "pseudo_mask_path",
    "with_pseudo_masks",
    "prediction_mask_path", "prediction_probabilities_path", "read_prediction_probabilities",
    "write_metrics", "read_metrics", "collect_metrics", "write_legend",
    "read_legend", "legend_folder", "slide_mask_path",
]

CONFIG_FILE = "config.yaml"      # the resolved config, in every stage folder
TIMING_FILE = "seconds.json"     # a stage's wall time over all its invocations (pipeline)
SUMMARY_FILE = "summary.json"    # marks pseudo-masks, predict and a pipeline finished
CLASSIFIER_FILE = "classifier.pt"
SEGMENTER_FILE = "segmenter.pt"
CAM_INDEX_FILE = "index.csv"
INPUT_FINGERPRINT_FILE = "input.json"  # pseudo-masks --from-run: the input CSV's content hash
LOCALISER_FILE = "prototypes.pt"  # localise, method prototypes
EVIDENCE_FILE = "evidence.pt"     # localise, method evidence: the trained mask head
AXIS_FILE = "axis.pt"             # localise, method axis: the fitted feature axis
METRICS_FILE = "metrics.json"    # pseudo-masks (per split) and evaluate
EPOCHS_FILE = "metrics.csv"      # a training stage's per-epoch metrics
CURRICULUM_FILE = "curriculum.csv"
MASKS_FOLDER = "masks"
PROBABILITIES_FOLDER = "probabilities"  # predict: softmax maps (predict.probabilities)
LEGEND_FILE = "legend.json"       # beside a folder of palette PNG masks: index -> name and colour
SLIDE_MASK_SUFFIXES = (".tif", ".tiff")  # predict (slides): a slide's mask pyramid
LABELS_CSV = "labels.csv"        # tile (and the demo's dataset): the tiles CSV `segmix run` reads
TILE_DATA_FILE = "data.yaml"     # tile: the `data` section for `segmix run --config`
MODEL_FOLDER = "model"           # a training stage's final model as a model folder (to hand on)


@dataclass(frozen=True)
class RunLayout:
    """The stage folders of a pipeline run under ``root``."""

    root: Path

    @property
    def classifier_dir(self) -> Path:
        return self.root / "classifier"

    @property
    def classifier(self) -> Path:
        return self.classifier_dir / CLASSIFIER_FILE

    @property
    def cams_dir(self) -> Path:
        return self.root / "cams"

    @property
    def localiser_dir(self) -> Path:
        return self.root / "localiser"

    @property
    def pseudo_masks_dir(self) -> Path:
        return self.root / "pseudo-masks"

    @property
    def segmenter_dir(self) -> Path:
        return self.root / "segmenter"

    @property
    def segmenter(self) -> Path:
        return self.segmenter_dir / SEGMENTER_FILE

    @property
    def self_training_dir(self) -> Path:
        return self.root / "self-training"

    @property
    def final_segmenter(self) -> Path:
        """The segmenter the run hands on: the round self-training kept (the first segmenter
        without rounds)."""
        return self.self_training_dir / SEGMENTER_FILE

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"


# -- training stages -------------------------------------------------------------------------------
def checkpoint_path(stage_dir: Path) -> Path:
    """Where a training stage keeps the checkpoint that ``--resume`` continues from."""
    return Path(stage_dir) / "checkpoints" / "last.pt"


def best_model_name(final_file: str) -> str:
    """``classifier.pt`` -> ``classifier_best.pt``: the best validation epoch's model."""
    stem, _, suffix = final_file.rpartition(".")
    return f"{stem}_best.{suffix}"


def last_epoch(stage_dir: Path) -> Optional[Dict[str, float]]:
    """Loss, speed and validation metrics of a training stage's last epoch (``metrics.csv``)."""
    path = Path(stage_dir) / EPOCHS_FILE
    if not path.is_file():
        return None
    last = read_csv_rows(path)[-1]
    return {k: float(v) for k, v in last.items()
            if v and (k.startswith("val_") or k in ("train_loss", "images_per_s"))}


# -- CAMs ------------------------------------------------------------------------------------------
def cam_file_path(cams_dir: Path, split: str, name: str) -> Path:
    """Where one tile's CAM file lies: ``<cams_dir>/<split>/<tile stem>.npz``."""
    return Path(cams_dir) / split / f"{name}.npz"


def write_cam_file(path: Path, cams: np.ndarray, labels: np.ndarray,
                   probabilities: np.ndarray) -> None:
    """One tile's raw CAMs ``[K, h, w]`` (stored float16), multi-hot label and probabilities."""
    atomic_write_npz(path, cams=cams.astype(np.float16), labels=labels.astype(np.uint8),
                     probabilities=probabilities.astype(np.float32))


def read_cam_file(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of one CAM file: ``cams``, ``labels``, ``probabilities``."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def read_cam_labels(path: Path) -> np.ndarray:
    """The multi-hot label of a CAM file, read without decompressing the CAMs."""
    with np.load(path) as data:
        return data["labels"]


def top_classes(cams_dir: Path, split: str, names: Sequence[str]) -> Dict[str, int]:
    """Each tile's most probable class by the classifier whose CAMs are in ``cams_dir``."""
    paths = {name: cam_file_path(cams_dir, split, name) for name in names}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} tiles of split {split!r} have no CAM file in"
                           f" {Path(cams_dir) / split}, e.g. {missing[:3]}; run `segmix cams` with"
                           f" splits including {split!r}")
    top = {}
    for name, path in paths.items():
        with np.load(path) as data:
            top[name] = int(np.argmax(data["probabilities"]))
    return top


@dataclass(frozen=True)
class CamRecord:
    """One row of a CAM index: the tile, its ground truth (if any) and its CAM file."""

    split: str
    image: Path
    mask: Optional[Path]
    cam_path: Path

    @property
    def name(self) -> str:
        return self.cam_path.stem


def write_cam_index(cams_dir: Path, rows: List[Dict[str, Any]]) -> None:
    """``index.csv``: one row per tile (``split, image, mask, cams, labels``); marks CAMs done."""
    write_csv(Path(cams_dir) / CAM_INDEX_FILE, rows)


def cam_index_row(split: str, sample: Sample, name: str, classes: Sequence[str]) -> Dict[str, Any]:
    """The index row of one tile; its CAM file is named relative to the CAM folder."""
    return {"split": split, "image": str(sample.image), "mask": str(sample.mask or ""),
            "cams": cam_file_path(Path(), split, name).as_posix(),
            "labels": ";".join(classes[k] for k in sample.labels)}


def read_cam_index(cams_dir: Path) -> List[CamRecord]:
    """The tiles a ``segmix cams`` folder holds."""
    index = Path(cams_dir) / CAM_INDEX_FILE
    if not index.is_file():
        raise DatasetError(f"{index} not found: run `segmix cams` first (cams_dir={cams_dir})")
    return [CamRecord(row["split"], Path(row["image"]), Path(row["mask"]) if row.get("mask") else None,
                      Path(cams_dir) / row["cams"]) for row in read_csv_rows(index)]


# -- localiser ------------------------------------------------------------------------------------
def foreground_map_path(localiser_dir: Path, split: str, name: str) -> Path:
    """Where one tile's foreground map lies: ``<localiser_dir>/maps/<split>/<tile stem>.png``."""
    return Path(localiser_dir) / "maps" / split / f"{name}.png"


def write_foreground_map(path: Path, foreground: np.ndarray) -> None:
    """A foreground map in [0, 1] ``[H, W]`` as a greyscale PNG (0-255), atomically."""
    write_rgb(path, np.rint(np.clip(foreground, 0, 1) * 255).astype(np.uint8))


def localiser_method(localiser_dir: Path) -> Optional[str]:
    """The method a finished ``segmix localise`` run in ``localiser_dir`` used (``none``: it made
    no maps), or ``None`` when the folder holds no finished run."""
    summary = Path(localiser_dir) / SUMMARY_FILE
    return read_json(summary).get("method") if summary.is_file() else None


def read_foreground_map(localiser_dir: Path, split: str, name: str) -> np.ndarray:
    """One tile's foreground map, float32 in [0, 1]; a missing file is an error that says which."""
    path = foreground_map_path(localiser_dir, split, name)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `segmix localise` with splits including"
                           f" {split!r} (localiser_dir={localiser_dir})")
    return read_mask(path).astype(np.float32) / 255


# -- pseudo masks and predictions ----------------------------------------------------------------
def pseudo_mask_path(pseudo_masks_dir: Path, split: str, name: str) -> Path:
    return Path(pseudo_masks_dir) / MASKS_FOLDER / split / f"{name}.png"


def with_pseudo_masks(samples: Sequence[Sample], pseudo_masks_dir: Path, split: str) -> List[Sample]:
    """The samples of ``split`` with their pseudo masks as masks; missing ones are an error."""
    names = unique_names(samples)
    paths = [pseudo_mask_path(pseudo_masks_dir, split, name) for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(names)} pseudo masks are missing in"
                           f" {Path(pseudo_masks_dir) / MASKS_FOLDER / split}, e.g. {missing[:3]};"
                           " run `segmix pseudo-masks` on this split first")
    return [Sample(s.image, s.labels, p) for s, p in zip(samples, paths)]


def prediction_mask_path(predictions_dir: Path, name: str) -> Path:
    return Path(predictions_dir) / MASKS_FOLDER / f"{name}.png"


def prediction_probabilities_path(predictions_dir: Path, name: str) -> Path:
    """Where ``segmix predict`` with ``predict.probabilities`` writes one image's softmax."""
    return Path(predictions_dir) / PROBABILITIES_FOLDER / f"{name}.npz"


def read_prediction_probabilities(predictions_dir: Path, name: str) -> np.ndarray:
    """One image's softmax ``[K + 1, H, W]`` (background first) as float32; a missing file is an
    error that names the setting that writes it."""
    path = prediction_probabilities_path(predictions_dir, name)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `segmix predict` with"
                           f" predict.probabilities=true (predictions={predictions_dir})")
    with np.load(path) as arrays:
        return arrays["probabilities"].astype(np.float32)


# -- metrics ---------------------------------------------------------------------------------------
def write_metrics(stage_dir: Path, metrics: Dict[str, Any]) -> None:
    write_json(Path(stage_dir) / METRICS_FILE, metrics)


def read_metrics(stage_dir: Path) -> Optional[Dict[str, Any]]:
    """A stage's ``metrics.json`` (``None`` where it has none)."""
    return read_json(Path(stage_dir) / METRICS_FILE)


def collect_metrics(layout: RunLayout) -> Dict[str, Any]:
    """The headline numbers of every finished stage of a pipeline folder."""
    pseudo = read_metrics(layout.pseudo_masks_dir) or {}
    final = read_metrics(layout.evaluation_dir)
    summary: Dict[str, Any] = {
        "classifier": last_epoch(layout.classifier_dir),
        "segmenter_training": last_epoch(layout.segmenter_dir),
        "self_training": read_metrics(layout.self_training_dir),
        "pseudo_masks": {split: {"mIoU": m["with_background"]["mIoU"],
                                 "mIoU_ignore_background": m["ignore_background"]["mIoU"],
                                 "foreground_iou": m["with_background"]["foreground_iou"]}
                         for split, m in pseudo.items()},
        "segmenter": None,
    }
    if final is not None:
        summary["segmenter"] = {
            "mIoU": final["with_background"]["mIoU"], "FwIoU": final["with_background"]["FwIoU"],
            "mDice": final["with_background"]["mDice"],
            "foreground_iou": final["with_background"]["foreground_iou"],
            "mIoU_ignore_background": final["ignore_background"]["mIoU"],
            "iou": final["with_background"]["iou"]}
        if "classifier_label" in final:
            summary["segmenter"]["mIoU_classifier_label"] = final["classifier_label"]["mIoU"]
    return summary


def write_legend(folder: Path, classes: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """``legend.json`` in a folder of masks (predict, pseudo-masks): index -> name and colour."""
    colors = palette_colors(len(classes))
    names = ["background", *classes]
    legend = {str(i): {"name": name, "color": list(colors[i])} for i, name in enumerate(names)}
    legend[str(IGNORE_INDEX)] = {"name": "ignore", "color": list(IGNORE_COLOR)}
    atomic_write_text(Path(folder) / LEGEND_FILE, json.dumps(legend, indent=2))
    return legend


def read_legend(folder: Path) -> Tuple[List[str], List[List[int]]]:
    """The classes (background excluded) and colours (background first) of a ``legend.json``."""
    path = Path(folder) / LEGEND_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a mask folder written by segmix holds one")
    legend = json.loads(path.read_text())
    indices = sorted(int(k) for k in legend if int(k) != IGNORE_INDEX)
    if indices != list(range(len(indices))):
        raise ValueError(f"{path}: class indices {indices} are not 0..K")
    return ([legend[str(i)]["name"] for i in indices[1:]],
            [list(legend[str(i)]["color"]) for i in indices])


def legend_folder(mask_png: Path) -> Path:
    """The folder whose legend names the classes of a palette PNG mask: predict keeps
    ``legend.json`` beside its masks, pseudo-masks one folder up (masks/<split>/)."""
    return mask_png.parent if (mask_png.parent / LEGEND_FILE).is_file() else mask_png.parent.parent


def slide_mask_path(predictions_dir: Path, name: str) -> Path:
    """Where ``segmix predict`` (slides) writes the mask pyramid of the slide ``name``."""
    return predictions_dir / MASKS_FOLDER / f"{name}.tiff"

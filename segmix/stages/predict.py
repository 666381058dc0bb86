"""``segmix predict``: masks for new images from a trained segmentation model.

Inputs (one of): ``input``, a folder of images or a CSV with an ``image`` column (paths relative to
the CSV; ``input_split`` keeps the rows of one ``split``), or ``split``, a split of the ``data``
section (as ``segmix run`` uses it). Images of any size are predicted with a sliding window
(:mod:`segmix.models.sliding_window`): windows of the training size overlap by
``predict.overlap``; logits are blended, in memory bounded by one band of windows;
``predict.flips`` adds flip TTA. With ``classifier_path`` (a ``segmix train-cls`` classifier of the
same classes, or a segmenter's model folder that carries one, such as a run's
``self-training/model``) each image is also classified whole, resized to the classifier's training
size as the stages read tiles, and the mask fuses both
(:func:`segmix.models.fusion.fuse_tile_class`: the segmenter finds the tissue, the classifier's
probabilities weigh its class by ``predict.classifier_weight``). With ``predict.one_class`` each
image is read as holding one class, as the tiles of a single-label dataset do: all its tissue takes
the class with the largest share of the segmenter's class probability over it (times the
classifier's; :func:`segmix.models.fusion.one_class_mask`).

Outputs: ``masks/<stem>.png`` (palette PNG: 0 background, 1..K classes) with ``masks/legend.json``,
optional ``probabilities/<stem>.npz`` (float16 ``[K+1, H, W]`` softmax) and
``overlays/<stem>.jpg``, ``predictions.csv`` (size and class fractions per image) and
``summary.json`` (marks the run finished). Writes are atomic; a re-run predicts only the images
whose outputs are missing. An unreadable image is an error naming it, or is skipped and counted
with ``predict.on_bad_file: skip``. Settings live in the ``predict`` section.

With ``predict.slides: true`` the inputs are whole-slide images (a slide, a folder or a CSV of
slides; the extra ``wsi``), read at the model's training mpp, tissue blocks only, in memory bounded
by one band (:mod:`segmix.slides.prediction`): ``masks/<slide>.tiff`` (pyramidal, palette),
``overlays/<slide>.png``, ``tissue/<slide>.png``, ``slides/<slide>.json`` and ``predictions.csv``
(class areas in mm^2). See docs/slides.md.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from ..artifacts import (
    MASKS_FOLDER,
    SUMMARY_FILE,
    prediction_mask_path,
    prediction_probabilities_path,
    slide_mask_path,
    write_legend,
)
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    DatasetError,
    ImageReadError,
    overlay,
    read_mask_png,
    read_rgb,
    read_split,
    unique_stems,
    validate_data,
    write_mask_png,
    write_rgb,
)
from ..data.readers import IMAGE_SUFFIXES, image_files
from ..io import atomic_write_npz, read_json, write_csv, write_json
from ..models.pretrained import Classifier, Segmenter
from ..runtime import check_device
from ..sharding import Shard, Skipped, check_shard, current_shard, join, run_share
from ..slides.prediction import predict_slide
from ..slides.slide import SLIDE_SUFFIXES, Slide, SlideError, require_openslide, tissue_picture
from ..shuffle import size_pair
from ..models.sliding_window import BLENDS, FLIPS

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "Predictor", "run", "list_inputs",
           "validate"]

DONE_FILE = SUMMARY_FILE
RESUMABLE_CHANGES = {"predict.batch_size", "predict.device", "predict.max_megapixels",
                     "predict.readers"}

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/predict",
    "segmenter_path": "runs/segmenter/segmenter.pt",
    "classifier_path": None,  # a tile classifier of the same classes: its class weighs the mask's
    "input": None,           # a folder of images or a CSV with an `image` column
    "input_split": None,     # with a CSV input: keep rows whose `split` column has this value
    "split": None,           # instead of input: a split of the `data` section (train, val)
    "data": DATA_DEFAULTS,
    "shard": None,           # i/n or slurm: this process's share of the inputs (docs/slides.md)
    "predict": {
        "window": None,          # null: the model's training size; or an int / [height, width]
        "overlap": 0.25,         # fraction of a window shared with its neighbour
        "blend": "gaussian",     # gaussian | uniform
        "flips": [],             # test-time augmentation: horizontal, vertical
        "scale": 1.0,            # resize factor before prediction (if training tiles were resized)
        "batch_size": 8,
        "device": "auto",
        "probabilities": False,  # also write float16 softmax maps (the segmenter's)
        "classifier_weight": 1.0,  # with classifier_path: 0 the segmenter's class, large the tile's
        "one_class": False,      # each image holds one class (single-label tiles): one per mask
        "overlays": True,
        "on_bad_file": "raise",  # or skip: leave unreadable images out with a warning and a count
        "max_megapixels": 1000,  # larger images are refused by name (about 3 bytes a pixel to hold)
        # whole-slide images (the extra wsi): input is a slide, a folder or a CSV of slides
        "slides": False,
        "slide_mpp": None,       # level-0 microns per pixel of slides whose metadata lacks it
        "model_mpp": None,       # the model's training mpp, if its file does not record it
        "block": 2048,           # columns predicted at once (memory: one band of 512 rows)
        "readers": 2,            # threads reading slide blocks ahead of the model
        "thumbnail_mpp": 16.0,   # resolution of the tissue detection and the overlay picture
    },
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    check_device(config["predict"]["device"], "predict.device")
    check_shard(config["shard"])
    if (config["input"] is None) == (config["split"] is None):
        raise ConfigError("set exactly one of input (a folder of images or a CSV with an `image`"
                          " column) and split (a split of the data section, e.g. val)")
    if config["split"]:  # the data section is read only to list a split's images
        validate_data(config["data"], required=[config["split"]])
    settings = config["predict"]
    overlap = settings["overlap"]
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ConfigError(f"predict.overlap must be in [0, 1), got {overlap!r}")
    unknown = [flip for flip in settings["flips"] if flip not in FLIPS]
    if unknown:
        raise ConfigError(f"predict.flips: unknown {unknown}; valid: {', '.join(FLIPS)}")
    choices = (("blend", BLENDS), ("on_bad_file", ("raise", "skip")))
    for key, valid in choices:
        if settings[key] not in valid:
            raise ConfigError(f"predict.{key} must be one of {', '.join(valid)}, got"
                              f" {settings[key]!r}")
    for key in ("scale", "batch_size", "max_megapixels", "block", "thumbnail_mpp"):
        check_number(f"predict.{key}", settings[key])
    check_number("predict.readers", settings["readers"], integer=True)
    for key in ("slide_mpp", "model_mpp"):
        if settings[key] is not None:
            check_number(f"predict.{key}", settings[key])
    check_number("predict.classifier_weight", settings["classifier_weight"], positive=False)
    if settings["slides"]:
        if config["classifier_path"] or settings["one_class"]:
            raise ConfigError("classifier_path and predict.one_class give each image one class,"
                              " and a whole slide holds many: leave them unset with predict.slides")
        if config["split"]:
            raise ConfigError("predict.slides: give the slides as input (a slide, a folder of"
                              " slides or a CSV with an `image` column), not split")
        require_openslide()
    if settings["window"] is not None:
        try:
            size_pair(settings["window"], "predict.window")
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from error


def _csv_images(path: Path, split: Optional[str]) -> List[Path]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        needed = ["image"] + (["split"] if split is not None else [])
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; columns are {columns}")
        rows = [(line, row) for line, row in enumerate(reader, start=2)
                if split is None or (row.get("split") or "").strip() == split]
    empty = [line for line, row in rows if not (row.get("image") or "").strip()]
    if empty:
        raise DatasetError(f"{path}: empty image path on line(s) {empty[:10]}")
    return [path.parent / row["image"].strip() for _, row in rows]


def list_inputs(config: Dict[str, Any]) -> List[Path]:
    """The image paths a predict config names (``input`` folder or CSV, or a ``data`` split)."""
    source, split = config["input"], config["split"]
    if split is not None:
        return [s.image for s in read_split(config["data"], split)]
    path = Path(source)
    if path.is_dir():
        images = image_files(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        images = _csv_images(path, config["input_split"])
    elif path.exists():
        raise ConfigError(f"input {path} is neither a folder of images nor a .csv file")
    else:
        raise ConfigError(f"input {path} does not exist")
    if not images:
        raise DatasetError(f"input {path} holds no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return images


def window_settings(settings: Dict[str, Any]) -> Dict[str, Any]:
    """The sliding-window arguments of :meth:`Segmenter.predict` a ``predict`` section sets."""
    return {"window": settings["window"], "overlap": float(settings["overlap"]),
            "blend": settings["blend"], "flips": list(settings["flips"]),
            "batch_size": int(settings["batch_size"])}


class Predictor:
    """A loaded segmentation model (and tile classifier, if any) and the ``predict`` settings to
    segment one image with."""

    def __init__(self, segmenter_path: Path, config: Dict[str, Any],
                 classifier_path: Optional[Path] = None) -> None:
        self.segmenter = Segmenter.from_pretrained(Path(segmenter_path), device=config["device"])
        self.classes: List[str] = self.segmenter.classes
        self.settings = {**window_settings(config), "scale": float(config["scale"])}
        if classifier_path is None:
            self.segmenter.classifier = None  # the segmenter alone, even if its folder carries one
        else:
            self.segmenter.classifier = Classifier.from_pretrained(
                Path(classifier_path), classes=self.classes, device=config["device"])
            self.settings["classifier_weight"] = float(config["classifier_weight"])
        self.settings["one_class"] = bool(config["one_class"])

    def __call__(self, image: np.ndarray, probabilities: bool,
                 on_row=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(mask, the segmenter's softmax if probabilities)``; the mask fused with the tile
        classifier's class, if there is one."""
        return self.segmenter.predict(image, probabilities=probabilities, on_row=on_row,
                                      **self.settings)


def _outputs(output_dir: Path, name: str, settings: Dict[str, Any]) -> Dict[str, Path]:
    paths = {"mask": prediction_mask_path(output_dir, name)}
    if settings["probabilities"]:
        paths["probabilities"] = prediction_probabilities_path(output_dir, name)
    if settings["overlays"]:
        paths["overlay"] = output_dir / "overlays" / f"{name}.jpg"
    return paths


def _slide_paths(config: Dict[str, Any]) -> List[Path]:
    source = Path(config["input"])
    if source.is_file() and source.suffix.lower() != ".csv":
        return [source]
    if source.is_dir():
        slides = image_files(source, SLIDE_SUFFIXES)
        if not slides:
            raise DatasetError(f"input {source} holds no slides ({', '.join(SLIDE_SUFFIXES)})")
        return slides
    return list_inputs(config)


def _run_slides(config: Dict[str, Any], output_dir: Path, overwrite: bool,
                shard: Shard) -> Dict[str, Any]:
    """Predict whole slides: ``masks/<slide>.tiff`` (pyramidal), ``overlays/<slide>.png``,
    ``tissue/<slide>.png`` and class areas in mm^2 per slide in ``predictions.csv``."""
    settings = config["predict"]
    slides = _slide_paths(config)
    items = list(zip(slides, unique_stems(slides)))
    segmenter = Segmenter.from_pretrained(Path(config["segmenter_path"]), device=settings["device"])
    mpp = settings["model_mpp"] or segmenter.mpp
    if not mpp:
        raise ConfigError(f"the segmenter {config['segmenter_path']} does not record the mpp it was"
                          " trained at (data.mpp was not set): set predict.model_mpp")
    write_legend(output_dir / MASKS_FOLDER, segmenter.classes)

    def row_file(name: str) -> Path:
        return output_dir / "slides" / f"{name}.json"

    def compute(item: Tuple[Path, str], bar: Any) -> Any:
        path, name = item
        target = slide_mask_path(output_dir, name)
        if target.exists() and row_file(name).exists() and not overwrite:
            return False
        try:
            result = _predict_one_slide(segmenter, path, name, target, float(mpp), settings)
        except SlideError as error:
            if settings["on_bad_file"] == "raise":
                raise SlideError(f"{error}. Fix or remove it, or set predict.on_bad_file=skip"
                                 ) from error
            return Skipped(str(error))
        write_rgb(output_dir / "tissue" / f"{name}.png",
                  tissue_picture(result.thumbnail, result.tissue))
        if settings["overlays"]:
            write_rgb(output_dir / "overlays" / f"{name}.png",
                      overlay(result.thumbnail, result.preview, len(segmenter.classes)))
        write_json(row_file(name), {
            "image": str(path), "mask": str(target.relative_to(output_dir)),
            "width": result.width, "height": result.height, "mpp": result.mpp,
            "blocks_predicted": result.blocks_predicted, "seconds": result.seconds,
            **{f"{k}_mm2": v for k, v in result.areas_mm2.items()}})
        return True

    report = run_share(items, compute, shard, output_dir, desc="slides", unit="slide")
    if report is None:
        return {"shard": shard.name, "merged": False}
    rows = {position: read_json(row_file(name)) for position, (_, name) in enumerate(items)
            if position not in report.skipped}
    now = [rows[position] for position in report.computed]
    seconds = sum(row["seconds"] for row in now)
    skipped = list(report.skipped.values())
    _warn_skipped(skipped, "slide")
    write_csv(output_dir / "predictions.csv", list(rows.values()))
    summary = {"segmenter": str(config["segmenter_path"]), "slides": len(rows),
               "predicted_now": len(now), "skipped": skipped, "mpp": mpp, "seconds": seconds,
               "ranks": report.ranks,
               "megapixels_per_s": (sum(row["width"] * row["height"] for row in now) / 1e6
                                    / seconds if now else None)}
    write_json(output_dir / DONE_FILE, summary)
    print(f"predicted {len(now)} slide(s) ({len(rows) - len(now)} already done,"
          f" {len(skipped)} skipped) into {output_dir / MASKS_FOLDER}", flush=True)
    return summary


def _predict_one_slide(segmenter: Segmenter, path: Path, name: str, target: Path, mpp: float,
                       settings: Dict[str, Any]) -> Any:
    """One slide's mask pyramid at ``target``, with a progress bar over its rows."""
    with Slide(path, settings["slide_mpp"]) as slide:
        bar = tqdm(total=slide.size_at(mpp)[1], desc=f"slide {name}", unit="row")
        try:
            return predict_slide(
                segmenter, slide, target, mpp=mpp, settings=window_settings(settings),
                block=int(settings["block"]), thumbnail_mpp=float(settings["thumbnail_mpp"]),
                readers=int(settings["readers"]),
                on_band=lambda done, total: bar.update(done - bar.n))
        finally:
            bar.close()


def _warn_skipped(skipped: List[str], what: str) -> None:
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable {what}(s):\n  " + "\n  ".join(skipped[:20]),
                      stacklevel=3)


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Predict every input image (or slide) of this process's share (:mod:`segmix.sharding`);
    returns the summary written to ``summary.json`` once every share is done."""
    validate(config)
    shard = current_shard(config["shard"])
    join(shard)  # before any model joins the process group with its own backend
    if config["predict"]["slides"]:
        return _run_slides(config, output_dir, overwrite, shard)
    settings = config["predict"]
    max_pixels = int(settings["max_megapixels"] * 1e6)
    images = list_inputs(config)
    items = list(zip(images, unique_stems(images)))
    predictor = Predictor(config["segmenter_path"], settings, config["classifier_path"])
    num_classes = len(predictor.classes)
    write_legend(output_dir / MASKS_FOLDER, predictor.classes)
    rows: Dict[str, Dict[str, Any]] = {}  # the rows of predictions.csv made here, by name

    def row_of(image_path: Path, name: str, mask: np.ndarray) -> Dict[str, Any]:
        fractions = np.bincount(mask.ravel(), minlength=num_classes + 1) / mask.size
        return {"image": str(image_path),
                "mask": str(prediction_mask_path(output_dir, name).relative_to(output_dir)),
                "height": mask.shape[0], "width": mask.shape[1],
                **{c: fractions[i] for i, c in enumerate(["background", *predictor.classes])}}

    def compute(item: Tuple[Path, str], bar: Any) -> Any:
        image_path, name = item
        paths = _outputs(output_dir, name, settings)
        if not overwrite and all(p.exists() for p in paths.values()):
            return False
        try:
            image = read_rgb(image_path, max_pixels)
        except ImageReadError as error:
            if settings["on_bad_file"] == "raise":
                raise ImageReadError(f"{error}. Fix or remove it, or set"
                                     " predict.on_bad_file=skip") from error
            return Skipped(str(error))
        mask, probs = predictor(image, settings["probabilities"],
                                on_row=lambda done, total: bar.set_postfix(rows=f"{done}/{total}"))
        write_mask_png(paths["mask"], mask, num_classes)
        rows[name] = row_of(image_path, name, mask)
        if probs is not None:
            atomic_write_npz(paths["probabilities"], probabilities=probs,
                             classes=np.array(["background", *predictor.classes]))
        if "overlay" in paths:
            write_rgb(paths["overlay"], overlay(image, mask, num_classes))
        return True

    report = run_share(items, compute, shard, output_dir, desc="predicting", unit="image")
    if report is None:
        return {"shard": shard.name, "merged": False}
    merged = {}  # by position in items: the rows made here, the others from the masks on disk
    for position, (image_path, name) in enumerate(items):
        if position not in report.skipped:
            merged[position] = rows.get(name) or row_of(
                image_path, name, read_mask_png(prediction_mask_path(output_dir, name)))
    pixels = sum(merged[p]["height"] * merged[p]["width"] for p in report.computed)
    skipped = list(report.skipped.values())
    _warn_skipped(skipped, "image")
    write_csv(output_dir / "predictions.csv", list(merged.values()))
    summary = {"segmenter": str(config["segmenter_path"]),
               "classifier": config["classifier_path"] and str(config["classifier_path"]),
               "classifier_weight": settings["classifier_weight"],
               "one_class": settings["one_class"], "images": len(merged),
               "predicted_now": len(report.computed),
               "already_done": len(merged) - len(report.computed), "skipped": skipped,
               "seconds": report.seconds, "ranks": report.ranks,
               "megapixels_per_s": pixels / 1e6 / report.seconds if report.computed else None}
    write_json(output_dir / DONE_FILE, summary)
    print(f"predicted {len(report.computed)} image(s) ({summary['already_done']} already done,"
          f" {len(skipped)} skipped) into {output_dir / MASKS_FOLDER}", flush=True)
    return summary

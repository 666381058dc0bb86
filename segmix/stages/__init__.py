"""The stages: one registry (:data:`STAGES`) that the CLI and ``segmix run`` both read.

Every stage is a module of this package named after its subcommand (``train-cls`` ->
``train_cls.py``) with the same shape:

* ``DEFAULTS``: its config, every key a user may set (sections it shares with other stages,
  such as ``data``, hold the same defaults);
* ``DONE_FILE``: the output whose presence marks a finished run;
* ``RESUMABLE_CHANGES`` (optional): dotted keys that may differ when a run is continued;
* ``validate(config)``: checks every value the stage reads, raising a
  :class:`segmix.config.ConfigError` that names the key, the value and what is allowed; called
  before anything is written, so a bad value fails in the first second;
* ``run(config, output_dir, *, resume=False, overwrite=False)``.

A stage never imports another stage: they meet through the files of :mod:`segmix.artifacts`.
Stage modules are imported only when used, so ``segmix --help`` stays fast.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..config import config_differences, load_config, save_config
from ..errors import SegmixError

__all__ = ["Stage", "STAGES", "OutputDirError", "get_stage", "pipeline_stages",
           "prepare_output_dir", "holding_output_dir"]

# (run layout, splits the pipeline works on) -> the keys `segmix run` sets in a stage's config.
Wiring = Callable[[Any, List[str]], Dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """A subcommand. Pipeline stages (``folder`` set) run in registry order in ``segmix run``."""

    name: str
    help: str
    resumable: bool = False  # has checkpoints that --resume continues
    folder: Optional[Callable[[Any], Path]] = None  # its folder in a run layout (pipeline stages)
    wiring: Optional[Wiring] = None
    needs_val: bool = False  # predicts or scores the validation split
    # Shortcut flags: (flag, the config key it sets, help, value type), e.g.
    # ("--model", "segmenter_path", "a model folder or .pt model file", str).
    flags: Tuple[Tuple[str, str, str, type], ...] = ()
    example: str = "data.image_size=224"  # a --set example for its --help

    @property
    def module_name(self) -> str:
        return f"{__name__}.{self.name.replace('-', '_')}"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module_name)


STAGES: Tuple[Stage, ...] = (
    Stage("train-cls", "stage 1: train a classifier on image-level labels with shuffle feedback"
          " augmentation", resumable=True, folder=lambda layout: layout.classifier_dir,
          wiring=lambda layout, splits: {}, example="train.epochs=20"),
    Stage("cams", "stage 2: class activation maps of a trained classifier (CAM, Grad-CAM,"
          " Grad-CAM++, LayerCAM; flip, scale and shuffle TTA)",
          folder=lambda layout: layout.cams_dir,
          wiring=lambda layout, splits: {"classifier": str(layout.classifier), "splits": splits},
          example="cam.method=layercam"),
    Stage("localise", "stage 3: foreground maps from class-agnostic prototypes (superpixel stain"
          " and texture clusters) named from the image-level labels (label statistics or the"
          " classifier's class evidence)",
          folder=lambda layout: layout.localiser_dir,
          wiring=lambda layout, splits: {"classifier": str(layout.classifier), "splits": splits},
          example="localiser.method=prototypes"),
    Stage("pseudo-masks", "stage 4: CAMs (and foreground maps) -> palette PNG pseudo masks"
          " (background model, ignore band, clean-up, threshold sweep)",
          folder=lambda layout: layout.pseudo_masks_dir,
          wiring=lambda layout, splits: {"cams_dir": str(layout.cams_dir),
                                         "localiser_dir": str(layout.localiser_dir),
                                         "splits": splits, "from_run": None, "input": None},
          example="masks.threshold=0.2",
          flags=(("--from-run", "from_run", "a finished `segmix run` folder: make masks for new"
                  " tiles with its models and chosen settings", str),
                 ("--input", "input", "with --from-run: a labelled CSV (image,label[,mask])",
                  str))),
    Stage("train-seg", "stage 5: train a segmentation model on the pseudo masks, image and mask"
          " shuffled together", resumable=True, folder=lambda layout: layout.segmenter_dir,
          wiring=lambda layout, splits: {"pseudo_masks_dir": str(layout.pseudo_masks_dir)},
          example="seg_train.epochs=20"),
    Stage("self-train", "rounds of self-training: the segmenter's foreground fused with the"
          " localiser's maps -> new pseudo masks -> a new segmenter; hands on the best round's"
          " segmenter (the first without rounds)", folder=lambda layout: layout.self_training_dir,
          wiring=lambda layout, splits: {"segmenter_path": str(layout.segmenter),
                                         "pseudo_masks_dir": str(layout.pseudo_masks_dir),
                                         "classifier_path": str(layout.classifier)},
          example="self_training.rounds=1"),
    Stage("predict", "masks for new images of any size with a trained segmentation model"
          " (sliding window, blended logits, flip TTA); whole slides with predict.slides=true"
          " (pyramidal TIFF masks, class areas)",
          folder=lambda layout: layout.predictions_dir,
          wiring=lambda layout, splits: {"segmenter_path": str(layout.final_segmenter),
                                         "split": "val",
                                         "input": None, "input_split": None,
                                         "classifier_path": None},
          needs_val=True, example="predict.overlap=0.5",
          flags=(("--model", "segmenter_path", "a model folder or .pt model file", str),
                 ("--mpp", "predict.slide_mpp", "microns per pixel of slides whose metadata"
                  " lacks it (with predict.slides)", float))),
    Stage("evaluate", "score predicted masks against the ground truth of any labelled split"
          " (mIoU, FwIoU, Dice; with and without background)",
          folder=lambda layout: layout.evaluation_dir,
          wiring=lambda layout, splits: {
              "predictions": str(layout.predictions_dir / "masks"), "split": "val",
              "tile_classes_from": str(layout.cams_dir)},
          needs_val=True, example="split=val"),
    Stage("run", "the whole pipeline in one folder: train-cls -> cams -> localise -> pseudo-masks ->"
          " train-seg -> self-train -> predict -> evaluate; re-run to continue after an interruption",
          example="train.epochs=20"),
    Stage("demo", "the whole pipeline on a synthetic tissue dataset it writes itself (no data, no"
          " internet; a few minutes on a CPU)", example="synthetic.train_tiles=480"),
    Stage("shuffle-demo", "shuffle tiles of a real IHC image with every mode and draw the result"
          " (no data needed)", example="shuffle.patch_size=16"),
    Stage("tile", "whole-slide images (OpenSlide: SVS, NDPI, MRXS, pyramidal TIFF) -> tissue tiles"
          " at a chosen mpp and the CSV `segmix run` trains on, split by slide",
          example="tile.mpp=0.5", flags=(("--mpp", "slide_mpp", "microns per pixel of slides"
                                          " whose metadata lacks it", float),)),
    Stage("export-geojson", "class masks (slide masks or PNG mask folders) as QuPath GeoJSON"
          " annotations: polygons with holes per class, in level-0 slide coordinates",
          example="masks=runs/slides/masks"),
    Stage("export", "a trained classifier or segmenter (model folder or .pt) as TorchScript or"
          " ONNX, checked against the eager model on real tiles", example="export.tolerance=1e-3",
          flags=(("--model", "model", "a model folder or .pt model file", str),
                 ("--format", "export.format", "onnx or torchscript", str))),
)


def get_stage(name: str) -> Stage:
    """The registered stage called ``name``."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; valid: {[s.name for s in STAGES]}")


def pipeline_stages() -> List[Stage]:
    """The stages of ``segmix run``, in order."""
    return [stage for stage in STAGES if stage.folder is not None]


class OutputDirError(SegmixError, ValueError):
    """An output folder that holds a finished run, or a run with other settings."""


def _holds_work(folder: Path) -> bool:
    """Whether ``folder`` holds anything an earlier run computed (more than its config, clock,
    lock and temporaries)."""
    from ..artifacts import CONFIG_FILE, TIMING_FILE

    bookkeeping = {CONFIG_FILE, TIMING_FILE}
    return any(path.is_file() and path.name not in bookkeeping and not path.name.startswith(".")
               for path in folder.rglob("*"))


@contextmanager
def holding_output_dir(folder: Path, config: Optional[Dict[str, Any]] = None) -> Iterator[None]:
    """Hold ``folder`` for this run (:func:`segmix.io.folder_lock`: a second run into it is
    refused, a killed run's temporaries are removed). A training stage under ``torchrun``: rank 0
    holds it for all. A stage whose processes share the items (``config`` has a ``shard`` key,
    :mod:`segmix.sharding`): each process holds its own share."""
    from ..io import folder_lock
    from ..runtime import is_main_process
    from ..sharding import current_shard

    shard = current_shard(config["shard"]) if config and "shard" in config else None
    if shard is not None and shard.count > 1:
        with folder_lock(folder, share=shard.name):
            yield
        return
    with folder_lock(folder) if is_main_process() else nullcontext():
        yield


def prepare_output_dir(module: ModuleType, config: Dict[str, Any], output_dir: Path, *,
                       overwrite: bool) -> None:
    """Refuse a folder whose run is finished (with the module's ``finished_hint``, if any), or
    that holds work made with other settings (unless ``overwrite``); then save ``config`` as its
    ``config.yaml`` (on the main process). A folder that holds only the config of a run that
    stopped before computing anything (bad input, say) takes the new config."""
    from ..artifacts import CONFIG_FILE
    from ..runtime import is_main_process

    done = output_dir / module.DONE_FILE
    shared = "shard" in config  # every share of a run saves the same config, without its share
    if shared:
        config = {**config, "shard": None}
    if done.exists() and not overwrite:
        finished_hint = getattr(module, "finished_hint", None)
        hint = finished_hint(output_dir) if finished_hint else ""
        raise OutputDirError(f"{done} exists: this run is finished. Use --overwrite to replace it"
                             f" or --output-dir for a new folder.{hint}")
    saved = output_dir / CONFIG_FILE
    if saved.exists() and not overwrite and _holds_work(output_dir):
        allowed = {"output_dir", *getattr(module, "RESUMABLE_CHANGES", ())}
        differences = config_differences(load_config(saved, module.DEFAULTS), config, allowed)
        if differences:
            raise OutputDirError(f"{saved} holds a run with other settings ({differences}). Use"
                                 " --overwrite to start again or --output-dir for a new folder.")
    if is_main_process() or shared:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved)

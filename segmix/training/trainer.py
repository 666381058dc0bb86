"""The training loop every training stage shares: the epoch loop with the batch mixer and its
curriculum feedback, deterministic per-epoch seeding, AMP, DDP, per-epoch CSVs, atomic checkpoints
and an exact ``--resume`` (the config sections it reads: :mod:`.settings`).

A stage subclasses :class:`EpochTrainer`, builds its model and datasets, calls :meth:`setup`, and
implements :meth:`mix`, :meth:`loss`, :meth:`evaluate` and :meth:`save_model`.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from ..artifacts import (
    CURRICULUM_FILE,
    EPOCHS_FILE,
    MODEL_FOLDER,
    best_model_name,
    checkpoint_path,
)
from ..config import config_differences, merge
from ..errors import SegmixError
from ..io import write_csv
from ..models.factory import save_model_folder
from ..models.precision import autocast_dtype, depthwise_convs_in_float32
from .log import EpochLog
from .mixers import BatchMixer
from .sampling import ClassBalancedSampler, class_balance_weights
from ..runtime import (
    Runtime,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
    setup_runtime,
)
from .settings import resumable_changes

__all__ = ["EpochTrainer", "StageError", "run_training"]

class StageError(SegmixError, ValueError):
    """A run that cannot start as asked (e.g. an earlier run's checkpoint is in the way)."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def _seed_worker(_: int) -> None:
    """Seed the albumentations pipeline of a DataLoader worker from its torch seed."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class EpochTrainer:
    """The loop of a training stage. Subclasses set ``final_file`` (marks the run finished),
    ``best_metric`` (a validation column to maximise: its best epoch's model is kept too) and
    ``defaults`` (the stage's config defaults)."""

    final_file: str
    best_metric: str  # maximised
    defaults: Mapping[str, Any]  # fills the keys a checkpoint of an older version lacks
    train_section = "train"  # the config section with epochs, batch_size, lr, ...

    def __init__(self, config: Dict[str, Any], output_dir: Path, runtime: Runtime) -> None:
        self.config, self.output_dir, self.runtime = config, output_dir, runtime
        self.train_cfg = config[self.train_section]
        self.epochs = int(self.train_cfg["epochs"])
        self.seed = int(config["seed"])
        self.rows: List[Dict[str, Any]] = []
        self.best = -math.inf
        self.start_epoch = 0

    # -- what a stage provides -----------------------------------------------------------------
    def mix(self, batch: Mapping[str, Any],
            generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """One training batch on the device, through the batch mixer: ``(images, targets)``, the
        targets being what :meth:`loss` compares the model's output with."""
        raise NotImplementedError

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a mixed batch (runs the model; called under autocast)."""
        raise NotImplementedError

    def evaluate(self) -> Dict[str, float]:
        """Validation metrics (keys start with ``val_``), on rank 0."""
        raise NotImplementedError

    def save_model(self, path: Path, extra: Dict[str, Any]) -> Dict[str, Any]:
        """Write the model file (with ``extra`` in it); return what was written."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"training for {self.epochs} epochs"

    @property
    def weighted_sampling(self) -> bool:
        """Whether the stage reweighs tiles during training (a :class:`ClassBalancedSampler` even
        without ``class_balance``; its ``weights`` are the stage's to change between epochs)."""
        return False

    def after_epoch(self, epoch: int) -> Dict[str, Any]:
        """Rank 0, after an epoch's validation (model in eval mode, no gradients): the stage's own
        per-epoch work; returns extra columns for the epoch's row."""
        return {}

    def stage_state(self) -> Dict[str, Any]:
        """What the stage keeps in the checkpoint beside the loop's state."""
        return {}

    def load_stage_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`stage_state` from a checkpoint (``{}`` from one written without it)."""

    @property
    def model_extra(self) -> Dict[str, Any]:
        """What every saved model records beside its weights: the tiles' resolution."""
        return {"mpp": self.config["data"]["mpp"]}

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, model: nn.Module, mixer: BatchMixer, train_set: Dataset,
              val_set: Optional[Dataset]) -> None:
        """Move the model (in the configured memory layout and precision), compile it and wrap it for
        DDP if asked, build loaders, optimiser, schedule and AMP scaler."""
        train_cfg, runtime = self.train_cfg, self.runtime
        self.channels_last = bool(train_cfg["channels_last"])
        self.amp_dtype = autocast_dtype(runtime.device, bool(train_cfg["amp"]))
        model = model.to(runtime.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.amp_dtype == torch.bfloat16:
            depthwise_convs_in_float32(model)
        self.model, self.mixer, self.train_set = model, mixer, train_set
        self.train_model: nn.Module = torch.compile(model) if train_cfg["compile"] else model
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)
        workers, batch_size = int(train_cfg["num_workers"]), int(train_cfg["batch_size"])
        pin = runtime.device.type == "cuda"
        self.loader_generator = torch.Generator()
        self.sampler = self._sampler(train_set)
        self.train_loader = DataLoader(
            train_set, batch_size=batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=workers, drop_last=len(train_set) > batch_size,
            generator=self.loader_generator, worker_init_fn=_seed_worker if workers else None,
            pin_memory=pin,
        )
        self.val_loader = None if val_set is None else self.eval_loader(val_set)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(train_cfg["lr"]),
                                           weight_decay=float(train_cfg["weight_decay"]))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=max(self.epochs, 1))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def eval_loader(self, dataset: Dataset,
                    generator: Optional[torch.Generator] = None) -> DataLoader:
        """``dataset`` in order, in evaluation batches. Each pass over it draws its seed from
        ``generator``, or from the global random numbers (which the checkpoint keeps) without."""
        return DataLoader(dataset, batch_size=int(self.train_cfg["eval_batch_size"]), shuffle=False,
                          num_workers=int(self.train_cfg["num_workers"]),
                          pin_memory=self.runtime.device.type == "cuda", generator=generator)

    def _sampler(self, train_set: Dataset) -> Optional[Sampler]:
        """``train.class_balance`` > 0 or a stage that reweighs tiles (:attr:`weighted_sampling`):
        tiles drawn with replacement by class frequency; else a plain shuffle (DDP: each rank its
        share)."""
        power, runtime = float(self.train_cfg["class_balance"]), self.runtime
        if power > 0 or self.weighted_sampling:
            weights = class_balance_weights([s.labels for s in train_set.samples],
                                            train_set.num_classes, power)
            return ClassBalancedSampler(weights, self.seed, runtime.rank, runtime.world_size)
        return (DistributedSampler(train_set, shuffle=True, seed=self.seed)
                if runtime.distributed else None)

    def autocast(self) -> torch.autocast:
        """The mixed-precision context of this run's forward passes (a no-op in float32)."""
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def input_layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the model's memory layout."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @property
    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.output_dir)

    def _save(self, epoch: int) -> None:
        atomic_torch_save(self.checkpoint_path, {
            "epoch": epoch, "config": self.config, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "mixer": self.mixer.state_dict(),
            "rows": self.rows, "best": self.best, "rng": rng_state(), "stage": self.stage_state(),
        })

    def resume(self) -> None:
        """Load ``checkpoints/last.pt`` and continue after its epoch."""
        state = load_checkpoint(self.checkpoint_path)
        allowed = resumable_changes(self.train_section)
        # a key added since the checkpoint was written counts as its default, as for config.yaml
        saved = merge(self.defaults, state["config"])
        differences = config_differences(saved, self.config, allowed)
        if differences:
            raise StageError(f"cannot resume: the config differs from the checkpoint's"
                             f" ({differences}). Only {', '.join(sorted(allowed))} may"
                             f" change; for more epochs start a new run from {self.final_file}.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.mixer.load_state_dict(state["mixer"])
        self.rows, self.best = list(state["rows"]), state["best"]
        self.load_stage_state(state.get("stage", {}))
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        if self.runtime.is_main:
            print(f"resuming after epoch {state['epoch']} from {self.checkpoint_path}", flush=True)

    # -- loop -----------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Tuple[float, int, float]:
        seed = epoch_seed(self.seed, epoch)
        self.loader_generator.manual_seed(seed)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.train_loader.num_workers == 0:
            self.train_set.transform.set_random_seed(seed % 2**32)
        shuffle_generator = torch.Generator().manual_seed(seed + 1)
        self.train_model.train()
        total, count = 0.0, 0
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                   disable=not self.runtime.is_main, leave=False)
        for batch in bar:
            loss, size = self.train_step(batch, shuffle_generator)
            total += loss * size
            count += size
            bar.set_postfix(loss=f"{total / count:.4f}")
        seconds = time.perf_counter() - start
        return self.runtime.mean(total / max(count, 1), count), count * self.runtime.world_size, seconds

    def train_step(self, batch: Mapping[str, Any], generator: torch.Generator,
                   lap: Callable[[str], None] = lambda phase: None) -> Tuple[float, int]:
        """One optimisation step on ``batch``: mix, forward and loss, backward, optimiser step;
        returns the loss and the batch size. ``lap(phase)`` is called as each phase ends (a
        profiler's hook; see benchmarks/train_speed.py)."""
        images, targets = self.mix(batch, generator)
        images = self.input_layout(images)
        lap("mixer")
        with self.autocast():
            loss = self.loss(images, targets)
        lap("forward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        lap("backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value = float(loss.detach())
        lap("optimizer")
        return value, images.shape[0]

    def fit(self) -> List[Dict[str, Any]]:
        main = self.runtime.is_main
        if main:
            layout = ", channels-last" if self.channels_last else ""
            compiled = ", compiled" if self.train_cfg["compile"] else ""
            print(f"{self.describe()} on {self.runtime.device} ({self.precision}{layout}{compiled});"
                  f" augment: {self.mixer.name}", flush=True)
        self.log = EpochLog(self.output_dir, self.train_cfg["logger"], self.describe(),
                            self.start_epoch) if main else None
        try:
            self._epochs(main)
        finally:
            if self.log is not None:
                self.log.close()
        if main:
            final = self.output_dir / self.final_file
            saved = self.save_model(final, {"epochs": self.epochs, **self.model_extra})
            save_model_folder(self.output_dir / MODEL_FOLDER, saved, saved["state_dict"])
            print(f"wrote {final} and the model folder {self.output_dir / MODEL_FOLDER}", flush=True)
        return self.rows

    def _epochs(self, main: bool) -> None:
        for epoch in range(self.start_epoch, self.epochs):
            settings = self.mixer.start_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            loss, images, seconds = self._train_epoch(epoch)
            self.mixer.end_epoch(epoch, loss)
            self.scheduler.step()
            row: Dict[str, Any] = {"epoch": epoch, "train_loss": loss, "lr": lr,
                                   "images_per_s": images / seconds, "train_seconds": seconds,
                                   **settings}
            if main:
                self.model.eval()
                with torch.no_grad():
                    if self.val_loader is not None:
                        row.update(self.evaluate())
                    row.update(self.after_epoch(epoch))
            self.rows.append(row)
            if main:
                self._write_epoch(epoch, row)
            self.runtime.barrier()

    def _write_epoch(self, epoch: int, row: Dict[str, Any]) -> None:
        write_csv(self.output_dir / EPOCHS_FILE, self.rows)
        self.log.log(self.rows)
        if self.mixer.history:
            write_csv(self.output_dir / CURRICULUM_FILE, self.mixer.history)
        score = row.get(self.best_metric)
        if score is not None and score > self.best:
            self.best = score
            self.save_model(self.output_dir / best_model_name(self.final_file),
                            {"epoch": epoch, self.best_metric: score, **self.model_extra})
        self._save(epoch)
        summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in row.items() if k != "epoch")
        print(f"epoch {epoch + 1}/{self.epochs}: {summary}", flush=True)


def run_training(trainer_class, config: Dict[str, Any], output_dir: Path, *, resume: bool,
                 overwrite: bool) -> List[Dict[str, Any]]:
    """Set up the device (and DDP), build ``trainer_class`` and train, resuming or refusing to
    clobber an earlier checkpoint; returns the per-epoch metric rows."""
    config = copy.deepcopy(config)
    runtime = setup_runtime(config[trainer_class.train_section]["device"])
    try:
        trainer = trainer_class(config, output_dir, runtime)
        if resume:
            trainer.resume()
        elif trainer.checkpoint_path.exists() and not overwrite:
            raise StageError(f"{trainer.checkpoint_path} exists from an earlier run: use --resume"
                             " to continue it or --overwrite to start again")
        return trainer.fit()
    finally:
        runtime.close()

"""What a training stage shows of its epochs besides ``metrics.csv``: ``metrics.png`` (the training
curves, redrawn after every epoch) and, with ``logger: tensorboard``, TensorBoard event files.

TensorBoard is the optional extra ``tensorboard`` (``pip install "segmix-wsss[tensorboard]"``);
asking for it without the package is a config error that says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import ConfigError
from ..io import atomic_path

__all__ = ["LOGGERS", "CURVES_FILE", "check_logger", "write_training_curves", "EpochLog"]

LOGGERS = ("none", "tensorboard")
CURVES_FILE = "metrics.png"
TENSORBOARD_FOLDER = "tensorboard"
# Columns of metrics.csv that are not curves worth drawing (bookkeeping, speeds, schedules).
_NOT_CURVES = {"epoch", "lr", "images_per_s", "train_seconds"}


def check_logger(key: str, name: str) -> None:
    """Refuse an unknown logger, and ``tensorboard`` when its package is not installed."""
    if name not in LOGGERS:
        raise ConfigError(f"{key} must be one of {', '.join(LOGGERS)}, got {name!r}")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
        except ImportError as error:
            raise ConfigError(f"{key}: tensorboard is not installed; install the extra with"
                              ' pip install "segmix-wsss[tensorboard]" (or set it to none)') from error


def _numeric(rows: Sequence[Mapping[str, Any]], column: str) -> List[Optional[float]]:
    values = []
    for row in rows:
        value = row.get(column)
        values.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                      else None)
    return values


def write_training_curves(path: Path, rows: Sequence[Mapping[str, Any]], title: str) -> None:
    """Draw the losses (left) and the validation scores (right) of ``rows`` (``metrics.csv``'s
    rows) against the epoch, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) + 1 for row in rows]
    columns = [c for c in dict.fromkeys(k for row in rows for k in row)
               if c not in _NOT_CURVES and not c.startswith("shuffle_")
               and any(v is not None for v in _numeric(rows, c))]
    losses = [c for c in columns if c.endswith("loss")]
    scores = [c for c in columns if c.startswith("val_") and c not in losses]
    figure = Figure(figsize=(10, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for axis, group, label in zip(figure.subplots(1, 2), (losses, scores), ("loss", "score")):
        for column in group:
            points = [(e, v) for e, v in zip(epochs, _numeric(rows, column)) if v is not None]
            axis.plot(*zip(*points), marker="o", markersize=3, label=column)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if group:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


class EpochLog:
    """Where a training stage reports each epoch's row beyond its CSV: ``metrics.png`` and, with
    the ``tensorboard`` logger, ``tensorboard/`` event files (continued on ``--resume``)."""

    def __init__(self, output_dir: Path, logger: str, title: str, start_epoch: int = 0) -> None:
        self.output_dir, self.title = Path(output_dir), title
        self.writer = None
        if logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / TENSORBOARD_FOLDER),
                                        purge_step=start_epoch)

    def log(self, rows: Sequence[Dict[str, Any]]) -> None:
        """Report the newest of ``rows`` (all epochs so far)."""
        write_training_curves(self.output_dir / CURVES_FILE, rows, self.title)
        if self.writer is not None:
            row = rows[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, global_step=int(row["epoch"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

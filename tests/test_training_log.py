"""Training curves (metrics.png) and the optional TensorBoard logger."""

import sys

import numpy as np
import pytest
from PIL import Image

from segmix import api
from segmix.config import ConfigError
from segmix.training.log import write_training_curves

from synthetic import write_csv_dataset


def test_curves_draw_losses_and_validation_scores(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "lr": 0.001, "images_per_s": 50.0,
             "shuffle_patch_size": 16, "val_loss": 1.2 / (e + 1), "val_accuracy": 0.3 + 0.1 * e,
             "val_macro_f1": "" if e == 0 else 0.2 * e} for e in range(4)]
    write_training_curves(tmp_path / "metrics.png", rows, "a title")
    picture = np.asarray(Image.open(tmp_path / "metrics.png").convert("RGB")).astype(int)
    assert picture.shape == (380, 1000, 3)
    # matplotlib's first two colours (blue, orange) draw a curve in each panel
    blue = (np.abs(picture - [31, 119, 180]).sum(axis=2) < 40)
    orange = (np.abs(picture - [255, 127, 14]).sum(axis=2) < 40)
    for colour in (blue, orange):
        assert colour[:, :500].sum() > 100 and colour[:, 500:].sum() > 100
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.png"]  # written atomically


def test_tensorboard_logger_writes_every_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_path = write_csv_dataset(tmp_path / "tiles", per_class=4, size=32)
    api.train_cls({"data": {"classes": ["A", "B", "C"], "image_size": 32,
                            "train": {"path": str(csv_path)}, "val": {"path": str(csv_path)}},
                   "model": {"name": "test_efficientnet", "weights": None},
                   "augment": {"name": "none"}},
                  output_dir=tmp_path / "run",
                  train={"epochs": 2, "batch_size": 4, "num_workers": 0, "logger": "tensorboard"})
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_accuracy", "val_loss"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("train_loss")] == [0, 1]
    assert (tmp_path / "run" / "metrics.png").is_file()


def test_tensorboard_without_its_package_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r'train.logger: tensorboard is not installed; install the'
                                          r' extra with pip install "segmix-wsss\[tensorboard\]"'):
        api.resolve_config("train-cls", {"data": {"classes": ["A"], "train": {"path": "x.csv"}}},
                           train={"logger": "tensorboard"})
    with pytest.raises(ConfigError, match="train.logger must be one of none, tensorboard"):
        api.resolve_config("train-cls", {"data": {"classes": ["A"], "train": {"path": "x.csv"}}},
                           train={"logger": "wandb"})

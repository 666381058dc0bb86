"""Stage 1 end to end on tiny synthetic data: outputs, exact resume, refusals, baselines, DDP."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from segmix.cli import main
from segmix.models.factory import load_classifier

from interrupt import run_killed_after_first_epoch
from synthetic import read_rows, train_cls_args, write_csv_dataset

TIMING = {"images_per_s", "train_seconds"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("tiles"), per_class=8, size=32)


def args_for(csv_path, out, *extra):
    return train_cls_args(csv_path, out, "train.epochs=2", "train.batch_size=4",
                          "augment.curriculum.patch_sizes=[16, 8]",
                          "augment.curriculum.warmup_epochs=0", *extra)


def test_two_epochs_write_every_output(dataset, tmp_path):
    out = tmp_path / "run"
    assert main(args_for(dataset, out)) == 0
    rows = read_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for column in ("train_loss", "val_accuracy", "val_macro_f1", "val_mAP", "val_loss",
                   "shuffle_patch_size", "shuffle_fix_ratio", "images_per_s"):
        assert rows[0][column] != ""
    assert len(read_rows(out / "curriculum.csv")) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert {"model", "optimizer", "scheduler", "scaler", "mixer", "rng"} <= set(checkpoint)
    model, info = load_classifier(out / "classifier.pt")
    assert info["classes"] == ["A", "B", "C"] and info["loss"] == "bce"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert (out / "classifier_best.pt").exists()
    assert main(args_for(dataset, out)) == 1  # finished: refuses to overwrite


def test_resume_after_interruption_continues_exactly(dataset, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert main(args_for(dataset, straight, "train.num_workers=1")) == 0

    interrupted = tmp_path / "interrupted"
    run_killed_after_first_epoch(
        monkeypatch, lambda: main(args_for(dataset, interrupted, "train.num_workers=1")))
    assert not (interrupted / "classifier.pt").exists()

    assert main(args_for(dataset, interrupted, "train.num_workers=1")) == 1  # needs --resume
    assert main(args_for(dataset, interrupted, "train.num_workers=1") + ["--resume"]) == 0

    a, b = read_rows(straight / "metrics.csv"), read_rows(interrupted / "metrics.csv")
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in a] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in b]
    assert read_rows(straight / "curriculum.csv") == read_rows(interrupted / "curriculum.csv")
    final_a = torch.load(straight / "classifier.pt", weights_only=True)["state_dict"]
    final_b = torch.load(interrupted / "classifier.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_with_another_config_is_refused(dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run_killed_after_first_epoch(monkeypatch, lambda: main(args_for(dataset, out)))
    assert main(args_for(dataset, out, "train.lr=0.01") + ["--resume"]) == 1
    assert "holds a run with other settings (train.lr: 0.001 -> 0.01)" in capsys.readouterr().err
    assert main(args_for(dataset, out, "train.num_workers=1") + ["--resume"]) == 0  # allowed change


def test_a_checkpoint_from_before_a_key_was_added_resumes(dataset, tmp_path, monkeypatch, capsys):
    """A run interrupted by an older segmix, whose config lacks a key added since (with the
    default that keeps the old behaviour), continues; the same key set otherwise is refused."""
    out = tmp_path / "run"
    run_killed_after_first_epoch(monkeypatch, lambda: main(args_for(dataset, out)))
    checkpoint_file = out / "checkpoints" / "last.pt"
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    del checkpoint["config"]["train"]["class_balance"]
    torch.save(checkpoint, checkpoint_file)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["train"]["class_balance"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))

    assert main(args_for(dataset, out, "train.class_balance=1.0") + ["--resume"]) == 1
    assert "train.class_balance: 0.0 -> 1.0" in capsys.readouterr().err
    assert main(args_for(dataset, out) + ["--resume"]) == 0
    assert [r["epoch"] for r in read_rows(out / "metrics.csv")] == ["0", "1"]


@pytest.mark.parametrize("augment", ["none", "cutmix", "mixup"])
def test_baseline_augments_train(dataset, tmp_path, augment):
    out = tmp_path / augment
    assert main(args_for(dataset, out, f"augment.name={augment}", "train.epochs=1",
                         "train.loss=ce")) == 0
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 1 and "shuffle_level" not in rows[0]
    assert not (out / "curriculum.csv").exists()


def test_bad_dataset_fails_with_a_clear_message(dataset, tmp_path, capsys):
    assert main(args_for(dataset, tmp_path / "run", "data.classes=[A, B]")) == 1
    assert "unknown class name(s) ['C']" in capsys.readouterr().err


def test_ddp_on_cpu_with_two_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "-m", "segmix.cli"] + args_for(dataset, out, "train.device=cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(out / "metrics.csv")
    assert len(rows) == 2 and (out / "classifier.pt").exists()
    assert "val_macro_f1" in rows[0] and len(read_rows(out / "curriculum.csv")) == 2

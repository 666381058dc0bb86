"""Simulate a training run killed right after its first epoch's checkpoint."""

from segmix.training.trainer import EpochTrainer


def run_killed_after_first_epoch(monkeypatch, command):
    """Call ``command()`` (a ``segmix`` CLI call) with every trainer raising ``KeyboardInterrupt``
    once the first epoch's metrics and checkpoint are written: the CLI ends with exit status 130
    (Ctrl-C); the patch is undone afterwards."""
    write_epoch = EpochTrainer._write_epoch

    def crash(self, epoch, row):
        write_epoch(self, epoch, row)
        raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(EpochTrainer, "_write_epoch", crash)
    try:
        assert command() == 130
    finally:
        monkeypatch.setattr(EpochTrainer, "_write_epoch", write_epoch)

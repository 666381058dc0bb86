"""Simulate a training run killed right after its first epoch's checkpoint."""

from segmix.training.trainer import EpochTrainer


def run_killed_after_first_epoch(monkeypatch, command, epochs=1):
    """Call ``command()`` (a ``segmix`` CLI call) with every trainer raising ``KeyboardInterrupt``
    once the metrics and checkpoint of its first ``epochs`` epochs are written: the CLI ends with
    exit status 130 (Ctrl-C); the patch is undone afterwards."""
    write_epoch = EpochTrainer._write_epoch

    def crash(self, epoch, row):
        write_epoch(self, epoch, row)
        if epoch + 1 == epochs:
            raise KeyboardInterrupt(f"killed after epoch {epochs}")

    monkeypatch.setattr(EpochTrainer, "_write_epoch", crash)
    try:
        assert command() == 130
    finally:
        monkeypatch.setattr(EpochTrainer, "_write_epoch", write_epoch)

"""The difficulty memory (DASC): grades from remembered label evidence, the train-cls outputs, a
planted wrong label found, and an exact resume of the memory."""

import pytest
import torch

from segmix.cli import main
from segmix.training.difficulty import (DifficultyMemory, DifficultySettings, grade_weights,
                                        label_evidence)
from segmix.training.sampling import ClassBalancedSampler

from interrupt import run_killed_after_first_epoch
from synthetic import difficulty_args as args_for, read_rows


def test_label_evidence_takes_the_least_probable_label_and_the_top_class():
    probabilities = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.7, 0.6], [0.1, 0.3, 0.6]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    evidence = label_evidence(probabilities, targets)
    assert torch.allclose(evidence["probability"], torch.tensor([0.9, 0.6, 0.1]))
    assert evidence["top"].tolist() == [0, 1, 2]
    assert evidence["correct"].tolist() == [True, True, False]
    assert torch.allclose(evidence["loss"], -torch.log(torch.tensor([0.9, 0.6, 0.1])))


def _evidence(probability, correct):
    probability = torch.tensor(probability)
    return {"probability": probability, "top": torch.zeros(len(probability), dtype=torch.long),
            "correct": torch.tensor(correct), "loss": -torch.log(probability)}


def test_grades_over_the_last_window_of_epochs_and_a_state_round_trip():
    memory = DifficultyMemory(4)
    # tile 0 easy, 1 noisy, 2 hard (right but unsure), 3 wrong once only in the window
    memory.record(_evidence([0.1, 0.9, 0.5, 0.05], [False, True, True, False]))  # left out
    memory.record(_evidence([0.9, 0.1, 0.6, 0.1], [True, False, True, False]))
    memory.record(_evidence([0.95, 0.05, 0.5, 0.8], [True, False, True, True]))
    rows = memory.table(DifficultySettings(window=2))
    assert [r["difficulty"] for r in rows] == ["easy", "noisy", "hard", "hard"]
    assert rows[1]["times_correct"] == 0 and rows[1]["epochs"] == 2
    assert rows[0]["mean_probability"] == pytest.approx(0.925)
    assert [r["difficulty"] for r in memory.table(DifficultySettings(window=3))] == \
        ["hard", "hard", "hard", "hard"]
    copy = DifficultyMemory(4)
    copy.load_state_dict(memory.state_dict())
    assert copy.table(DifficultySettings(window=2)) == rows
    with pytest.raises(ValueError, match="holds 4 tiles, the train split 5"):
        DifficultyMemory(5).load_state_dict(memory.state_dict())
    with pytest.raises(ValueError, match="noisy_probability <= easy_probability"):
        DifficultySettings(easy_probability=0.1, noisy_probability=0.5)


def test_a_planted_wrong_label_is_graded_noisy_and_pictured(planted, tmp_path):
    out = tmp_path / "run"
    assert main(args_for(planted, out)) == 0
    rows = read_rows(out / "difficulty.csv")
    assert len(rows) == 36
    noisy = [r for r in rows if r["difficulty"] == "noisy"]
    assert [r["image"].split("/")[-1] for r in noisy] == ["A_0.png"]
    assert noisy[0]["label"] == "B" and noisy[0]["predicted"] == "A"
    assert float(noisy[0]["mean_probability"]) < 0.3
    assert sum(r["difficulty"] == "easy" for r in rows) >= 24
    metrics = read_rows(out / "metrics.csv")
    assert metrics[-1]["train_noisy"] == "1"
    assert (out / "likely_mislabelled.png").stat().st_size > 0


def test_the_memory_survives_a_resume_bit_identically(planted, tmp_path, monkeypatch):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(args_for(planted, straight, "train.epochs=3")) == 0
    run_killed_after_first_epoch(monkeypatch,
                                 lambda: main(args_for(planted, interrupted, "train.epochs=3")))
    checkpoint = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=False)
    assert len(checkpoint["stage"]["difficulty"]["epochs"]) == 1
    assert main(args_for(planted, interrupted, "train.epochs=3") + ["--resume"]) == 0
    assert (straight / "difficulty.csv").read_text() == (interrupted / "difficulty.csv").read_text()
    timing = {"images_per_s", "train_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing}
            for r in read_rows(straight / "metrics.csv")] == \
        [{k: v for k, v in r.items() if k not in timing}
         for r in read_rows(interrupted / "metrics.csv")]


def test_bad_difficulty_settings_are_refused_by_name(planted, tmp_path, capsys):
    assert main(args_for(planted, tmp_path / "a", "train.difficulty.window=0")) == 2
    assert "train.difficulty: window must be at least 1 epoch" in capsys.readouterr().err
    assert main(args_for(planted, tmp_path / "b", "train.difficulty.enabled=yes please")) == 2
    assert "'train.difficulty.enabled' must be true or false" in capsys.readouterr().err
    assert main(args_for(planted, tmp_path / "c", "train.difficulty.shown=-1")) == 2
    assert "train.difficulty.shown must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "c" / "config.yaml").exists()  # refused before anything was written


def test_grade_weights():
    weights = grade_weights(["easy", "hard", "noisy", "hard"], hard_weight=2.0, noisy_weight=0.0)
    assert weights.tolist() == [1.0, 2.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="must be >= 0"):
        grade_weights(["easy"], hard_weight=-1.0, noisy_weight=1.0)


def test_noisy_tiles_left_out_once_graded_and_the_resume_draws_the_same(planted, tmp_path,
                                                                         monkeypatch):
    """noisy_weight 0: from the epoch after the window is full, the sampler never draws a tile the
    memory grades noisy (the planted one among them), and draws hard tiles twice as often as easy
    ones; a run interrupted after the weights changed resumes with them (re-derived from
    the memory) to the same grades."""
    extra = ("train.difficulty.noisy_weight=0", "train.difficulty.hard_weight=2",
             "train.epochs=7")
    straight = tmp_path / "straight"
    seen = []
    draw = ClassBalancedSampler.__iter__

    def recording(self):
        indices = list(draw(self))
        seen.append((self.epoch, indices, self.weights.clone()))
        return iter(indices)

    monkeypatch.setattr(ClassBalancedSampler, "__iter__", recording)
    assert main(args_for(planted, straight, *extra)) == 0
    monkeypatch.undo()
    rows = read_rows(straight / "difficulty.csv")
    planted_index = next(i for i, r in enumerate(rows) if r["image"].endswith("A_0.png"))
    memory = DifficultyMemory(len(rows))
    memory.load_state_dict(torch.load(straight / "checkpoints" / "last.pt",
                                      weights_only=True)["stage"]["difficulty"])
    assert len(memory.epochs) == 7 and sorted({e for e, _, _ in seen}) == list(range(7))
    assert all(float(w.max()) == pytest.approx(float(w.min())) for e, _, w in seen if e < 2)
    planted_left_out = hard_weighed = False
    for epoch, indices, drawn_by in seen:
        if epoch < 2:
            continue
        # epoch e is drawn by the grades of epochs e-2 and e-1 (the window of 2)
        then = DifficultyMemory(len(rows))
        then.epochs = memory.epochs[:epoch]
        grades = [r["difficulty"] for r in then.table(DifficultySettings(window=2,
                                                                           noisy_probability=0.3))]
        weights = [float(w) for w in drawn_by]
        assert [w == 0 for w in weights] == [g == "noisy" for g in grades]
        assert not any(grades[i] == "noisy" for i in indices)
        hard = [i for i, grade in enumerate(grades) if grade == "hard"]
        easy = [i for i, grade in enumerate(grades) if grade == "easy"]
        if hard and easy:
            assert all(weights[i] == pytest.approx(2 * weights[easy[0]]) for i in hard)
            hard_weighed = True
        planted_left_out |= grades[planted_index] == "noisy"
    assert planted_left_out and hard_weighed  # both happened in at least one epoch

    interrupted = tmp_path / "interrupted"
    run_killed_after_first_epoch(monkeypatch,
                                 lambda: main(args_for(planted, interrupted, *extra)), epochs=3)
    assert main(args_for(planted, interrupted, *extra) + ["--resume"]) == 0
    assert (straight / "difficulty.csv").read_text() == (interrupted / "difficulty.csv").read_text()


def test_the_memory_only_reads_training_is_unchanged(planted, tmp_path):
    """The memory's pass (own loader seed, eval mode) leaves the training as it is without it."""
    timing = {"images_per_s", "train_seconds"}
    rows = {}
    for enabled in (True, False):
        out = tmp_path / str(enabled)
        assert main(args_for(planted, out, "train.epochs=2",
                             f"train.difficulty.enabled={str(enabled).lower()}")) == 0
        rows[enabled] = [{k: v for k, v in r.items() if k not in timing and not
                          k.startswith("train_") or k == "train_loss"}
                         for r in read_rows(out / "metrics.csv")]
    assert rows[True] == rows[False]
    with_memory = torch.load(tmp_path / "True" / "classifier.pt", weights_only=True)["state_dict"]
    without = torch.load(tmp_path / "False" / "classifier.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(with_memory[k], without[k]) for k in with_memory)

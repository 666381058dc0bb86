"""Class-balanced tile sampling (train.class_balance / seg_train.class_balance): weights by class
frequency, draws per epoch that a resume repeats, ranks that share one draw, and the stage option."""

import csv

import pytest
import torch

from segmix.cli import main
from segmix.training.sampling import ClassBalancedSampler, class_balance_weights

from interrupt import run_killed_after_first_epoch
from synthetic import train_cls_args, write_csv_dataset

# 6 tiles of class 0, 2 of class 1, 1 of class 2 and one tile of classes 0 and 2
LABELS = [(0,)] * 6 + [(1,)] * 2 + [(2,), (0, 2)]


def class_mass(weights, labels, k):
    return sum(float(w) for w, tile in zip(weights, labels) if tile == (k,))


def test_power_zero_is_uniform_and_power_one_balances_the_classes():
    uniform = class_balance_weights(LABELS, 3, 0.0)
    assert torch.allclose(uniform, torch.full((10,), 0.1, dtype=torch.float64))
    balanced = class_balance_weights(LABELS, 3, 1.0)
    assert float(balanced.sum()) == pytest.approx(1.0)
    # class counts 7, 2, 2: a single-class tile weighs 1/7, 1/2, 1/2
    assert float(balanced[0] / balanced[6]) == pytest.approx(2 / 7)
    assert float(balanced[9]) == pytest.approx(float(balanced[8]))  # weighs as its rarest class
    # uniform: class 1 gets 0.2 of the draws against class 0's 0.6; balanced: 0.35 against 0.3
    assert class_mass(uniform, LABELS, 1) == pytest.approx(0.2)
    assert class_mass(balanced, LABELS, 1) == pytest.approx(0.35)
    assert class_mass(balanced, LABELS, 0) == pytest.approx(0.3)
    half = class_balance_weights(LABELS, 3, 0.5)
    assert float(half[0] / half[6]) == pytest.approx((2 / 7) ** 0.5)
    with pytest.raises(ValueError, match="power must be >= 0"):
        class_balance_weights(LABELS, 3, -1.0)


def test_draws_follow_the_weights_repeat_per_epoch_and_split_over_ranks():
    weights = class_balance_weights(LABELS, 3, 1.0)
    sampler = ClassBalancedSampler(weights, seed=3)
    sampler.set_epoch(4)
    first = list(sampler)
    assert len(first) == len(sampler) == 10 and list(sampler) == first  # the same epoch, the same draw
    sampler.set_epoch(5)
    assert list(sampler) != first
    many = ClassBalancedSampler(class_balance_weights(LABELS * 100, 3, 1.0), seed=0)
    drawn = [LABELS[i % 10] for i in many]
    share_rare = sum(tile == (1,) for tile in drawn) / len(drawn)
    assert 0.2 < share_rare < 0.45  # 2 of 10 tiles, drawn about as often as the 6 of class 0
    ranks = [ClassBalancedSampler(weights, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for rank in ranks:
        rank.set_epoch(4)
    zero, one = list(ranks[0]), list(ranks[1])
    assert len(zero) == len(one) == 5
    assert [i for pair in zip(zero, one) for i in pair] == first  # one draw, shared out


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    """The synthetic tiles with class C cut down to one train tile."""
    root = tmp_path_factory.mktemp("unbalanced")
    csv_path = write_csv_dataset(root, per_class=8, size=32)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    c_train = [r for r in rows if r["label"] == "C" and r["split"] == "train"]
    kept = [r for r in rows if r not in c_train[1:]]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return csv_path


def cls_args(csv_path, out, *extra):
    return train_cls_args(csv_path, out, "train.epochs=2", "train.batch_size=4",
                          "train.class_balance=1.0", "augment.curriculum.patch_sizes=[16, 8]",
                          "augment.curriculum.warmup_epochs=0", *extra)


def test_a_class_balanced_run_resumes_exactly(unbalanced, tmp_path, monkeypatch):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(cls_args(unbalanced, straight)) == 0
    run_killed_after_first_epoch(monkeypatch, lambda: main(cls_args(unbalanced, interrupted)))
    assert main(cls_args(unbalanced, interrupted) + ["--resume"]) == 0
    a = torch.load(straight / "classifier.pt", weights_only=True)["state_dict"]
    b = torch.load(interrupted / "classifier.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = tmp_path / "plain"
    assert main(cls_args(unbalanced, plain, "train.class_balance=0.0")) == 0
    c = torch.load(plain / "classifier.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the balanced draw trained another model


def test_a_negative_class_balance_is_refused(unbalanced, tmp_path, capsys):
    assert main(cls_args(unbalanced, tmp_path / "bad", "train.class_balance=-0.5")) == 2
    assert "train.class_balance must be a number >= 0, got -0.5" in capsys.readouterr().err

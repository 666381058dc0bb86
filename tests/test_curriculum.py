"""Tests of the feedback curriculum: scripted loss curves give hand-computed sequences."""

import csv
import json

import pytest

from segmix.curriculum import ShuffleCurriculum, default_fix_ratios, default_patch_sizes
from segmix.io import write_csv

# Ladders with 4 levels on 128 px: L0 (32, .9), L1 (16, .7), L2 (16, .5), L3 (8, .3).
LADDERS = dict(patch_sizes=[32, 16, 8], fix_ratios=[0.9, 0.7, 0.5, 0.3])


def run(curriculum, losses, start_epoch=0):
    levels = []
    for epoch, loss in enumerate(losses, start=start_epoch):
        levels.append(curriculum.level)
        curriculum.step(epoch, loss)
    return levels


def test_default_ladders():
    assert default_patch_sizes(224) == [112, 32, 16]
    assert default_patch_sizes(256) == [128, 64, 32, 16]
    assert default_patch_sizes((224, 320)) == [32, 16]
    assert default_patch_sizes(384) == [192, 128, 96, 64, 48, 32, 16]
    with pytest.raises(ValueError, match="no patch size divides the image size 100x100"):
        default_patch_sizes(100)
    assert default_fix_ratios(0.9, 0.25, 14)[0] == 0.9
    assert default_fix_ratios(0.9, 0.25, 14)[-1] == 0.25
    assert len(default_fix_ratios()) == 8


def test_levels_that_shuffle_nothing_are_warned_about():
    with pytest.warns(UserWarning, match=r"level 0 \(patch 112, ratio 0.9\) keep every grid position"):
        ShuffleCurriculum(224, "fixed", patch_sizes=[112, 56], fix_ratios=[0.9, 0.5])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ShuffleCurriculum(224, "loss_hold", total_epochs=10)  # the defaults move patches at every level


def test_levels_map_onto_both_ladders():
    c = ShuffleCurriculum(128, "fixed", **LADDERS)
    settings = [(s.patch_size, s.fix_ratio) for s in map(c.setting_at, range(c.num_levels))]
    assert settings == [(32, 0.9), (16, 0.7), (16, 0.5), (8, 0.3)]


def test_fixed_strategy_never_moves():
    c = ShuffleCurriculum(128, "fixed", start_level=2, **LADDERS)
    assert run(c, [5.0, 0.01, 0.01, 9.0]) == [2, 2, 2, 2]
    assert {row["decision"] for row in c.history} == {"fixed"}
    assert c.setting.patch_size == 16 and c.setting.fix_ratio == 0.5


def test_linear_plan_with_warmup():
    c = ShuffleCurriculum(128, "linear", total_epochs=7, warmup_epochs=1, **LADDERS)
    assert run(c, [1.0] * 7) == [0, 0, 1, 1, 2, 2, 3]
    assert [row["decision"] for row in c.history][:2] == ["plan", "plan"]


def test_linear_plan_ignores_the_loss():
    a = ShuffleCurriculum(128, "linear", total_epochs=7, **LADDERS)
    b = ShuffleCurriculum(128, "linear", total_epochs=7, **LADDERS)
    assert run(a, [0.01] * 7) == run(b, [100.0] * 7)


def test_loss_hold_scripted_curve():
    c = ShuffleCurriculum(128, "loss_hold", total_epochs=7, warmup_epochs=1, threshold_decay=0.5,
                          **LADDERS)
    levels = run(c, [2.0, 1.0, 0.9, 0.95, 0.3, 0.4, 0.1])
    assert levels == [0, 0, 1, 2, 2, 3, 3]
    # the warm-up epoch's loss (2.0) is not the reference: epoch 1's loss (1.0) is
    assert [r["decision"] for r in c.history] == [
        "warmup", "calibrate", "harder", "plan", "harder", "plan", "hold"]
    assert [r["threshold"] for r in c.history] == [None, None, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert c.threshold == 0.125


def test_loss_hold_without_warmup_calibrates_on_epoch_zero():
    c = ShuffleCurriculum(128, "loss_hold", total_epochs=7, threshold_decay=0.5, **LADDERS)
    run(c, [2.0, 1.0])
    assert [r["decision"] for r in c.history] == ["calibrate", "harder"]
    assert c.threshold == 1.0


def test_loss_hold_follows_the_plan_when_loss_stays_high():
    c = ShuffleCurriculum(128, "loss_hold", total_epochs=7, loss_threshold=0.1, **LADDERS)
    linear = ShuffleCurriculum(128, "linear", total_epochs=7, **LADDERS)
    assert run(c, [1.0] * 7) == run(linear, [1.0] * 7)


def test_loss_back_scripted_curve():
    c = ShuffleCurriculum(128, "loss_back", loss_threshold=1.0, threshold_decay=1.0, **LADDERS)
    levels = run(c, [0.5, 0.5, 2.0, 0.5, 0.5, 0.5, 2.0, 2.0])
    assert levels == [0, 1, 2, 1, 2, 3, 3, 2]
    assert [r["decision"] for r in c.history] == [
        "harder", "harder", "easier", "harder", "harder", "hold", "easier", "easier"]
    assert c.level == 1


def test_warmup_holds_the_easiest_level_without_feedback():
    c = ShuffleCurriculum(128, "loss_back", warmup_epochs=3, loss_threshold=1.0, **LADDERS)
    assert run(c, [0.1, 0.1, 0.1, 0.1]) == [0, 0, 0, 1]
    assert [r["decision"] for r in c.history] == ["warmup", "warmup", "harder", "harder"]


def test_low_loss_makes_loss_hold_reach_the_hardest_level_before_the_plan():
    epochs = 20
    hold = ShuffleCurriculum(128, "loss_hold", total_epochs=epochs, loss_threshold=1.0, **LADDERS)
    plan = ShuffleCurriculum(128, "linear", total_epochs=epochs, **LADDERS)
    hold_levels = run(hold, [0.01] * epochs)
    plan_levels = run(plan, [0.01] * epochs)
    first_hold = hold_levels.index(hold.hardest_level)
    first_plan = plan_levels.index(plan.hardest_level)
    # the plan rounds half up: round(16 * 3 / 19) = 3 is its first hardest epoch
    assert first_hold == 3 and first_plan == 16


@pytest.mark.parametrize("strategy", ["fixed", "linear", "loss_hold", "loss_back"])
def test_resume_mid_run_gives_the_same_sequence(strategy):
    losses = [2.0, 1.5, 1.6, 1.2, 1.3, 0.9, 1.4, 0.7, 0.8, 0.6]
    kwargs = dict(total_epochs=len(losses), warmup_epochs=1, **LADDERS)
    uninterrupted = ShuffleCurriculum(128, strategy, **kwargs)
    run(uninterrupted, losses)

    first = ShuffleCurriculum(128, strategy, **kwargs)
    run(first, losses[:4])
    saved = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = ShuffleCurriculum(128, strategy, **kwargs)
    resumed.load_state_dict(saved)
    run(resumed, losses[4:], start_epoch=4)
    assert resumed.history == uninterrupted.history
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_step_order_and_loss_are_checked():
    c = ShuffleCurriculum(128, "loss_back", **LADDERS)
    with pytest.raises(ValueError, match="step\\(epoch=3\\) but the curriculum expects epoch 0"):
        c.step(3, 1.0)
    with pytest.raises(ValueError, match="must be a finite number"):
        c.step(0, float("nan"))
    c.step(0, 1.0)
    with pytest.raises(ValueError, match="expects epoch 1"):
        c.step(0, 1.0)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown curriculum strategy 'cosine'"):
        ShuffleCurriculum(64, "cosine")
    with pytest.raises(ValueError, match="total_epochs must be a positive int"):
        ShuffleCurriculum(64, "linear")
    with pytest.raises(ValueError, match="patch size 24 does not divide the image size 64x64"):
        ShuffleCurriculum(64, "fixed", patch_sizes=[24])
    with pytest.raises(ValueError, match="fix ratio 1.2 is not in"):
        ShuffleCurriculum(64, "fixed", patch_sizes=[16], fix_ratios=[1.2])
    with pytest.raises(ValueError, match="start_level must be in"):
        ShuffleCurriculum(128, "fixed", start_level=9, **LADDERS)


def test_load_state_from_other_settings_is_refused():
    a = ShuffleCurriculum(128, "loss_back", **LADDERS)
    b = ShuffleCurriculum(64, "loss_back", patch_sizes=[32, 16], fix_ratios=[0.7, 0.3])
    with pytest.raises(ValueError, match="saved with other settings .*patch_sizes"):
        b.load_state_dict(a.state_dict())


def test_rectangular_patches_and_history_csv(tmp_path):
    c = ShuffleCurriculum((64, 128), "linear", total_epochs=3, patch_sizes=[(32, 64), (16, 32)],
                          fix_ratios=[0.8, 0.4])
    run(c, [1.0, 0.8, 0.6])
    assert c.history[-1]["patch_size"] == (16, 32)
    path = tmp_path / "curriculum.csv"
    write_csv(path, c.history)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["fix_ratio"]) for r in rows] == [0.8, 0.4, 0.4]
    assert list(rows[0]) == list(c.history[0])

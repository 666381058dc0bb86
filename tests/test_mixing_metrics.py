"""Batch mixers (segmix, none, cutmix, mixup) and classification metrics on hand-made cases."""

import math

import pytest
import torch

from segmix.metrics import average_precision, classification_metrics
from segmix.training.mixers import CutMix, MixUp, NoMixing, ShuffleMixing
from segmix.training.settings import build_mixer


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(6, 3, 32, 32, generator=g)
    targets = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    masks = torch.randint(0, 4, (6, 32, 32), generator=g)
    return images, targets, masks


def test_cutmix_targets_follow_the_pasted_area():
    images, targets, masks = batch()
    mixed, mixed_targets, mixed_masks, _ = CutMix(alpha=1.0)(images, targets, masks,
                                                          generator=torch.Generator().manual_seed(1))
    changed = (mixed != images).any(dim=1)  # pixels that came from another image
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(6))
    assert changed.any()
    # masks change only inside the pasted box, where the images changed too
    assert not ((mixed_masks != masks).any(dim=0) & ~changed.any(dim=0)).any()
    own = mixed_targets[torch.arange(6), targets.argmax(dim=1)]
    assert (own < 1).any() and (own >= 0).all()


def test_mixup_blends_and_refuses_masks():
    images, targets, masks = batch()
    mixed, mixed_targets, _, _ = MixUp(alpha=0.4)(images, targets, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(6))
    assert not torch.equal(mixed, images)
    with pytest.raises(ValueError, match="no meaning for hard masks"):
        MixUp()(images, targets, masks)


def test_mixers_with_p_zero_change_nothing():
    images, targets, masks = batch()
    for mixer in (CutMix(p=0.0), NoMixing()):
        out = mixer(images, targets, masks, generator=torch.Generator().manual_seed(0))
        assert out[0] is images and out[1] is targets and out[2] is masks


def test_segmix_mixer_follows_the_curriculum():
    config = {"name": "segmix", "mode": "batch", "curriculum": {
        "strategy": "loss_back", "patch_sizes": [16, 8], "fix_ratios": [0.5, 0.25],
        "loss_threshold": 1.0, "warmup_epochs": 0}}
    mixer = build_mixer(config, 3, (32, 32), total_epochs=4)
    assert isinstance(mixer, ShuffleMixing)
    assert mixer.start_epoch(0) == {"shuffle_on": True, "shuffle_level": 0,
                                    "shuffle_fix_ratio": 0.5, "shuffle_patch_size": 16}
    images, targets, masks = batch()
    out_images, out_targets, out_masks, _ = mixer(images, targets, masks,
                                               generator=torch.Generator().manual_seed(0))
    assert out_images.shape == images.shape and torch.allclose(out_targets.sum(1), torch.ones(6))
    mixer.end_epoch(0, 0.5)
    assert mixer.start_epoch(1)["shuffle_patch_size"] == 8
    restored = build_mixer(config, 3, (32, 32), total_epochs=4)
    restored.load_state_dict(mixer.state_dict())
    assert restored.history == mixer.history and restored.curriculum.level == 1


def test_segmix_cooldown_epochs_end_the_run_unshuffled():
    config = {"name": "segmix", "cooldown_epochs": 1, "curriculum": {
        "strategy": "linear", "patch_sizes": [16, 8], "fix_ratios": [0.5, 0.25]}}
    mixer = build_mixer(config, 3, (32, 32), total_epochs=3)
    images, targets, masks = batch()
    generator = torch.Generator().manual_seed(0)
    for epoch in range(2):
        assert mixer.start_epoch(epoch)["shuffle_on"]
        assert not torch.equal(mixer(images, targets, masks, generator=generator)[0], images)
        mixer.end_epoch(epoch, 1.0)
    assert mixer.start_epoch(2)["shuffle_on"] is False
    out = mixer(images, targets, masks, generator=generator)
    assert out[0] is images and out[1] is targets and out[2] is masks
    mixer.end_epoch(2, 0.1)  # the unshuffled epoch's loss is not fed back
    assert [row["epoch"] for row in mixer.history] == [0, 1]
    with pytest.raises(ValueError, match="cooldown_epochs must be in"):
        build_mixer({**config, "cooldown_epochs": 3}, 3, (32, 32), total_epochs=3)


def test_build_mixer_errors():
    with pytest.raises(ValueError, match="unknown augment.name 'cutout'"):
        build_mixer({"name": "cutout"}, 3, (32, 32), 2)
    with pytest.raises(ValueError, match="alpha must be positive"):
        build_mixer({"name": "cutmix", "alpha": 0}, 3, (32, 32), 2)


def test_average_precision_hand_cases():
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])) == \
        pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # tied scores form one threshold: (P=1/2, R=1/2), then (P=2/3, R=1)
    assert average_precision(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([1, 0, 1])) == \
        pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert math.isnan(average_precision(torch.tensor([0.3]), torch.tensor([0])))


def test_single_and_multi_label_metrics():
    single = classification_metrics(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
                                    torch.tensor([[1.0, 0], [0, 1], [0, 1]]))
    assert single["accuracy"] == pytest.approx(2 / 3)
    assert single["macro_f1"] == pytest.approx(2 / 3)
    multi = classification_metrics(torch.tensor([[0.9, 0.6], [0.2, 0.4]]),
                                   torch.tensor([[1.0, 1], [0, 1]]))
    assert multi["accuracy"] == pytest.approx(0.5)
    assert multi["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert multi["mAP"] == pytest.approx((1.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="must both be"):
        classification_metrics(torch.zeros(3, 2), torch.zeros(3, 3))

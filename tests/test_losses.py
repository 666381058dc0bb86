"""The segmentation loss (segmix.training.losses): cross-entropy weights by class rarity (the
average labelled pixel keeps weight 1, background 1) and the weighted loss against a hand
computation."""

import pytest
import torch
import torch.nn.functional as F

from segmix.training.losses import SegmentationLoss, class_loss_weights


def test_power_zero_weighs_every_class_alike():
    assert torch.equal(class_loss_weights([6, 2, 1], 0.0), torch.ones(4))


def test_rare_classes_weigh_more_and_the_average_labelled_pixel_keeps_one():
    weights = class_loss_weights([6, 2, 1, 0], 1.0)
    assert float(weights[0]) == 1.0  # background
    # shares 6/9, 2/9, 1/9 to the power -1, scaled so that (6 w1 + 2 w2 + 1 w3) / 9 = 1
    assert torch.allclose(weights[1:4], torch.tensor([0.5, 1.5, 3.0]))
    assert float(weights[4]) == 1.0  # a class no tile holds
    half = class_loss_weights([6, 2, 1], 0.5)
    assert float(half[3] / half[1]) == pytest.approx(6 ** 0.5)
    assert float((half[1:] * torch.tensor([6.0, 2.0, 1.0])).sum() / 9) == pytest.approx(1.0)


def test_bad_powers_and_counts_are_refused():
    with pytest.raises(ValueError, match="power must be >= 0"):
        class_loss_weights([1, 2], -0.5)
    with pytest.raises(ValueError, match="counts >= 0"):
        class_loss_weights([1, -2], 1.0)


def test_the_weighted_loss_is_the_weighted_mean_over_labelled_pixels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 5, generator=generator)
    masks = torch.randint(0, 4, (2, 5, 5), generator=generator)
    masks[0, 0] = 255
    weights = class_loss_weights([6, 2, 1], 1.0)
    loss = SegmentationLoss(255, dice_weight=0.0, class_weights=weights)(logits, masks)
    kept = masks != 255
    nll = -F.log_softmax(logits, dim=1).gather(1, masks.clamp(max=3).unsqueeze(1)).squeeze(1)
    pixel_weights = weights[masks.clamp(max=3)]
    expected = (nll * pixel_weights)[kept].sum() / pixel_weights[kept].sum()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    plain = SegmentationLoss(255, dice_weight=0.0)(logits, masks)
    assert float(plain) == pytest.approx(float(nll[kept].mean()), rel=1e-5)
    with_dice = SegmentationLoss(255, dice_weight=1.0)(logits, masks)
    assert float(with_dice) > float(plain)  # Dice (in (0, 1] here) is added on top

"""Class-balanced synthesis for the segmentation stage (segmix.training.synthesis): rare-class
pixels move into other tiles with their masks, targets follow the areas, donors are drawn by
rarity, and train-seg with it resumes exactly."""

import pytest
import torch

from segmix.training.mixers import NoMixing
from segmix.training.synthesis import RareClassPaste, paste_rare_classes, rarity_weights


def test_rarity_weights_follow_the_tile_shares():
    assert torch.allclose(rarity_weights([90, 10, 0], power=1.0), torch.tensor([1 / 9, 1.0, 0.0]))
    assert torch.allclose(rarity_weights([90, 10, 0], power=0.0), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(rarity_weights([90, 10], power=0.5), torch.tensor([1 / 3, 1.0]))


def batch_of(classes, size=8, seed=0):
    """Tiles with one labelled class each: a random image, a blob of the class in a corner, an
    ignore band and background elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(len(classes), 3, size, size, generator=generator)
    masks = torch.zeros(len(classes), size, size, dtype=torch.long)
    targets = torch.zeros(len(classes), 3)
    for b, k in enumerate(classes):
        top = b % (size // 2)
        masks[b, top:top + 3, :4] = k
        masks[b, -1] = 255
        targets[b, k - 1] = 1
    return images, targets, masks


def test_masks_move_with_the_images_and_targets_follow_the_areas():
    images, targets, masks = batch_of([1, 1, 2, 3, 1, 1])
    mixed = paste_rare_classes(images, targets, masks, torch.tensor([0.05, 1.0, 1.0]), 1.0,
                               torch.Generator().manual_seed(3))
    donors = mixed.params["donor"]
    assert (donors >= 0).all() and (donors != torch.arange(6)).all()  # never its own donor
    for recipient, donor in enumerate(donors.tolist()):
        region = (masks[donor] >= 1) & (masks[donor] <= 3)
        assert torch.equal(mixed.masks[recipient][region], masks[donor][region])
        assert torch.equal(mixed.images[recipient][:, region], images[donor][:, region])
        assert torch.equal(mixed.masks[recipient][~region], masks[recipient][~region])
        assert torch.equal(mixed.images[recipient][:, ~region], images[recipient][:, ~region])
        labelled = mixed.masks[recipient][(mixed.masks[recipient] >= 1)
                                          & (mixed.masks[recipient] <= 3)]
        areas = torch.stack([(labelled == k).float().mean() for k in (1, 2, 3)])
        assert torch.allclose(mixed.targets[recipient], areas)
    untouched = paste_rare_classes(images, targets, masks, torch.tensor([0.05, 1.0, 1.0]), 0.0,
                                   torch.Generator().manual_seed(3))
    assert (untouched.params["donor"] == -1).all() and untouched.masks is masks


def test_donors_are_drawn_by_rarity():
    images, targets, masks = batch_of([1] * 9 + [2])  # one tile of the rare class
    weights = rarity_weights([90, 10, 0])
    generator = torch.Generator().manual_seed(0)
    rare = total = 0
    for _ in range(300):
        donors = paste_rare_classes(images, targets, masks, weights, 1.0, generator).params["donor"]
        rare += int((donors[:9] == 9).sum())
        total += 9
    # a common tile's donor is the rare one with weight 1 against 8 others at 1/9: 9/17
    assert rare / total == pytest.approx(9 / 17, abs=0.03)


def test_the_paste_stops_for_the_cooldown_and_leaves_batches_without_masks():
    images, targets, masks = batch_of([1, 2])
    mixer = RareClassPaste(NoMixing(), torch.tensor([0.1, 1.0, 1.0]), 1.0, cooldown_from=2)
    assert mixer.start_epoch(1)["paste_on"] is True
    assert not torch.equal(mixer(images, targets, masks, torch.Generator()).masks, masks)
    assert mixer(images, targets, None, torch.Generator()).images is images
    assert mixer.start_epoch(2)["paste_on"] is False
    assert mixer(images, targets, masks, torch.Generator()).masks is masks
    with pytest.raises(ValueError, match="probability"):
        RareClassPaste(NoMixing(), torch.ones(3), 1.5)

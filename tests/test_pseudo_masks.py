"""Pseudo masks from hand-made CAMs, palette PNG round trip, metrics on hand-made masks."""

import json

import numpy as np
import pytest
import torch

from pseudo_masks import (
    ConfusionMatrix,
    PseudoMaskConfig,
    area_pixels,
    cams_to_masks,
    class_maps,
    segmentation_metrics,
    trivial_masks,
)
from segmix.artifacts import write_legend
from segmix.data import overlay, read_mask_png, write_mask_png

# one tile, two classes, 2 x 3 pixels; class 0 present, class 1 absent but with a huge map
CAMS = torch.tensor([[[[4.0, 2.0, 0.8], [0.4, 0.0, -1.0]],
                      [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]]])
ONLY_FIRST = torch.tensor([[1.0, 0.0]])


def test_threshold_background_and_label_gating():
    masks = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(background="threshold", threshold=0.3))
    # normalised class-0 map: [[1, .5, .2], [.1, 0, 0]]; the absent class never wins
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]]]
    assert masks.dtype == torch.uint8


def test_power_background():
    masks = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(background="power", alpha=1.0))
    # background (1 - m)^1 = [[0, .5, .8], [.9, 1, 1]] against m = [[1, .5, .2], ...]: tie -> background
    assert masks.tolist() == [[[1, 0, 0], [0, 0, 0]]]
    wide = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(background="power", alpha=3.0))
    # (1 - m)^3 = [[0, .125, .512], ...]: the 0.5 pixel now goes to the class
    assert wide.tolist() == [[[1, 1, 0], [0, 0, 0]]]


def test_tissue_prior_and_tissue_mode():
    images = torch.full((1, 3, 2, 3), 120, dtype=torch.uint8)
    images[..., 0, 0] = 250  # a white pixel
    config = PseudoMaskConfig(background="tissue", min_speck=0)
    masks = cams_to_masks(CAMS, ONLY_FIRST, config, images=images)
    assert masks.tolist() == [[[0, 1, 1], [1, 1, 1]]]  # only white is background
    combined = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(threshold=0.3, tissue_prior=True,
                                                                min_speck=0), images=images)
    assert combined.tolist() == [[[0, 1, 0], [0, 0, 0]]]
    with pytest.raises(ValueError, match="tissue prior needs the images"):
        cams_to_masks(CAMS, ONLY_FIRST, config)


def test_tissue_prior_removes_specks():
    images = torch.full((1, 3, 20, 20), 250, dtype=torch.uint8)
    images[..., 5:15, 5:15] = 100   # a tissue square
    images[..., 9, 9] = 250         # a white speck inside it
    masks = trivial_masks(torch.tensor([[0.0, 1.0]]), 20, 20, images=images)
    assert (masks[0, 5:15, 5:15] == 2).all() and (masks[0, :5] == 0).all()


def test_ignore_margin_between_two_present_classes():
    cams = torch.tensor([[[[1.0, 1.0]], [[0.95, 0.2]]]])
    masks = cams_to_masks(cams, torch.tensor([[1.0, 1.0]]),
                          PseudoMaskConfig(threshold=0.1, ignore_margin=0.1))
    assert masks.tolist() == [[[255, 1]]]


def test_cleanup_small_regions_and_holes():
    cams = torch.zeros(1, 1, 9, 9)
    cams[0, 0, 1:8, 1:8] = 1.0
    cams[0, 0, 4, 4] = 0.0   # a one-pixel hole
    cams[0, 0, 0, 8] = 1.0   # a one-pixel region
    masks = cams_to_masks(cams, torch.ones(1, 1), PseudoMaskConfig(threshold=0.5, min_region=2,
                                                                    max_hole=2))
    assert masks[0, 4, 4] == 1 and masks[0, 0, 8] == 255 and masks[0, 0, 0] == 0


def test_cleanup_areas_as_fractions_of_the_tile():
    assert area_pixels(0.02, 224, 224) == 1004 and area_pixels(1000, 224, 224) == 1000
    assert area_pixels(0, 9, 9) == 0
    with pytest.raises(ValueError, match="area must be >= 0"):
        area_pixels(-0.1, 9, 9)
    cams = torch.zeros(1, 1, 10, 10)
    cams[0, 0, 1:9, 1:9] = 1.0
    cams[0, 0, 4:6, 4:6] = 0.0   # a 4-pixel hole: 4% of the tile
    fill = [cams_to_masks(cams, torch.ones(1, 1), PseudoMaskConfig(threshold=0.5, max_hole=area))[0, 4, 4]
            for area in (0.03, 0.04, 3, 4)]
    assert fill == [0, 1, 0, 1]


def test_trivial_masks_and_bad_shapes():
    assert trivial_masks(torch.tensor([[0.0, 0, 1]]), 2, 2).tolist() == [[[3, 3], [3, 3]]]
    with pytest.raises(ValueError, match="exactly one class"):
        trivial_masks(torch.tensor([[1.0, 1.0]]), 2, 2)
    with pytest.raises(ValueError, match=r"labels must be \[B, K\]"):
        cams_to_masks(CAMS, torch.ones(1, 3))
    with pytest.raises(ValueError, match="unknown background"):
        PseudoMaskConfig(background="otsu")
    with pytest.raises(ValueError, match="unknown pseudo-mask settings"):
        PseudoMaskConfig.from_dict({"treshold": 0.2})


def test_palette_round_trip_and_legend(tmp_path):
    mask = np.array([[0, 1, 2], [3, 255, 0]], dtype=np.uint8)
    write_mask_png(tmp_path / "m.png", mask, num_classes=3)
    assert np.array_equal(read_mask_png(tmp_path / "m.png"), mask)
    legend = write_legend(tmp_path, ["A", "B", "C"])
    assert json.loads((tmp_path / "legend.json").read_text()) == legend
    assert legend["0"]["name"] == "background" and legend["255"]["name"] == "ignore"
    with pytest.raises(ValueError, match=r"mask values \[7\] are outside 0..3 and 255"):
        write_mask_png(tmp_path / "bad.png", np.array([[7]]), num_classes=3)
    picture = overlay(np.full((2, 3, 3), 100, np.uint8), mask, 3)
    assert picture.shape == (2, 3, 3) and (picture[0, 0] == 100).all() and (picture[0, 1] != 100).any()


def test_metrics_on_hand_made_masks():
    truth = torch.tensor([[0, 1], [2, 2]])
    prediction = torch.tensor([[0, 1], [1, 2]])
    matrix = ConfusionMatrix(2)
    matrix.update(prediction, truth)
    full = segmentation_metrics(matrix, "with_background", ["A", "B"])
    assert full["iou"] == {"background": 1.0, "A": 0.5, "B": 0.5}
    assert full["mIoU"] == pytest.approx(2 / 3)
    assert full["FwIoU"] == pytest.approx(0.25 * 1 + 0.25 * 0.5 + 0.5 * 0.5)
    assert full["dice"]["A"] == pytest.approx(2 / 3)
    assert full["pixel_accuracy"] == pytest.approx(0.75)
    assert full["foreground_iou"] == pytest.approx(1.0)  # every class pixel predicted as a class
    no_background = segmentation_metrics(matrix, "ignore_background", ["A", "B"])
    assert set(no_background["iou"]) == {"A", "B"} and no_background["mIoU"] == pytest.approx(0.5)


def test_metrics_count_ignored_predictions_as_misses():
    matrix = ConfusionMatrix(1)
    matrix.update(torch.tensor([1, 255, 0, 1]), torch.tensor([1, 1, 0, 255]))  # last pixel unscored
    metrics = segmentation_metrics(matrix)
    assert metrics["iou"]["class_1"] == pytest.approx(0.5)   # tp 1, fn 1 (the ignored pixel)
    assert metrics["iou"]["background"] == pytest.approx(1.0)
    assert metrics["ignored_fraction"] == pytest.approx(1 / 3)
    assert metrics["foreground_iou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside 0..1 and 255"):
        matrix.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown protocol"):
        segmentation_metrics(matrix, "foreground")


def test_crf_without_the_extra_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_crf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("No module named 'pydensecrf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_crf)
    images = torch.full((1, 3, 2, 3), 120, dtype=torch.uint8)
    with pytest.raises(ImportError, match=r"optional extra 'crf': pip install \"segmix-wsss\[crf\]\""):
        cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(crf=True), images=images)


def test_crf_refines_masks_when_installed():
    pytest.importorskip("pydensecrf.densecrf", reason="the optional 'crf' extra is not installed")
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    images[..., :, 8:] = 200  # two flat halves
    cams = torch.zeros(1, 1, 16, 16)
    cams[..., :, 7:] = 1.0    # the map spills one column over the edge
    masks = cams_to_masks(cams, torch.ones(1, 1), PseudoMaskConfig(threshold=0.5, crf=True),
                          images=images)
    assert (masks[0, :, 9:] == 1).all() and (masks[0, :, :6] == 0).all()


def test_affinity_refinement_spreads_scores_within_a_colour_region_and_stops_at_edges():
    from pseudo_masks import affinity_refine

    generator = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 200.0                      # left half dark, right half light: one edge
    image += torch.rand(image.shape, generator=generator) * 10
    seed = torch.zeros(1, 1, 32, 32)
    seed[..., 4:28, 2:6] = 1.0                   # evidence in a strip of the left half only
    refined = affinity_refine(image.to(torch.uint8), seed, iterations=10)
    assert torch.equal(affinity_refine(image, seed, iterations=0), seed)
    assert refined.min() >= 0 and refined.max() <= 1  # convex combinations
    strip = refined[..., 4:28, 2:6].mean()
    left, right = refined[..., 4:28, 8:16].mean(), refined[..., 4:28, 16:24].mean()
    assert left > 0.05 and abs(left - strip) < 0.01  # spread evenly over its colour region...
    assert right < 1e-6                              # ...and not across the edge
    with pytest.raises(ValueError, match="needs the images"):
        cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(refine_iterations=3))
    images = torch.full((1, 3, 2, 3), 100, dtype=torch.uint8)
    masks = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(refine_iterations=3), images=images)
    assert masks.shape == (1, 2, 3)


def test_refinement_pulls_a_foreground_map_onto_the_colour_edge_and_keeps_its_peak():
    # a localiser's map that overshoots a colour edge by 4 px: refined, the mask stops at the edge
    generator = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 200.0
    images = (image + torch.rand(image.shape, generator=generator) * 10).to(torch.uint8)
    foreground = torch.zeros(1, 32, 32)
    foreground[..., :20] = 0.9
    cams, labels = torch.ones(1, 1, 32, 32), torch.ones(1, 1)
    coarse = PseudoMaskConfig(threshold=0.5, foreground_weight=1.0)
    refined = PseudoMaskConfig(threshold=0.5, foreground_weight=1.0, refine_iterations=10)
    assert (cams_to_masks(cams, labels, coarse, images, foreground)[0, :, :20] == 1).all()
    masks = cams_to_masks(cams, labels, refined, images, foreground)[0]
    assert (masks[:, :16] == 1).all() and (masks[:, 16:] == 0).all()
    maps = class_maps(cams, labels, refined, images, foreground)
    assert torch.isclose(maps.amax(), torch.tensor(0.9))


def test_foreground_map_blends_with_the_cams():
    # class 0 present: normalised map [[1, .5, .2], [.1, 0, 0]]; foreground map marks the right half
    foreground = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])
    only_map = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(threshold=0.5, foreground_weight=1.0),
                             foreground=foreground)
    assert only_map.tolist() == [[[0, 1, 1], [0, 1, 1]]]  # where the CAM is 0 too
    half = cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(threshold=0.4, foreground_weight=0.5),
                         foreground=foreground)
    # strengths .5 * cam + .5 * map: [[.5, .75, .6], [.05, .5, .5]] against 0.4
    assert half.tolist() == [[[1, 1, 1], [0, 1, 1]]]
    # between two present classes the CAMs still decide; where both are 0, the first present wins
    two = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]])
    blended = cams_to_masks(two, torch.ones(1, 2), PseudoMaskConfig(threshold=0.5, foreground_weight=1.0),
                            foreground=torch.ones(1, 1, 3))
    assert blended.tolist() == [[[1, 2, 1]]]
    with pytest.raises(ValueError, match="needs a foreground map"):
        cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(foreground_weight=0.5))
    with pytest.raises(ValueError, match="foreground must be"):
        cams_to_masks(CAMS, ONLY_FIRST, PseudoMaskConfig(foreground_weight=0.5),
                      foreground=torch.ones(1, 3, 2))
    with pytest.raises(ValueError, match="foreground_weight must be in"):
        PseudoMaskConfig(foreground_weight=1.5)

"""Class-agnostic prototypes: features, superpixels, k-means, naming by class evidence."""

import numpy as np
import pytest
import torch

from pseudo_masks.fill import blurred
from pseudo_masks.prototypes import (
    FEATURE_NAMES,
    Prototypes,
    class_specificity,
    cluster_evidence,
    fit_prototypes,
    kmeans,
    pixel_features,
    prototype_shares,
    superpixels,
)

PURPLE, PINK, CREAM = (90, 40, 130), (220, 150, 160), (250, 235, 210)


def cell_tile(seed: int, size: int = 64):
    """A purple textured disc (the 'cell', the class evidence) on pink discs ('red cells') on cream;
    returns the image and the cell's mask."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float64)
    image[:] = CREAM
    yy, xx = np.mgrid[:size, :size]
    for _ in range(3):
        cy, cx = rng.integers(8, size - 8, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = PINK
    cy, cx = rng.integers(20, size - 20, 2)
    cell = (yy - cy) ** 2 + (xx - cx) ** 2 < 150
    image[cell] = PURPLE
    image[cell] += rng.normal(0, 25, (int(cell.sum()), 3))  # chromatin texture
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8), cell


def purple_evidence(images, labels):
    """A stand-in classifier: the class probability grows with the share of sharp purple texture."""
    out = []
    for image in images:
        pixels = image.astype(np.float64)
        purple = (pixels[..., 2] > pixels[..., 1] + 40) & (pixels[..., 0] < 150)
        texture = np.abs(np.diff(pixels[..., 1], axis=1)).mean()
        out.append(min(1.0, purple.mean() * 4) * min(1.0, texture / 4))
    return np.array(out)


def test_pixel_features_have_one_channel_per_name_and_refuse_other_input():
    image, _ = cell_tile(0)
    features = pixel_features(image)
    assert features.shape == (64, 64, len(FEATURE_NAMES)) and features.dtype == np.float32
    haematoxylin = features[..., FEATURE_NAMES.index("haematoxylin")]
    _, cell = cell_tile(0)
    assert haematoxylin[cell].mean() > haematoxylin[~cell].mean()  # the purple cell stains darker
    with pytest.raises(ValueError, match="uint8 RGB"):
        pixel_features(image.astype(np.float32))


def test_superpixel_features_are_the_means_of_their_pixels():
    image, _ = cell_tile(1)
    pixels = superpixels(image, segments=40)
    count = pixels.labels.max() + 1
    assert pixels.features.shape == (count, len(FEATURE_NAMES)) and pixels.areas.sum() == 64 * 64
    features = pixel_features(image)
    for segment in (0, count - 1):
        np.testing.assert_allclose(pixels.features[segment],
                                   features[pixels.labels == segment].mean(axis=0), rtol=1e-4, atol=1e-4)


def test_kmeans_finds_separated_groups_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + torch.randn(50, 2, generator=generator) * 0.3 for c in centres])
    found = kmeans(points, 3, seed=1)
    matched = torch.cdist(centres, found).min(dim=1).values
    assert bool((matched < 0.3).all())
    assert torch.equal(found, kmeans(points, 3, seed=1))
    with pytest.raises(ValueError, match="at least k=3"):
        kmeans(points[:2], 3)


def test_prototypes_named_by_class_evidence_find_the_cell():
    tiles = [cell_tile(seed) for seed in range(6)]
    described = [superpixels(image, segments=200) for image, _ in tiles]
    prototypes = fit_prototypes([p.features for p in described], 3, seed=0)
    drops, areas = np.zeros(3), np.zeros(3)
    for (image, _), pixels in zip(tiles, described):
        prototype_map = prototypes.prototype_map(pixels)
        drop = cluster_evidence(image, prototype_map, [0], 3, purple_evidence)
        area = prototype_shares(prototype_map, 3)
        assert area.sum() == pytest.approx(1.0) and not drop[area == 0].any()
        drops += drop * area
        areas += area
    prototypes.scores = torch.from_numpy(drops / areas).float()
    image, cell = cell_tile(99)  # a tile the prototypes have not seen
    foreground = prototypes.foreground(superpixels(image, segments=200))
    assert foreground.shape == cell.shape and 0 <= foreground.min() and foreground.max() == 1
    iou = ((foreground > 0.5) & cell).sum() / ((foreground > 0.5) | cell).sum()
    assert iou > 0.7
    restored = Prototypes.from_state_dict(prototypes.state_dict())
    assert np.array_equal(restored.foreground(superpixels(image, segments=200)), foreground)


def test_blurred_keeps_colour_and_removes_texture():
    image, cell = cell_tile(3)
    soft = blurred(image, sigma=4)
    assert soft.dtype == np.uint8 and soft.shape == image.shape
    texture = [np.abs(np.diff(x.astype(float), axis=1)).mean() for x in (soft, image)]
    assert texture[0] < texture[1] / 3
    assert abs(soft.astype(float).mean() - image.astype(float).mean()) < 3


def test_class_specificity_scores_what_differs_between_classes():
    # prototype 0 covers half of every tile (background); 1 only class-0 tiles, 2 only class-1 tiles;
    # 3 covers tiles of both classes alike but little area
    shares = np.array([[0.5, 0.45, 0.0, 0.05], [0.5, 0.4, 0.05, 0.05], [0.5, 0.0, 0.45, 0.05],
                       [0.5, 0.0, 0.45, 0.05], [0.5, 0.0, 0.45, 0.05]])
    scores = class_specificity(shares, [(0,), (0,), (1,), (1,), (1,)], 3)
    assert scores[0] == pytest.approx(0) and scores[3] == pytest.approx(0)
    assert scores[1] == pytest.approx(1) and 0.6 < scores[2] < 1  # 2 also appears in one class-0 tile
    # three tiles of class 1 count as much as two of class 0: the class means are compared
    assert scores[1] == pytest.approx(class_specificity(shares[[0, 1, 2]], [(0,), (0,), (1,)], 3)[1])
    with pytest.raises(ValueError, match="at least two classes"):
        class_specificity(shares[:2], [(0,), (0,)], 3)
    assert prototype_shares(np.array([[0, 0], [2, 0]]), 3).tolist() == [0.75, 0.0, 0.25]

"""The feature-axis localiser's core: fusing and centring dense features, the principal axis
inside tiles, and naming its sign by a classifier's evidence."""

import numpy as np
import pytest
import torch

from pseudo_masks.feature_axis import (
    FeatureAxis,
    fit_feature_axis,
    fuse_feature_maps,
    sample_cells,
    side_evidence,
    smoothed_centred,
)
from pseudo_masks.fill import shuffle_fills


def test_fuse_resizes_every_map_to_the_finest_grid():
    fine, coarse = torch.ones(2, 3, 8, 8), torch.arange(4.0).view(1, 1, 2, 2).expand(2, 5, 2, 2)
    fused = fuse_feature_maps([coarse, fine])
    assert fused.shape == (2, 8, 8, 8)
    assert torch.equal(fused[:, 5:], fine)
    assert fused[0, 0, 0, 0] < fused[0, 0, -1, -1]  # the coarse map's corners kept their order
    with pytest.raises(ValueError, match="at least one"):
        fuse_feature_maps([])


def test_centring_removes_each_tiles_tissue_mean_only():
    features = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0)) + \
        torch.tensor([0.0, 5.0, -3.0])[:, None, None, None]
    tissue = torch.zeros(3, 6, 6, dtype=torch.bool)
    tissue[0, :3], tissue[1] = True, True  # tile 2 has no tissue: centred on all its cells
    centred = smoothed_centred(features, tissue, smoothing=1)
    for i in range(3):
        keep = tissue[i] if tissue[i].any() else torch.ones(6, 6, dtype=torch.bool)
        assert torch.allclose(centred[i].permute(1, 2, 0)[keep].mean(dim=0), torch.zeros(4),
                              atol=1e-5)
    shift = centred[0] - features[0]  # one mean per channel, taken from every cell
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift))
    smooth = smoothed_centred(features, tissue, smoothing=3)
    assert smooth.std() < centred.std()  # averaged over 3 x 3 cells
    with pytest.raises(ValueError, match="odd"):
        smoothed_centred(features, tissue, smoothing=2)
    with pytest.raises(ValueError, match="tissue must be"):
        smoothed_centred(features, tissue[:, :3], smoothing=1)


def test_cells_are_sampled_from_tissue_only():
    features = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    tissue = torch.zeros(2, 4, 4, dtype=torch.bool)
    tissue[0, 0], tissue[1, :, 0] = True, True
    cells = sample_cells(features, tissue, count=3, generator=torch.Generator().manual_seed(0))
    assert cells.shape == (6, 1)
    allowed = set(features[:, 0][tissue].tolist())
    assert set(cells.flatten().tolist()) <= allowed and len(set(cells.flatten().tolist())) == 6


def two_kinds_of_tissue(count: int = 400, channels: int = 6, seed: int = 0):
    """Cells of two kinds that differ along channel 0 + channel 1, with louder noise on channel 5
    (which standardising must not let win) and small noise elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    kind = torch.rand(count, generator=generator) < 0.5
    cells = 0.2 * torch.randn(count, channels, generator=generator)
    cells[:, 0] += torch.where(kind, 1.0, -1.0)
    cells[:, 1] += torch.where(kind, 1.0, -1.0)
    cells[:, 5] = 6 * torch.randn(count, generator=generator)
    return cells, kind


def test_the_axis_is_the_direction_the_kinds_of_tissue_differ_along():
    cells, kind = two_kinds_of_tissue()
    axis = fit_feature_axis(cells)
    unit = axis.direction / axis.direction.norm()
    assert abs(float(unit[0])) > 0.6 and abs(float(unit[1])) > 0.6
    grid = cells[:, :, None, None]  # each cell as a 1 x 1 tile
    scores = axis.scores(grid)[:, 0, 0]
    assert scores.min() >= 0 and scores.max() <= 1
    separated = ((scores > 0.5) == kind).float().mean()
    assert max(separated, 1 - separated) > 0.95  # the sign is arbitrary until named
    assert torch.allclose(axis.flipped().scores(grid), 1 - axis.scores(grid), atol=1e-5)
    saved = FeatureAxis.from_state_dict(axis.state_dict())
    assert torch.equal(saved.direction, axis.direction) and saved.low == axis.low
    with pytest.raises(ValueError, match="channels"):
        axis.project(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="P >= 2"):
        fit_feature_axis(cells[:1])


def test_side_evidence_names_the_side_that_keeps_the_class():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 30, 30)   # the class lives in the red left half
    rgb[:, 8:] = (30, 30, 200)
    fill = np.full_like(rgb, 120)
    tissue = np.ones((16, 16), bool)
    left_high = np.tile(np.linspace(1, 0, 16), (16, 1))

    def redness(images, labels):
        assert list(labels) == [2]
        return np.array([(image[..., 0] > 150).mean() * 2 for image in images])

    assert side_evidence(rgb, left_high, tissue, [2], redness, fill) == pytest.approx(1.0)
    assert side_evidence(rgb, 1 - left_high, tissue, [2], redness, fill) == pytest.approx(-1.0)
    assert side_evidence(rgb, left_high, np.zeros_like(tissue), [2], redness, fill) == 0.0


def test_shuffle_fills_take_every_patch_from_another_tile_at_each_tiles_size():
    tiles = [np.full((40, 40, 3), 0, np.uint8), np.full((48, 64, 3), 100, np.uint8),
             np.full((40, 40, 3), 200, np.uint8)]
    fills = shuffle_fills(tiles, (32, 32), 8, torch.Generator().manual_seed(0))
    assert [fill.shape for fill in fills] == [tile.shape for tile in tiles]
    assert all(fill.dtype == np.uint8 for fill in fills)
    assert fills[0].min() >= 100 and fills[2].max() <= 100  # never the tile's own colour
    assert set(np.unique(fills[0])) >= {100, 200}  # patches from both other tiles
    pair = shuffle_fills(tiles[:2], (32, 32), 8, torch.Generator().manual_seed(1))
    assert (pair[0] == 100).all() and (pair[1] == 0).all()  # of two tiles, each is the other's
    with pytest.raises(ValueError, match="batch of 2"):
        shuffle_fills(tiles[:1], (32, 32), 8, torch.Generator())
    with pytest.raises(ValueError, match="must divide"):
        shuffle_fills(tiles, (32, 32), 5, torch.Generator())

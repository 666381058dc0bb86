"""Class-balanced sampling of training tiles: rare classes drawn more often (the DiffMix answer to
class imbalance without a generative model; the batch shuffle then moves their patches, with
their masks, into other tiles of the batch).

A tile's weight is the rarest of its classes' frequencies raised to ``-power``: ``power`` 0 draws
every tile equally (plain shuffling, but with replacement), 1 draws every class equally often,
0.5 in between. Each epoch draws as many tiles as the training set holds, with replacement, from a
generator seeded by the epoch, so a resumed run draws the same tiles; under DDP every rank draws
the same list and takes its own share.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["class_balance_weights", "ClassBalancedSampler"]


def class_balance_weights(tile_labels: Sequence[Sequence[int]], num_classes: int,
                          power: float) -> torch.Tensor:
    """Per-tile sampling weights ``[N]`` (summing to 1): a tile weighs as its rarest class's
    frequency to the ``-power``; a tile without a class weighs as the most common class."""
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for labels in tile_labels:
        for label in labels:
            counts[label] += 1
    per_class = counts.clamp(min=1) ** -power
    floor = float(per_class[counts > 0].min()) if bool((counts > 0).any()) else 1.0
    weights = torch.tensor([max((float(per_class[k]) for k in labels), default=floor)
                            for labels in tile_labels], dtype=torch.float64)
    return weights / weights.sum()


class ClassBalancedSampler(Sampler[int]):
    """Tile indices drawn with replacement by ``weights`` (see :func:`class_balance_weights`),
    ``len(weights)`` per epoch split over ``world_size`` ranks; ``set_epoch`` before each epoch."""

    def __init__(self, weights: torch.Tensor, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if weights.ndim != 1 or not len(weights):
            raise ValueError(f"weights must be a non-empty 1-D tensor, got shape {tuple(weights.shape)}")
        self.weights, self.seed = weights, int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.per_rank = -(-len(weights) // self.world_size)  # every rank the same number
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.per_rank * self.world_size,
                                  replacement=True, generator=generator)
        return iter(drawn[self.rank::self.world_size].tolist())

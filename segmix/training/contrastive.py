"""Supervised contrastive learning with difficulty subclasses (DASC's SupCon part), for tiles.

- :class:`ProjectionClassifier` puts a projection head beside a timm classifier's head: one forward
  gives the logits and an L2-normalised embedding of the pooled features.
- :func:`contrastive_groups` names each tile's positives: tiles of the same class and difficulty
  subclass. A shuffled tile counts by its area-weighted label: it belongs to the class holding at
  least ``min_share`` of its area when that class is one of the tile's own labels (the tile then
  keeps its own subclass); a tile whose area is mostly other tiles' is left out of the term, since
  its difficulty is not its own.
- :func:`difficulty_subclasses` grades the hard tiles of each class into ``k`` subclasses by
  k-means on their embeddings (easy tiles are subclass 0, noisy ones are left out).
- :func:`confusion_weights` is the tile form of DASC's hard-negative search: negatives of the
  classes a class is most often mistaken for weigh more in its anchors' denominators.
- :func:`supervised_contrastive_loss` is SupCon (Khosla et al., 2020) with those weights.

Only torch: these run inside any training loop.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectionClassifier", "confusion_weights", "contrastive_groups",
           "difficulty_subclasses", "supervised_contrastive_loss"]

EXCLUDED = -1


class ProjectionClassifier(nn.Module):
    """A timm ``classifier`` (``forward_features`` / ``forward_head``) with a two-layer projection
    head on its pooled features; ``forward`` returns ``(logits, embedding)``, the embedding of
    unit length."""

    def __init__(self, classifier: nn.Module, dim: int = 128) -> None:
        super().__init__()
        features = int(classifier.num_features)
        self.classifier = classifier
        self.projection = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True),
                                        nn.Linear(features, dim))

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        pooled = self.classifier.forward_head(self.classifier.forward_features(images),
                                              pre_logits=True)
        logits = self.classifier.get_classifier()(pooled)
        return logits, F.normalize(self.projection(pooled.float()), dim=1)


def contrastive_groups(targets: Tensor, labels: Tensor, subclasses: Tensor, num_subclasses: int,
                       min_share: float = 0.5) -> Tensor:
    """Each tile's group ``[B]`` (long; :data:`EXCLUDED` = -1 leaves it out).

    ``targets`` ``[B, K]``: the (mixed) targets, area-weighted or multi-hot; ``labels`` ``[B, K]``:
    the tiles' own multi-hot labels before mixing; ``subclasses`` ``[B]``: each tile's difficulty
    subclass in ``0..num_subclasses`` (-1: noisy). Group = class * (num_subclasses + 1) + subclass.
    """
    shares = targets.float() / targets.float().sum(dim=1, keepdim=True).clamp_min(1e-8)
    share, majority = shares.max(dim=1)
    own = labels.bool().gather(1, majority[:, None])[:, 0]
    keep = (share >= min_share - 1e-6) & own & (subclasses >= 0)
    groups = majority * (num_subclasses + 1) + subclasses.clamp_min(0)
    return torch.where(keep, groups, torch.full_like(groups, EXCLUDED))


def supervised_contrastive_loss(embeddings: Tensor, groups: Tensor, temperature: float = 0.1,
                                negative_weights: Optional[Tensor] = None,
                                groups_per_class: int = 1) -> Tensor:
    """SupCon over the tiles of ``groups`` >= 0 (``embeddings`` ``[B, D]``, unit length).

    For anchor i with positives P(i) (other tiles of its group): the mean over p of
    ``-log(exp(s_ip) / sum_a w_ia exp(s_ia))``, ``s = z_i . z_a / temperature``, a over every other
    kept tile. ``w_ia`` is 1, or ``negative_weights[class_i, class_a]`` (``[K, K]``) for a tile of
    another class, a group's class being ``group // groups_per_class`` (as
    :func:`contrastive_groups` numbers them, ``num_subclasses + 1`` groups a class). Anchors
    without a positive add nothing; a batch without any gives 0 (still connected to the graph).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    kept = groups >= 0
    z, g = embeddings[kept].float(), groups[kept]
    size = z.shape[0]
    eye = torch.eye(size, dtype=torch.bool, device=z.device)
    positive = (g[:, None] == g[None, :]) & ~eye
    anchors = positive.any(dim=1)
    if not bool(anchors.any()):
        return embeddings.sum() * 0.0
    similarity = z @ z.T / temperature
    log_weights = torch.zeros_like(similarity)
    if negative_weights is not None:
        classes = g // groups_per_class
        weights = negative_weights.to(z)[classes[:, None], classes[None, :]]
        log_weights = torch.log(weights.clamp_min(1e-12))
    log_weights = log_weights.masked_fill(eye, float("-inf"))
    log_denominator = torch.logsumexp(similarity + log_weights, dim=1, keepdim=True)
    log_probability = similarity - log_denominator
    per_anchor = -(log_probability * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1)
    return per_anchor[anchors].mean()


def confusion_weights(labels: Tensor, predicted: Tensor, num_classes: int,
                      strength: float) -> Tensor:
    """Weights ``[K, K]`` of negatives by how often tiles of the row's class (``labels``, ``[N]``)
    were predicted as the column's (``predicted``, ``[N]``): with shares ``p`` of a class's
    mistakes, ``1 + strength * ((K - 1) * p - 1)`` off the diagonal (mean 1 over the other classes;
    ``strength`` 0 gives all ones, 1 puts all weight on the confused classes), 1 on it. A class
    never mistaken keeps ones."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    wrong = labels != predicted
    counts.index_put_((labels[wrong].long(), predicted[wrong].long()),
                      torch.ones(int(wrong.sum()), dtype=torch.float64), accumulate=True)
    totals = counts.sum(dim=1, keepdim=True)
    shares = torch.where(totals > 0, counts / totals.clamp_min(1), 1.0 / max(num_classes - 1, 1))
    weights = 1 + strength * ((num_classes - 1) * shares - 1)
    weights.fill_diagonal_(1.0)
    return weights.float()


def difficulty_subclasses(embeddings: Tensor, classes: Sequence[int], grades: Sequence[str],
                          k: int, generator: torch.Generator, iterations: int = 25) -> Tensor:
    """Each tile's subclass ``[N]`` (long): 0 easy, -1 noisy, and the hard tiles of each class
    (``classes``: a tile's class index) split into ``1..k`` by k-means on ``embeddings``
    ``[N, D]`` (seeded by ``generator``; a class with fewer than ``k`` hard tiles gives each its
    own subclass)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    classes_t = torch.as_tensor(list(classes))
    subclass = torch.zeros(len(grades), dtype=torch.long)
    subclass[torch.tensor([g == "noisy" for g in grades], dtype=torch.bool)] = EXCLUDED
    hard = torch.tensor([g == "hard" for g in grades], dtype=torch.bool)
    for cls in classes_t.unique().tolist():
        members = torch.nonzero(hard & (classes_t == cls))[:, 0]
        if len(members) == 0:
            continue
        subclass[members] = 1 + _kmeans(embeddings[members].float(), k, generator, iterations)
    return subclass


def _kmeans(points: Tensor, k: int, generator: torch.Generator, iterations: int) -> Tensor:
    """Cluster indices ``[N]`` in ``0..k-1`` (Lloyd's iterations from ``k`` seeded points)."""
    if len(points) <= k:
        return torch.arange(len(points))
    centres = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    assignment = torch.zeros(len(points), dtype=torch.long)
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        for cluster in range(k):
            members = points[assignment == cluster]
            if len(members):
                centres[cluster] = members.mean(dim=0)
    return assignment

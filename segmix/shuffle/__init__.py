"""Patch shuffle: the shared kernel of segmix (CellMix / SegMix style).

Every image of a batch is cut into a grid of ``ph x pw`` patches. A fraction ``fix_ratio`` of grid
positions (the same positions for the whole batch) stays untouched; every other position is filled
with a patch taken from another image (``batch``/``group``), optionally followed by a permutation of
positions inside each image (``random``), or only permuted inside its own image (``self``).

Sampling is separate from applying:

* :func:`sample_params` draws the permutation (small index tensors) from a ``torch.Generator``;
* :func:`apply_params` applies it to any ``[B, ..., H, W]`` tensor (images, masks, CAMs, features);
* :func:`invert_params` undoes it exactly (bit for bit);
* :func:`mix_labels` gives the area-weighted targets of the shuffled batch;
* :class:`PatchShuffle` does images, labels and masks in one call for training loops.

The op is one gather, with no Python loop over images, patches or groups: of contiguous patch
rows on the CPU (near the copy floor), of whole patches on CUDA (one index entry per patch; same
output bit for bit). It depends on torch only.

The package holds one module per job: :mod:`.params` (drawing), :mod:`.apply` (moving patches),
:mod:`.labels` (mixed targets) and :mod:`.layer` (:class:`PatchShuffle`); import from
``segmix.shuffle`` itself.
"""

from __future__ import annotations

from .apply import apply_params, invert_params
from .labels import area_weights, mix_labels, patch_counts
from .layer import PatchShuffle, ShuffleResult
from .params import (
    LABEL_MODES,
    MODES,
    PatchSize,
    ShuffleParams,
    fresh_generator,
    normalize_patch_size,
    patch_grid,
    sample_params,
    size_pair,
)

__all__ = [
    "MODES",
    "LABEL_MODES",
    "PatchSize",
    "ShuffleParams",
    "ShuffleResult",
    "PatchShuffle",
    "sample_params",
    "apply_params",
    "invert_params",
    "mix_labels",
    "area_weights",
    "patch_counts",
    "normalize_patch_size",
    "size_pair",
    "fresh_generator",
    "patch_grid",
]

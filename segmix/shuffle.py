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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

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

MODES: Tuple[str, ...] = ("batch", "group", "random", "self")
LABEL_MODES: Tuple[str, ...] = ("area", "presence")

PatchSize = Union[int, Sequence[int]]

_INT32_MAX = 2**31 - 1


def size_pair(value: PatchSize, name: str = "size") -> Tuple[int, int]:
    """``n`` or ``(height, width)`` -> a ``(height, width)`` tuple of positive ints (``name`` is
    the setting named in the error)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    if isinstance(value, int):
        size = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        size = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise TypeError(f"{name} entries must be ints, got {value!r}")
    if min(size) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return size  # type: ignore[return-value]


def normalize_patch_size(patch_size: PatchSize) -> Tuple[int, int]:
    """Return ``patch_size`` as a ``(height, width)`` tuple of positive ints."""
    return size_pair(patch_size, "patch_size")


def patch_grid(height: int, width: int, patch_size: PatchSize) -> Tuple[int, int]:
    """The ``(rows, columns)`` grid of ``patch_size`` patches on a ``height x width`` image; an
    error naming the sizes when the patches do not tile it exactly."""
    ph, pw = normalize_patch_size(patch_size)
    problems = []
    if height % ph:
        problems.append(f"height {height} is not a multiple of patch height {ph}")
    if width % pw:
        problems.append(f"width {width} is not a multiple of patch width {pw}")
    if problems:
        raise ValueError(
            "; ".join(problems)
            + ". The shuffle never crops silently: resize, crop or pad the images, or pick a patch"
            " size that divides the image size."
        )
    return height // ph, width // pw


def _check_ratio(fix_ratio: float) -> float:
    if isinstance(fix_ratio, bool) or not isinstance(fix_ratio, (int, float)):
        raise TypeError(f"fix_ratio must be a number in [0, 1], got {fix_ratio!r}")
    if not 0.0 <= float(fix_ratio) <= 1.0:
        raise ValueError(f"fix_ratio must be in [0, 1], got {fix_ratio}")
    return float(fix_ratio)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown shuffle mode {mode!r}; valid modes: {', '.join(MODES)}")
    return mode


def _check_label_mode(mode: str) -> str:
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; valid modes: {', '.join(LABEL_MODES)}")
    return mode


def _check_group_size(mode: str, batch_size: int, group_size: Optional[int]) -> Optional[int]:
    if mode != "group":
        return group_size
    if group_size is None:
        raise ValueError("mode 'group' needs group_size (the number of images that swap patches)")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if batch_size % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide the batch size {batch_size}; use a batch size"
            f" that is a multiple of {group_size} (e.g. drop_last=True in the DataLoader)"
        )
    return group_size


@dataclass(frozen=True)
class ShuffleParams:
    """One drawn shuffle: output patch ``(b, n)`` is a copy of input patch ``source[b, n]``.

    ``source`` holds flat patch indices ``b' * N + n'`` over the ``N = gh * gw`` grid positions of
    the batch (row-major), so it is a permutation of ``range(B * N)``. ``fixed`` marks the grid
    positions left untouched in every image.
    """

    source: Tensor
    fixed: Tensor
    height: int
    width: int
    patch_size: Tuple[int, int]
    mode: str

    @property
    def batch_size(self) -> int:
        return int(self.source.shape[0])

    @property
    def grid(self) -> Tuple[int, int]:
        return self.height // self.patch_size[0], self.width // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        """Grid positions per image (``N``)."""
        return int(self.source.shape[1])

    @property
    def source_image(self) -> Tensor:
        """``[B, N]``: the batch index each output patch comes from."""
        return torch.div(self.source, self.num_patches, rounding_mode="floor")

    @property
    def device(self) -> torch.device:
        return self.source.device

    def to(self, device: Union[str, torch.device]) -> "ShuffleParams":
        """The same params with their index tensors on ``device``."""
        if torch.device(device) == self.source.device:
            return self
        return ShuffleParams(
            self.source.to(device), self.fixed.to(device), self.height, self.width,
            self.patch_size, self.mode,
        )

    def inverse(self) -> "ShuffleParams":
        """Params of the inverse permutation: applying them undoes these params exactly."""
        flat = self.source.reshape(-1)
        inverse = torch.empty_like(flat)
        inverse[flat] = torch.arange(flat.numel(), device=flat.device)
        return ShuffleParams(
            inverse.view_as(self.source), self.fixed, self.height, self.width, self.patch_size,
            self.mode,
        )


def _generator_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def fresh_generator() -> torch.Generator:
    """A generator seeded from the OS, so that no global random state is read or advanced."""
    generator = torch.Generator()
    generator.seed()
    return generator


def _random_permutations(shape: Tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Independent uniform permutations of ``range(shape[-1])``, one per leading index."""
    keys = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return keys.argsort(dim=-1)


def sample_params(
    batch_size: int,
    height: int,
    width: int,
    *,
    patch_size: PatchSize,
    fix_ratio: float,
    mode: str = "batch",
    group_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> ShuffleParams:
    """Draw one shuffle of a ``batch_size x height x width`` batch.

    Args:
        patch_size: patch side (``int``) or ``(ph, pw)``. ``height`` and ``width`` must be multiples
            of it; otherwise ``ValueError`` is raised (images are never cropped silently).
        fix_ratio: fraction of grid positions kept in place in every image, in ``[0, 1]``
            (``round(fix_ratio * N)`` positions, drawn once for the whole batch).
        mode: ``batch`` (each moved position takes the patch at the same position of another image;
            every position draws its own batch permutation), ``group`` (the same inside consecutive
            groups of ``group_size`` images), ``random`` (``batch``, then the moved positions are
            permuted inside each image) or ``self`` (moved positions permuted inside each image only).
        generator: source of randomness; the draw happens on its device. ``None`` uses a fresh
            generator seeded by the OS (the global torch seed is neither read nor advanced).
        device: where the returned index tensors live (default: the generator's device).

    A moved position draws a uniform permutation, so it may keep its own patch (probability 1/B in
    ``batch`` mode). With ``batch_size == 1`` the ``batch`` mode is the identity.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    patch = normalize_patch_size(patch_size)
    gh, gw = patch_grid(height, width, patch)
    ratio = _check_ratio(fix_ratio)
    _check_mode(mode)
    group_size = _check_group_size(mode, batch_size, group_size)
    if generator is None:
        generator = fresh_generator()
    gen_device = _generator_device(generator)

    num_positions = gh * gw
    num_fixed = int(round(ratio * num_positions))
    fixed = torch.zeros(num_positions, dtype=torch.bool, device=gen_device)
    fixed[torch.randperm(num_positions, generator=generator, device=gen_device)[:num_fixed]] = True

    images = torch.arange(batch_size, device=gen_device)
    positions = torch.arange(num_positions, device=gen_device)
    # image_source[b, n]: the image whose patch at position n lands in image b (before any
    # within-image permutation).
    if mode in ("batch", "random"):
        image_source = _random_permutations((num_positions, batch_size), generator).T
    elif mode == "group":
        groups = batch_size // group_size
        offsets = (torch.arange(groups, device=gen_device) * group_size).view(1, groups, 1)
        within = _random_permutations((num_positions, groups, group_size), generator)
        image_source = (within + offsets).reshape(num_positions, batch_size).T
    else:  # self
        image_source = images.view(-1, 1).expand(batch_size, num_positions)
    image_source = torch.where(fixed.view(1, -1), images.view(-1, 1), image_source)

    position_source = positions.view(1, -1).expand(batch_size, num_positions)
    if mode in ("random", "self"):
        moved = (~fixed).nonzero().squeeze(1)
        position_source = position_source.clone()
        order = _random_permutations((batch_size, moved.numel()), generator)
        position_source[:, moved] = moved[order]
        image_source = image_source.gather(1, position_source)

    source = image_source * num_positions + position_source
    params = ShuffleParams(source.contiguous(), fixed, height, width, patch, mode)
    return params.to(device) if device is not None else params


def _check_tensor(x: Tensor, params: ShuffleParams, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"{name} must have shape [B, ..., H, W], got {tuple(x.shape)}")
    expected = (params.batch_size, params.height, params.width)
    got = (x.shape[0], x.shape[-2], x.shape[-1])
    if got != expected:
        raise ValueError(
            f"{name} has batch/height/width {got}, but the shuffle params were drawn for {expected}"
        )


def _row_index(params: ShuffleParams, channels: int, device: torch.device) -> Tensor:
    """Source row of every output row segment, for ``x`` viewed as ``[B*C*H*gw, pw]``.

    Output row segment ``(b, c, i, r, j)`` (patch row ``r`` of grid cell ``(i, j)``) copies source
    segment ``((sb * C + c) * H + si * ph + r) * gw + sj``.
    """
    params = params.to(device)
    batch, height = params.batch_size, params.height
    ph, _ = params.patch_size
    gh, gw = params.grid
    total_rows = batch * channels * height * gw
    dtype = torch.int32 if total_rows <= _INT32_MAX else torch.int64
    n = params.num_patches
    src = params.source.to(dtype)
    src_image = torch.div(src, n, rounding_mode="floor")
    src_pos = src - src_image * n
    src_i = torch.div(src_pos, gw, rounding_mode="floor")
    src_j = src_pos - src_i * gw
    base = ((src_image * (channels * height) + src_i * ph) * gw + src_j).view(batch, 1, gh, 1, gw)
    channel_offset = (torch.arange(channels, device=device, dtype=dtype) * (height * gw)).view(
        1, channels, 1, 1, 1
    )
    row_offset = (torch.arange(ph, device=device, dtype=dtype) * gw).view(1, 1, 1, ph, 1)
    return ((base + channel_offset) + row_offset).reshape(-1)


def _patch_view(x: Tensor, params: ShuffleParams, channels: int) -> Tensor:
    """The shuffled batch as a ``[B, C, gh, ph, gw, pw]`` view of whole gathered patches.

    The batch is laid out as a matrix of whole patches (``[B * N, C * ph * pw]``, one copy), whose
    rows ``params.source`` picks with one ``index_select`` (one index entry per patch, no index
    arithmetic); the permuted view lays them back. On CUDA this is 4-5x faster than the row gather,
    whose index has one entry per patch row (docs/benchmarks.md).
    """
    params = params.to(x.device)
    batch, n = params.batch_size, params.num_patches
    ph, pw = params.patch_size
    gh, gw = params.grid
    patches = (x.contiguous().view(batch, channels, gh, ph, gw, pw)
               .permute(0, 2, 4, 1, 3, 5).reshape(batch * n, channels * ph * pw))
    picked = patches.index_select(0, params.source.reshape(-1))
    return picked.view(batch, gh, gw, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)


def apply_params(x: Tensor, params: ShuffleParams, *, out: Optional[Tensor] = None) -> Tensor:
    """Apply a drawn shuffle to ``x`` of shape ``[B, ..., H, W]`` (any dtype, any channel count).

    Images, integer masks, CAMs and feature maps shuffled with the same ``params`` stay aligned.
    ``out`` (optional, contiguous, same shape and dtype as ``x``) receives the result; reusing a
    buffer avoids the page faults a fresh allocation of a large batch pays on CPU.
    """
    _check_tensor(x, params)
    pw = params.patch_size[1]
    channels = math.prod(x.shape[1:-2])
    if out is not None:
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must match x (shape {tuple(x.shape)}, {x.dtype}, {x.device}); got"
                f" {tuple(out.shape)}, {out.dtype}, {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
    if x.is_cuda:  # whole patches: one index entry per patch
        shuffled = _patch_view(x, params, channels)
        if out is None:
            return shuffled.reshape(x.shape)
        out.view(shuffled.shape).copy_(shuffled)
        return out
    rows = x.contiguous().view(-1, pw)  # CPU: one gather of patch rows, near the copy floor
    index = _row_index(params, channels, x.device)
    if out is None:
        return rows.index_select(0, index).view(x.shape)
    torch.index_select(rows, 0, index, out=out.view(-1, pw))
    return out


def invert_params(x: Tensor, params: ShuffleParams, *, out: Optional[Tensor] = None) -> Tensor:
    """Undo :func:`apply_params`: ``invert_params(apply_params(x, p), p)`` equals ``x`` exactly.

    Use it to bring per-patch outputs of a shuffled batch (e.g. CAMs) back to their own images.
    """
    _check_tensor(x, params)
    return apply_params(x, params.inverse(), out=out)


def _labels_as_matrix(labels: Tensor, batch_size: int, num_classes: int) -> Tensor:
    """Class indices ``[B]`` or multi-hot/soft ``[B, K]`` as a float ``[B, K]`` matrix."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if labels.dim() == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(
                f"class-index labels of shape [B] must be integers, got dtype {labels.dtype}"
            )
        if labels.shape[0] != batch_size:
            raise ValueError(f"labels have {labels.shape[0]} entries for a batch of {batch_size}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"class indices must be in [0, {num_classes}), got values in"
                f" [{int(labels.min())}, {int(labels.max())}]"
            )
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if labels.dim() == 2:
        if tuple(labels.shape) != (batch_size, num_classes):
            raise ValueError(
                f"multi-hot labels must have shape [B, K] = [{batch_size}, {num_classes}],"
                f" got {tuple(labels.shape)}"
            )
        return labels if labels.dtype.is_floating_point else labels.float()
    raise ValueError(
        f"labels must be class indices [B] or multi-hot [B, K], got shape {tuple(labels.shape)}"
    )


def patch_counts(params: ShuffleParams) -> Tensor:
    """``[B, B]`` float matrix: entry ``(b, s)`` counts the patches image ``b`` takes from ``s``."""
    batch, n = params.batch_size, params.num_patches
    counts = torch.zeros(batch, batch, device=params.device)
    return counts.scatter_add_(1, params.source_image, torch.ones(batch, n, device=params.device))


def area_weights(params: ShuffleParams) -> Tensor:
    """``[B, B]`` matrix: entry ``(b, s)`` is the fraction of image ``b``'s area taken from ``s``."""
    return patch_counts(params) / params.num_patches


def mix_labels(
    labels: Tensor, params: ShuffleParams, num_classes: int, *, mode: str = "area"
) -> Tensor:
    """Targets of the shuffled batch, as a float ``[B, K]`` tensor on the labels' device.

    * class indices ``[B]``: ``area`` gives the fraction of each image's area per class (sums to 1);
    * multi-hot or soft ``[B, K]``: ``area`` gives the area-weighted multi-hot, ``presence`` gives 1
      where any source image that contributes a patch has the class.
    """
    _check_label_mode(mode)
    matrix = _labels_as_matrix(labels, params.batch_size, num_classes)
    # Sum whole patch counts first and divide once: exact for multi-hot labels, so an area target
    # never exceeds 1 through rounding (N shares of 1/N can add up to 1 + eps).
    counted = patch_counts(params.to(matrix.device)).to(matrix.dtype) @ matrix
    if mode == "presence":
        return (counted > 0).to(matrix.dtype)
    return counted / params.num_patches


class ShuffleResult(NamedTuple):
    """What :class:`PatchShuffle` returns; unpacks as ``images, labels, masks, params``."""

    images: Tensor
    labels: Tensor
    masks: Optional[Tensor]
    params: Optional[ShuffleParams]


class PatchShuffle:
    """Shuffle images, labels and (optionally) masks of a batch in one call.

    ``patch_size`` and ``fix_ratio`` may be changed between epochs (e.g. by a
    :class:`segmix.curriculum.ShuffleCurriculum`); ``enabled = False`` switches the op off.
    Labels always come back as a float ``[B, K]`` target matrix, shuffled or not, so the loss sees
    one format. ``p`` is the probability that a given batch is shuffled at all.

    Example::

        op = PatchShuffle(patch_size=32, fix_ratio=0.5, mode="batch", num_classes=4)
        images, targets, masks, params = op(images, labels, masks)
    """

    def __init__(
        self,
        patch_size: PatchSize,
        fix_ratio: float,
        mode: str,
        num_classes: int,
        p: float = 1.0,
        group_size: Optional[int] = None,
        label_mode: str = "area",
    ) -> None:
        self.patch_size = patch_size
        self.fix_ratio = fix_ratio
        self.mode = _check_mode(mode)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.p = p
        self.group_size = group_size
        self.label_mode = _check_label_mode(label_mode)
        self.enabled = True

    @property
    def patch_size(self) -> Tuple[int, int]:
        return self._patch_size

    @patch_size.setter
    def patch_size(self, value: PatchSize) -> None:
        self._patch_size = normalize_patch_size(value)

    @property
    def fix_ratio(self) -> float:
        return self._fix_ratio

    @fix_ratio.setter
    def fix_ratio(self, value: float) -> None:
        self._fix_ratio = _check_ratio(value)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {value!r}")
        self._p = float(value)

    def __repr__(self) -> str:
        return (
            f"PatchShuffle(patch_size={self.patch_size}, fix_ratio={self.fix_ratio},"
            f" mode={self.mode!r}, num_classes={self.num_classes}, p={self.p},"
            f" group_size={self.group_size}, label_mode={self.label_mode!r},"
            f" enabled={self.enabled})"
        )

    def __call__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> ShuffleResult:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
        batch, _, height, width = images.shape
        targets = _labels_as_matrix(labels, batch, self.num_classes)
        if masks is not None:
            if not isinstance(masks, Tensor) or masks.dim() not in (3, 4):
                raise ValueError("masks must be a [B, H, W] or [B, C, H, W] tensor")
            if (masks.shape[0], masks.shape[-2], masks.shape[-1]) != (batch, height, width):
                raise ValueError(
                    f"masks have batch/height/width {(masks.shape[0], *masks.shape[-2:])}, images"
                    f" have {(batch, height, width)}"
                )
        if generator is None:
            generator = fresh_generator()
        skip = not self.enabled or (
            self.p < 1.0
            and torch.rand((), generator=generator, device=generator.device).item() >= self.p
        )
        if skip:
            return ShuffleResult(images, targets, masks, None)
        params = sample_params(
            batch, height, width, patch_size=self.patch_size, fix_ratio=self.fix_ratio,
            mode=self.mode, group_size=self.group_size, generator=generator,
            device=images.device,
        )
        mixed = mix_labels(targets, params, self.num_classes, mode=self.label_mode)
        shuffled_masks = apply_params(masks, params) if masks is not None else None
        return ShuffleResult(apply_params(images, params), mixed, shuffled_masks, params)

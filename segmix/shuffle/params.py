"""Shuffle parameters: the patch grid, the checks of every setting, and :func:`sample_params`, which
draws a shuffle (small index tensors) from a ``torch.Generator`` apart from any tensor it moves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["MODES", "LABEL_MODES", "PatchSize", "ShuffleParams", "sample_params", "size_pair",
           "normalize_patch_size", "patch_grid", "fresh_generator"]

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

"""The difficulty levels of the feedback curriculum: a (patch size, fix ratio) per level, from a
patch-size ladder (coarse to fine) and a fix-ratio ladder (easy to hard), with the default ladders
of an image size. Depends on nothing but the standard library and the kernel's size checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

from ..shuffle import size_pair

__all__ = ["CurriculumLadder", "CurriculumSetting", "PatchSizeEntry", "default_fix_ratios",
           "default_patch_sizes", "round_half_up"]

PatchSizeEntry = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class CurriculumSetting:
    """The shuffle setting for one epoch."""

    level: int
    patch_size: PatchSizeEntry
    fix_ratio: float


def default_patch_sizes(
    image_size: Union[int, Sequence[int]], base: int = 16, max_fraction: float = 0.5
) -> List[int]:
    """Square patch sizes for an image, coarse to fine.

    The sides that divide both image sides, are multiples of ``base`` and are at most
    ``max_fraction`` of the shorter side (so every image has at least a 2x2 grid at 0.5).
    224 px gives ``[112, 32, 16]``; 256 px gives ``[128, 64, 32, 16]``.
    """
    height, width = size_pair(image_size, "image_size")
    if base < 1:
        raise ValueError(f"base must be a positive int, got {base}")
    largest = int(min(height, width) * max_fraction)
    sizes = [
        s for s in range(base, largest + 1, base) if height % s == 0 and width % s == 0
    ]
    if not sizes:
        raise ValueError(
            f"no patch size divides the image size {height}x{width}, is a multiple of {base} and is"
            f" at most {max_fraction:g} of the shorter side; pass patch_sizes explicitly or resize"
            f" the images (e.g. to a multiple of {2 * base})"
        )
    return sorted(sizes, reverse=True)


def default_fix_ratios(start: float = 0.75, end: float = 0.25, steps: int = 8) -> List[float]:
    """``steps`` evenly spaced fix ratios from ``start`` (easy) to ``end`` (hard).

    The default start, 0.75, still moves one of the 4 positions of the coarsest default patch
    (half the image side); 0.9 there would keep all 4 and shuffle nothing."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps == 1:
        return [float(end)]
    return [round(start + (end - start) * i / (steps - 1), 6) for i in range(steps)]


def _ladder_index(level: int, levels: int, length: int) -> int:
    if levels == 1:
        return 0
    return int(math.floor(level * (length - 1) / (levels - 1) + 0.5))


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


class CurriculumLadder:
    """The difficulty levels of an image size: a patch-size ladder (coarse to fine; ints or
    ``(ph, pw)`` pairs that divide the image size) and a fix-ratio ladder (easy to hard, in [0, 1]),
    checked; the longer ladder moves one step per level, the shorter one is spread over them."""

    def __init__(self, image_size: Tuple[int, int], patch_sizes: Sequence[PatchSizeEntry],
                 fix_ratios: Sequence[float]) -> None:
        self.image_size = image_size
        self.patch_sizes = self._check_patch_sizes(patch_sizes)
        self.fix_ratios = self._check_ratios(fix_ratios)
        self.num_levels = max(len(self.patch_sizes), len(self.fix_ratios))

    def _check_patch_sizes(self, sizes: Sequence[PatchSizeEntry]) -> List[PatchSizeEntry]:
        height, width = self.image_size
        checked: List[PatchSizeEntry] = []
        if len(sizes) == 0:
            raise ValueError("patch_sizes must not be empty")
        for size in sizes:
            if isinstance(size, (list, tuple)) and len(size) == 2:
                ph, pw = int(size[0]), int(size[1])
                entry: PatchSizeEntry = (ph, pw)
            elif isinstance(size, int) and not isinstance(size, bool):
                ph = pw = size
                entry = size
            else:
                raise ValueError(f"patch size {size!r} must be an int or a (height, width) pair")
            if ph < 1 or pw < 1 or height % ph or width % pw:
                raise ValueError(
                    f"patch size {size!r} does not divide the image size {height}x{width}"
                )
            checked.append(entry)
        return checked

    @staticmethod
    def _check_ratios(ratios: Sequence[float]) -> List[float]:
        if len(ratios) == 0:
            raise ValueError("fix_ratios must not be empty")
        for ratio in ratios:
            if not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
                raise ValueError(f"fix ratio {ratio!r} is not in [0, 1]")
        return [float(r) for r in ratios]

    def setting_at(self, level: int) -> CurriculumSetting:
        """The setting of a difficulty level."""
        patch = self.patch_sizes[_ladder_index(level, self.num_levels, len(self.patch_sizes))]
        ratio = self.fix_ratios[_ladder_index(level, self.num_levels, len(self.fix_ratios))]
        return CurriculumSetting(level=level, patch_size=patch, fix_ratio=ratio)

    def idle_levels(self) -> List[str]:
        """The levels whose fix ratio keeps every grid position (they shuffle nothing)."""
        height, width = self.image_size
        idle = []
        for level in range(self.num_levels):
            setting = self.setting_at(level)
            ph, pw = (setting.patch_size, setting.patch_size) if isinstance(setting.patch_size, int) \
                else setting.patch_size
            positions = (height // ph) * (width // pw)
            if int(round(setting.fix_ratio * positions)) >= positions:
                idle.append(f"level {level} (patch {setting.patch_size}, ratio {setting.fix_ratio})")
        return idle

"""Feedback curriculum for the patch shuffle: which (patch size, fix ratio) to use each epoch.

Difficulty is a single integer *level* from 0 (easiest: coarse patches, many fixed positions) to
``L - 1`` (hardest: fine patches, few fixed positions). Two ladders give the setting of a level:
``patch_sizes`` (coarse to fine) and ``fix_ratios`` (easy to hard, i.e. decreasing); the longer
ladder moves one step per level, the shorter one is spread evenly over the levels.

Strategies (decided **once per epoch** from an epoch-level loss, by :meth:`ShuffleCurriculum.step`):

* ``fixed``: stay at ``start_level``;
* ``linear``: a plan by epoch, rising evenly (rounded half up) from level 0 after warm-up to the
  hardest level at the last epoch;
* ``loss_hold``: if the loss is below the threshold, one level harder and ``threshold *=
  threshold_decay``; otherwise follow the plan (never stepping back below the current level);
* ``loss_back``: if the loss is below the threshold, one level harder (threshold decays likewise);
  otherwise one level easier.

The threshold defaults to the loss of the first epoch after warm-up (decision ``calibrate``; with
no warm-up, epoch 0).
State (level, threshold, next epoch, history) round-trips through :meth:`state_dict` so a resumed
run continues exactly. Depends on nothing but the standard library.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .shuffle import size_pair

__all__ = [
    "STRATEGIES",
    "CurriculumSetting",
    "ShuffleCurriculum",
    "default_patch_sizes",
    "default_fix_ratios",
]

STRATEGIES: Tuple[str, ...] = ("fixed", "linear", "loss_hold", "loss_back")

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


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


class ShuffleCurriculum:
    """Controller of the shuffle's (patch size, fix ratio) over epochs.

    Args:
        image_size: training image size, ``int`` or ``(height, width)``.
        strategy: one of :data:`STRATEGIES`.
        total_epochs: length of the run; needed by the plan of ``linear`` and ``loss_hold``.
        warmup_epochs: epochs at level 0 before any plan or feedback.
        patch_sizes: patch ladder, coarse to fine (default :func:`default_patch_sizes`). Entries
            are ints or ``(ph, pw)`` pairs and must divide the image size.
        fix_ratios: ratio ladder, easy to hard (default :func:`default_fix_ratios`).
        base: patch sizes are multiples of it (default ladder only).
        loss_threshold: feedback threshold; ``None`` calibrates it from the first loss after warm-up.
        threshold_decay: factor applied to the threshold after each step harder (1 disables).
        start_level: the level that ``fixed`` holds; the other strategies start at level 0.

    Use::

        curriculum = ShuffleCurriculum(224, "loss_hold", total_epochs=30)
        for epoch in range(30):
            op.patch_size, op.fix_ratio = curriculum.setting.patch_size, curriculum.setting.fix_ratio
            loss = train_one_epoch(op)           # mean training loss of the epoch
            curriculum.step(epoch, loss)
    """

    def __init__(
        self,
        image_size: Union[int, Sequence[int]],
        strategy: str = "loss_hold",
        *,
        total_epochs: Optional[int] = None,
        warmup_epochs: int = 0,
        patch_sizes: Optional[Sequence[PatchSizeEntry]] = None,
        fix_ratios: Optional[Sequence[float]] = None,
        base: int = 16,
        loss_threshold: Optional[float] = None,
        threshold_decay: float = 0.933,
        start_level: int = 0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown curriculum strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        self.image_size = size_pair(image_size, "image_size")
        self.strategy = strategy
        if strategy in ("linear", "loss_hold"):
            if not isinstance(total_epochs, int) or total_epochs < 1:
                raise ValueError(
                    f"strategy {strategy!r} follows a plan over the run: total_epochs must be a"
                    f" positive int, got {total_epochs!r}"
                )
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a non-negative int, got {warmup_epochs!r}")
        self.total_epochs = total_epochs
        self.warmup_epochs = warmup_epochs
        self.patch_sizes = self._check_patch_sizes(
            default_patch_sizes(self.image_size, base) if patch_sizes is None else patch_sizes
        )
        self.fix_ratios = self._check_ratios(
            default_fix_ratios() if fix_ratios is None else fix_ratios
        )
        if loss_threshold is not None and not (
            isinstance(loss_threshold, (int, float)) and math.isfinite(loss_threshold)
        ):
            raise ValueError(f"loss_threshold must be a finite number or None, got {loss_threshold!r}")
        if not 0 < threshold_decay <= 1:
            raise ValueError(f"threshold_decay must be in (0, 1], got {threshold_decay}")
        self.initial_threshold = None if loss_threshold is None else float(loss_threshold)
        self.threshold_decay = float(threshold_decay)
        self.num_levels = max(len(self.patch_sizes), len(self.fix_ratios))
        if not isinstance(start_level, int) or not 0 <= start_level < self.num_levels:
            raise ValueError(f"start_level must be in [0, {self.num_levels}), got {start_level!r}")
        self.start_level = start_level
        self._warn_idle_levels()
        self.level = start_level if strategy == "fixed" else 0
        self.threshold = self.initial_threshold
        self.next_epoch = 0
        self.history: List[Dict[str, Any]] = []

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

    def _warn_idle_levels(self) -> None:
        """Warn about levels whose fix ratio keeps every grid position: they shuffle nothing."""
        height, width = self.image_size
        idle = []
        for level in range(self.num_levels):
            setting = self.setting_at(level)
            ph, pw = (setting.patch_size, setting.patch_size) if isinstance(setting.patch_size, int) \
                else setting.patch_size
            positions = (height // ph) * (width // pw)
            if int(round(setting.fix_ratio * positions)) >= positions:
                idle.append(f"level {level} (patch {setting.patch_size}, ratio {setting.fix_ratio})")
        if idle:
            warnings.warn(f"{', '.join(idle)} keep every grid position of a {height}x{width} image:"
                          " these levels shuffle nothing. Use smaller patches or lower fix ratios.",
                          stacklevel=3)

    # -- settings ---------------------------------------------------------------------------
    def setting_at(self, level: int) -> CurriculumSetting:
        """The setting of a difficulty level."""
        patch = self.patch_sizes[_ladder_index(level, self.num_levels, len(self.patch_sizes))]
        ratio = self.fix_ratios[_ladder_index(level, self.num_levels, len(self.fix_ratios))]
        return CurriculumSetting(level=level, patch_size=patch, fix_ratio=ratio)

    @property
    def setting(self) -> CurriculumSetting:
        """The setting for the coming epoch (``next_epoch``)."""
        return self.setting_at(self.level)

    @property
    def hardest_level(self) -> int:
        return self.num_levels - 1

    def planned_level(self, epoch: int) -> int:
        """Level of the ``linear`` plan at ``epoch``: 0 in warm-up, hardest at the last epoch."""
        if self.total_epochs is None:
            raise ValueError("the plan needs total_epochs")
        if epoch < self.warmup_epochs:
            return 0
        span = self.total_epochs - self.warmup_epochs - 1
        if span <= 0:
            return self.hardest_level
        progress = min(epoch - self.warmup_epochs, span) / span
        return _round_half_up(progress * self.hardest_level)

    # -- feedback ---------------------------------------------------------------------------
    def step(self, epoch: int, loss: float) -> CurriculumSetting:
        """Record the mean training loss of ``epoch`` and return the setting for ``epoch + 1``."""
        if epoch != self.next_epoch:
            raise ValueError(
                f"step(epoch={epoch}) but the curriculum expects epoch {self.next_epoch}: call step"
                " once per epoch, in order (after a resume, load_state_dict first)"
            )
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise ValueError(f"loss of epoch {epoch} must be a finite number, got {loss!r}")
        loss = float(loss)
        used = self.setting
        threshold_used = self.threshold
        next_epoch = epoch + 1
        decision = self._decide(next_epoch, loss)
        new = self.setting
        self.history.append(
            {
                "epoch": epoch,
                "loss": loss,
                "level": used.level,
                "patch_size": used.patch_size,
                "fix_ratio": used.fix_ratio,
                "threshold": threshold_used,
                "decision": decision,
                "next_level": new.level,
                "next_patch_size": new.patch_size,
                "next_fix_ratio": new.fix_ratio,
            }
        )
        self.next_epoch = next_epoch
        return new

    def _decide(self, next_epoch: int, loss: float) -> str:
        """Move ``self.level`` for ``next_epoch`` and return the name of the decision."""
        if self.strategy == "fixed":
            return "fixed"
        if next_epoch < self.warmup_epochs:
            self.level = 0
            return "warmup"
        if self.strategy == "linear":
            self.level = self.planned_level(next_epoch)
            return "plan"
        if self.threshold is None:
            # A warm-up epoch's loss (a model still learning the clean task) is no reference: a
            # threshold taken from it lets every later epoch step harder.
            decision = "warmup" if next_epoch <= self.warmup_epochs else "calibrate"
            if decision == "calibrate":
                self.threshold = loss
            if self.strategy == "loss_hold":
                self.level = max(self.level, self.planned_level(next_epoch))
            return decision
        if loss < self.threshold:
            self.threshold *= self.threshold_decay
            if self.level < self.hardest_level:
                self.level += 1
                return "harder"
            return "hold"
        if self.strategy == "loss_hold":
            self.level = max(self.level, self.planned_level(next_epoch))
            return "plan"
        if self.level > 0:
            self.level -= 1
            return "easier"
        return "hold"

    # -- persistence ------------------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "strategy": self.strategy,
            "total_epochs": self.total_epochs,
            "warmup_epochs": self.warmup_epochs,
            "patch_sizes": [list(p) if isinstance(p, tuple) else p for p in self.patch_sizes],
            "fix_ratios": list(self.fix_ratios),
            "loss_threshold": self.initial_threshold,
            "threshold_decay": self.threshold_decay,
            "start_level": self.start_level,
        }

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run exactly (plain Python values)."""
        return {
            "config": self._config(),
            "level": self.level,
            "threshold": self.threshold,
            "next_epoch": self.next_epoch,
            "history": [dict(row) for row in self.history],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` from a curriculum with the same settings."""
        missing = {"config", "level", "threshold", "next_epoch", "history"} - set(state)
        if missing:
            raise ValueError(f"curriculum state lacks {sorted(missing)}")
        saved, current = state["config"], self._config()
        differing = sorted(k for k in current if saved.get(k) != current[k])
        if differing:
            details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current[k]!r}" for k in differing)
            raise ValueError(f"curriculum state was saved with other settings ({details})")
        if not 0 <= state["level"] < self.num_levels:
            raise ValueError(f"saved level {state['level']} is outside [0, {self.num_levels})")
        self.level = int(state["level"])
        self.threshold = state["threshold"]
        self.next_epoch = int(state["next_epoch"])
        self.history = [dict(row) for row in state["history"]]

    def __repr__(self) -> str:
        return (
            f"ShuffleCurriculum(strategy={self.strategy!r}, level={self.level}/{self.hardest_level},"
            f" setting={self.setting}, next_epoch={self.next_epoch})"
        )

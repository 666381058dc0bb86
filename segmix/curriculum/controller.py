"""The controller of the feedback curriculum: which level (hence which patch size and fix ratio)
each epoch uses, decided once per epoch from its loss (see :mod:`segmix.curriculum`)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..shuffle import size_pair
from .ladder import (
    CurriculumLadder,
    CurriculumSetting,
    PatchSizeEntry,
    default_fix_ratios,
    default_patch_sizes,
    round_half_up,
)

__all__ = ["STRATEGIES", "ShuffleCurriculum"]

STRATEGIES: Tuple[str, ...] = ("fixed", "linear", "loss_hold", "loss_back")


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
        self.ladder = CurriculumLadder(
            self.image_size,
            default_patch_sizes(self.image_size, base) if patch_sizes is None else patch_sizes,
            default_fix_ratios() if fix_ratios is None else fix_ratios,
        )
        if loss_threshold is not None and not (
            isinstance(loss_threshold, (int, float)) and math.isfinite(loss_threshold)
        ):
            raise ValueError(f"loss_threshold must be a finite number or None, got {loss_threshold!r}")
        if not 0 < threshold_decay <= 1:
            raise ValueError(f"threshold_decay must be in (0, 1], got {threshold_decay}")
        self.initial_threshold = None if loss_threshold is None else float(loss_threshold)
        self.threshold_decay = float(threshold_decay)
        if not isinstance(start_level, int) or not 0 <= start_level < self.num_levels:
            raise ValueError(f"start_level must be in [0, {self.num_levels}), got {start_level!r}")
        self.start_level = start_level
        self._warn_idle_levels()
        self.level = start_level if strategy == "fixed" else 0
        self.threshold = self.initial_threshold
        self.next_epoch = 0
        self.history: List[Dict[str, Any]] = []

    def _warn_idle_levels(self) -> None:
        """Warn about levels whose fix ratio keeps every grid position: they shuffle nothing."""
        height, width = self.image_size
        idle = self.ladder.idle_levels()
        if idle:
            warnings.warn(f"{', '.join(idle)} keep every grid position of a {height}x{width} image:"
                          " these levels shuffle nothing. Use smaller patches or lower fix ratios.",
                          stacklevel=3)

    # -- settings ---------------------------------------------------------------------------
    @property
    def patch_sizes(self) -> List[PatchSizeEntry]:
        return self.ladder.patch_sizes

    @property
    def fix_ratios(self) -> List[float]:
        return self.ladder.fix_ratios

    @property
    def num_levels(self) -> int:
        return self.ladder.num_levels

    def setting_at(self, level: int) -> CurriculumSetting:
        """The setting of a difficulty level."""
        return self.ladder.setting_at(level)

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
        return round_half_up(progress * self.hardest_level)

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

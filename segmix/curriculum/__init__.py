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

Two parts: the levels (:mod:`.ladder`) and the controller that moves between them
(:mod:`.controller`); both are imported from here.
"""

from .controller import STRATEGIES, ShuffleCurriculum
from .ladder import CurriculumLadder, CurriculumSetting, default_fix_ratios, default_patch_sizes

__all__ = [
    "STRATEGIES",
    "CurriculumLadder",
    "CurriculumSetting",
    "ShuffleCurriculum",
    "default_patch_sizes",
    "default_fix_ratios",
]

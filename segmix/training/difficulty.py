"""Difficulty memory (DASC's dynamic memory units): every train tile's prediction for its own label,
remembered epoch by epoch, and the grade it earns over the last epochs.

After each epoch the classifier reads every train tile once more, unmixed and without augmentation,
and the memory keeps, per tile: the probability of its label (the least probable of its labels for a
tile with several), whether the top class is one of its labels, and its loss. Over the last
``window`` epochs a tile is

- **noisy** when it was never right and its label's mean probability stayed below
  ``noisy_probability``: consistently and confidently wrong, a label to check;
- **easy** when it was always right with a mean probability of at least ``easy_probability``;
- **hard** otherwise.

:func:`grade_weights` turns the grades into sampling factors (hard tiles drawn more often, noisy ones
less or never). Only torch and NumPy; the stage decides when to record, what to write and when the
grades start to count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["GRADES", "DifficultyMemory", "DifficultySettings", "grade_weights", "label_evidence"]

GRADES = ("easy", "hard", "noisy")


@dataclass(frozen=True)
class DifficultySettings:
    """How the last ``window`` epochs grade a tile (see the module docstring)."""

    window: int = 3
    easy_probability: float = 0.7
    noisy_probability: float = 0.2

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 epoch, got {self.window}")
        if not 0 <= self.noisy_probability <= self.easy_probability <= 1:
            raise ValueError("0 <= noisy_probability <= easy_probability <= 1 expected, got"
                             f" {self.noisy_probability} and {self.easy_probability}")


def label_evidence(probabilities: Tensor, targets: Tensor) -> Dict[str, Tensor]:
    """Per tile (``probabilities`` and multi-hot ``targets`` ``[N, K]``): ``probability``, the least
    probable of its labels; ``top``, its most probable class; ``correct``, whether that is one of
    its labels; ``loss``, the negative log of ``probability``."""
    labelled = targets.bool()
    probability = torch.where(labelled, probabilities, torch.ones_like(probabilities)).amin(dim=1)
    top = probabilities.argmax(dim=1)
    correct = labelled.gather(1, top[:, None])[:, 0]
    loss = -torch.log(probability.clamp_min(1e-7))
    return {"probability": probability.float(), "top": top, "correct": correct,
            "loss": loss.float()}


def grade_weights(grades: Sequence[str], hard_weight: float, noisy_weight: float) -> Tensor:
    """Per-tile sampling factors ``[N]`` (float64) of ``grades``: easy 1, hard ``hard_weight``,
    noisy ``noisy_weight`` (0 leaves noisy tiles out)."""
    if hard_weight < 0 or noisy_weight < 0:
        raise ValueError(f"hard_weight and noisy_weight must be >= 0, got {hard_weight} and"
                         f" {noisy_weight}")
    factor = {"easy": 1.0, "hard": float(hard_weight), "noisy": float(noisy_weight)}
    return torch.tensor([factor[grade] for grade in grades], dtype=torch.float64)


class DifficultyMemory:
    """The per-epoch label evidence of ``num_tiles`` train tiles, with a checkpointable state."""

    def __init__(self, num_tiles: int) -> None:
        self.num_tiles = num_tiles
        self.epochs: List[Dict[str, np.ndarray]] = []

    def record(self, evidence: Dict[str, Tensor]) -> None:
        """Remember one epoch's :func:`label_evidence` of every tile, in dataset order."""
        epoch = {key: value.detach().cpu().numpy().copy() for key, value in evidence.items()}
        if any(len(value) != self.num_tiles for value in epoch.values()):
            raise ValueError(f"expected the evidence of {self.num_tiles} tiles, got"
                             f" {[len(v) for v in epoch.values()]}")
        self.epochs.append(epoch)

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and plain values only (checkpoints are read with ``weights_only``)."""
        return {"num_tiles": self.num_tiles,
                "epochs": [{k: torch.from_numpy(v.copy()) for k, v in e.items()}
                           for e in self.epochs]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["num_tiles"] != self.num_tiles:
            raise ValueError(f"the memory holds {state['num_tiles']} tiles, the train split"
                             f" {self.num_tiles}")
        self.epochs = [{k: v.numpy().copy() for k, v in e.items()} for e in state["epochs"]]

    def table(self, settings: DifficultySettings) -> List[Dict[str, Any]]:
        """Per tile, over the last ``settings.window`` recorded epochs: ``difficulty`` (a grade of
        :data:`GRADES`), ``mean_probability``, ``times_correct``, ``epochs``, ``mean_loss``,
        ``last_probability`` and ``predicted`` (the last epoch's top class index)."""
        if not self.epochs:
            raise ValueError("no epoch recorded yet")
        recent = self.epochs[-settings.window:]
        probability = np.stack([e["probability"] for e in recent])
        correct = np.stack([e["correct"] for e in recent]).astype(int)
        loss = np.stack([e["loss"] for e in recent])
        mean_probability = probability.mean(axis=0)
        times_correct = correct.sum(axis=0)
        rows = []
        for tile in range(self.num_tiles):
            if times_correct[tile] == 0 and mean_probability[tile] < settings.noisy_probability:
                grade = "noisy"
            elif (times_correct[tile] == len(recent)
                  and mean_probability[tile] >= settings.easy_probability):
                grade = "easy"
            else:
                grade = "hard"
            rows.append({"difficulty": grade,
                         "mean_probability": float(mean_probability[tile]),
                         "times_correct": int(times_correct[tile]), "epochs": len(recent),
                         "mean_loss": float(loss[:, tile].mean()),
                         "last_probability": float(probability[-1, tile]),
                         "predicted": int(recent[-1]["top"][tile])})
        return rows

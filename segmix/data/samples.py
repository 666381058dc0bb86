"""What a dataset reader produces: samples with image-level labels, and the problems it found."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import SegmixError

__all__ = ["Sample", "Problem", "DatasetError", "ReadResult", "resolve_problems"]


@dataclass(frozen=True)
class Sample:
    """One tile: its image, its image-level classes (0-based over the configured classes), an
    optional ground-truth mask file, and where it was listed (``labels.csv line 5``; for errors)."""

    image: Path
    labels: Tuple[int, ...]
    mask: Optional[Path] = None
    listed_at: str = field(default="", compare=False)


@dataclass(frozen=True)
class Problem:
    """A file that cannot be used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DatasetError(SegmixError, ValueError):
    """A dataset that cannot be read as configured; the message lists the files and problems."""


@dataclass
class ReadResult:
    samples: List[Sample]
    problems: List[Problem] = field(default_factory=list)


def resolve_problems(result: ReadResult, source: str, on_bad_file: str) -> List[Sample]:
    """Raise on problems (``on_bad_file="raise"``) or warn with a count and keep the good samples
    (``"skip"``). An empty dataset is always an error."""
    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
    problems = result.problems
    if problems and on_bad_file == "raise":
        raise DatasetError(
            f"{source}: {len(problems)} bad file(s):\n" + _listing(problems)
            + "\nFix them, or set data.on_bad_file=skip to leave them out with a warning."
        )
    if problems:
        warnings.warn(
            f"{source}: skipped {len(problems)} bad file(s), kept {len(result.samples)}:\n"
            + _listing(problems),
            stacklevel=2,
        )
    if not result.samples:
        raise DatasetError(f"{source}: the dataset is empty (no usable sample was found)")
    return result.samples


def _listing(problems: Sequence[Problem], limit: int = 20) -> str:
    lines = [f"  {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)

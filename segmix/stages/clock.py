"""The wall time a pipeline stage took over all its invocations, interruptions included.

A stage that runs for hours may be stopped (a session ends, a job is pre-empted) and continued by
the next invocation. :class:`StageClock` keeps the running total in a JSON file in the stage folder,
refreshed every ``interval`` seconds by a background thread, so a killed invocation loses at most
``interval`` seconds of the count; the next invocation adds its own time to the stored total.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Optional

from ..io import atomic_write_text, read_json

__all__ = ["StageClock", "recorded_seconds"]


def recorded_seconds(path: Path) -> Optional[float]:
    """The total a clock file holds (``None`` if there is none)."""
    recorded = read_json(path)
    return None if recorded is None else float(recorded["seconds"])


class StageClock:
    """Context manager timing one invocation of a stage and adding it to the total in ``path``.

    Time recorded by earlier invocations that did not finish (``"finished": false``) is carried
    over, unless ``fresh`` (the stage starts again from scratch); a finished record is not (the
    stage is being computed again).
    """

    def __init__(self, path: Path, *, fresh: bool = False, interval: float = 30.0) -> None:
        self.path, self.interval = path, interval
        earlier = None if fresh else read_json(path)
        unfinished = earlier is not None and not earlier.get("finished", True)
        self.carried = float(earlier["seconds"]) if unfinished else 0.0
        self._stop = threading.Event()
        self._start: float = 0.0
        self._end: Optional[float] = None

    @property
    def seconds(self) -> float:
        """The total: carried time plus this invocation's (so far, or until the block ended)."""
        end = time.perf_counter() if self._end is None else self._end
        return self.carried + end - self._start

    def _write(self, finished: bool) -> None:
        atomic_write_text(self.path, json.dumps({"seconds": self.seconds, "finished": finished}))

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(finished=False)

    def __enter__(self) -> "StageClock":
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, error_type, *_) -> None:
        self._end = time.perf_counter()
        self._stop.set()
        self._thread.join()
        self._write(finished=error_type is None)

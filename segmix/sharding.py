"""Per-item stages across processes: each takes a disjoint, deterministic share of the items.

A stage that works item by item (``predict``, ``tile``, ``cams``, ``localise``, ``pseudo-masks``)
reads its share from one place, :func:`current_shard`:

* under ``torchrun`` (``WORLD_SIZE`` > 1), rank ``r`` of ``n`` takes items ``r, r + n, ...``;
  the ranks meet at a barrier (a gloo process group, whatever the device) once their shares are
  done, and rank 0 writes the merged outputs;
* without ``torchrun``, the config key ``shard`` (``i/n``, e.g. from a job array:
  ``--set shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``, or ``shard=slurm``, which reads
  those variables) does the same with no process group: each shard leaves a record in
  ``shards/<i>-of-<n>.json`` and the shard that finds every record present writes the merged
  outputs (a later run of any shard, or of the whole, writes them too).

Every item's outputs are written by the process that computes them, atomically; the merged CSVs
and ``summary.json`` are built from the items' outputs on disk, so they are the same whatever
the number of processes. A share that died is taken up by the next run, with any number of
processes: items whose outputs exist are read, not computed again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from tqdm import tqdm

from .config import ConfigError
from .io import read_json, write_json
from .runtime import launch

__all__ = ["Shard", "ShareReport", "Skipped", "current_shard", "check_shard", "join", "settle",
           "barrier", "wait_for_file", "run_share", "finish_share", "SHARDS_FOLDER",
           "BARRIER_TIMEOUT"]

SHARDS_FOLDER = "shards"
# How long torchrun's ranks wait at the end for the slowest one (a share of whole slides can take
# hours); the barrier is gloo's, on the CPU, whatever device the models run on.
BARRIER_TIMEOUT = timedelta(hours=48)

Item = TypeVar("Item")


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count`` (``count`` 1: the whole run); ``torchrun``: the processes
    are torchrun's ranks and meet at a barrier."""

    index: int = 0
    count: int = 1
    torchrun: bool = False

    def take(self, items: Sequence[Item]) -> List[int]:
        """The positions in ``items`` this process computes: every ``count``-th from ``index``."""
        return list(range(self.index, len(items), self.count))

    def take_batches(self, count: int, batch_size: int) -> List[Tuple[int, List[int]]]:
        """This process's batches of positions ``0 .. count - 1`` as ``(batch number,
        positions)``: the positions cut into batches of ``batch_size`` in order, every
        ``count``-th batch from ``index``. A stage that batches its items shares whole batches, so
        every item meets the same batch as in one process (batched kernels may round differently
        with other companions)."""
        batches = [list(range(start, min(start + batch_size, count)))
                   for start in range(0, count, batch_size)]
        return list(enumerate(batches))[self.index::self.count]

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"


def _parse(value: Any, key: str) -> Tuple[int, int]:
    if value == "slurm":
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                 "SLURM_ARRAY_TASK_COUNT")
        missing = [name for name in names if name not in os.environ]
        if missing:
            raise ConfigError(f"{key}=slurm reads the variables a SLURM job array sets, and"
                              f" {', '.join(missing)} are not set: run it as an array job"
                              " (sbatch --array=0-N), or give the shard as i/n")
        task, low, high, count = (int(os.environ[name]) for name in names)
        if high - low + 1 != count:
            raise ConfigError(f"{key}=slurm needs a contiguous array (--array={low}-{high} has"
                              f" {count} tasks, not {high - low + 1}): give the shard as i/n")
        return task - low, count
    parts = str(value).split("/")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ConfigError(f"{key} must be i/n (this process's share, 0 <= i < n, e.g. 0/4) or"
                          f" slurm, got {value!r}")
    index, count = int(parts[0]), int(parts[1])
    if not 0 <= index < count:
        raise ConfigError(f"{key}: the share i/n needs 0 <= i < n, got {value!r}")
    return index, count


def check_shard(value: Any, key: str = "shard") -> None:
    """Refuse a ``shard`` setting that is not ``null``, ``i/n`` or ``slurm``, or that is set under
    ``torchrun`` (whose ranks are the shards)."""
    if value is None:
        return
    _parse(value, key)
    if launch().world_size > 1:
        raise ConfigError(f"{key} is for runs without torchrun; under torchrun each rank takes its"
                          " share by itself: leave it unset")


def current_shard(value: Any = None) -> Shard:
    """This process's share: torchrun's rank, else the ``shard`` setting ``value``, else the
    whole."""
    rank, world_size, _ = launch()
    if world_size > 1:
        return Shard(rank, world_size, torchrun=True)
    if value is None:
        return Shard()
    return Shard(*_parse(value, "shard"))


class Skipped(str):
    """What a stage's ``compute`` returns for an item it left out (the reason, e.g. an unreadable
    file), so that the merged outputs leave it out too."""


@dataclass
class ShareReport:
    """What the processes did, as the merging process sees it: the positions computed in this run
    (``computed``), the items left out with their reasons (``skipped``: position -> reason) and
    one row per process (``ranks``: rank, items in its share, computed, seconds)."""

    computed: List[int] = field(default_factory=list)
    skipped: Dict[int, str] = field(default_factory=dict)
    ranks: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The wall time of the slowest process."""
        return max((float(rank["seconds"]) for rank in self.ranks), default=0.0)


def join(shard: Shard) -> None:
    """Under torchrun: join the process group (gloo, for the barriers; models keep their device,
    each rank on its own GPU); call it before loading a model. A process that joined already
    (an earlier stage of the same command) waits at a barrier instead, so that rank 0 has written
    what that stage merged before any rank goes on."""
    if not shard.torchrun:
        return
    import atexit

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(launch().local_rank % torch.cuda.device_count())
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def settle(shard: Shard, merged: Path, what: str) -> None:
    """Wait until a stage's shares are merged (``merged``: the file the merge writes last, ``what``
    it is): under torchrun at a barrier (rank 0 merges before it gets there), in a job array until
    the file is there."""
    if shard.torchrun:
        join(shard)
    elif shard.count > 1:
        wait_for_file(merged, what)


def barrier() -> None:
    """Under torchrun (after :func:`join`): wait for every rank."""
    import torch.distributed as dist

    dist.barrier()


def wait_for_file(path: Path, what: str, poll_seconds: float = 10.0) -> None:
    """In a job array: wait until another share has written ``path`` (``what`` it is, for the log),
    up to :data:`BARRIER_TIMEOUT`; a ``TimeoutError`` names it after that."""
    deadline = time.monotonic() + BARRIER_TIMEOUT.total_seconds()
    if not path.is_file():
        print(f"waiting for {what}: {path}", flush=True)
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} ({what}) did not appear within {BARRIER_TIMEOUT}")
        time.sleep(poll_seconds)


def run_share(items: Sequence[Item], compute: Callable[[Item, Any], Any], shard: Shard,
              output_dir: Path, *, desc: str, unit: str) -> Optional[ShareReport]:
    """Run ``compute(item, progress_bar)`` on this process's share of ``items``: it writes the
    item's outputs unless they exist and returns True (computed now), False (already there) or a
    :class:`Skipped` reason. Returns the merged :class:`ShareReport` on the process that writes
    the merged outputs once every share is done, ``None`` on the others. The stage calls
    :func:`join` first."""
    start = time.perf_counter()
    mine = shard.take(items)
    computed, skipped = [], {}
    label = desc if shard.count == 1 else f"{desc} [{shard.index + 1}/{shard.count}]"
    bar = tqdm([items[i] for i in mine], desc=label, unit=unit)
    for position, item in zip(mine, bar):
        outcome = compute(item, bar)
        if isinstance(outcome, Skipped):
            skipped[position] = str(outcome)
        elif outcome:
            computed.append(position)
    return finish_share(shard, output_dir, items=len(mine), computed=computed, skipped=skipped,
                        seconds=time.perf_counter() - start)


def finish_share(shard: Shard, output_dir: Path, *, items: int, computed: List[int],
                 skipped: Dict[int, str], seconds: float) -> Optional[ShareReport]:
    """Record this process's share (``items`` in it; the positions it ``computed`` and
    ``skipped``, in the whole list) and wait for the others as :func:`run_share` does; returns
    the merged report on the process that writes the merged outputs, ``None`` on the others."""
    record = {"rank": shard.index, "items": items, "computed": computed,
              "skipped": {str(k): v for k, v in skipped.items()}, "seconds": seconds}
    if shard.count == 1:
        return _report([record])
    write_json(output_dir / SHARDS_FOLDER / f"{shard.name}.json", record)
    if shard.torchrun:
        barrier()
        if shard.index != 0:
            return None
    records = [read_json(output_dir / SHARDS_FOLDER / f"{i}-of-{shard.count}.json")
               for i in range(shard.count)]
    if any(record is None for record in records):
        waiting = [i for i, record in enumerate(records) if record is None]
        print(f"shard {shard.index}/{shard.count} done; shard(s) {waiting} still to finish (the"
              " last one to end writes the merged outputs)", flush=True)
        return None
    return _report(records)


def _report(records: List[Dict[str, Any]]) -> ShareReport:
    report = ShareReport()
    for record in records:
        report.computed += record["computed"]
        report.skipped.update({int(k): v for k, v in record["skipped"].items()})
        report.ranks.append({"rank": record["rank"], "items": record["items"],
                             "computed": len(record["computed"]), "seconds": record["seconds"]})
    report.computed.sort()
    return report

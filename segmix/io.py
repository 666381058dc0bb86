"""Safe file writes: outputs appear whole or not at all (temp file in the same folder + rename),
one run writes into a folder at a time (:func:`folder_lock`), and the temporaries a killed run
left behind are removed by the next one (:func:`remove_stale_temporaries`).

Every temporary segmix makes is named ``.<name>.<random>.tmp[<suffix>]`` (:func:`is_temporary`),
so readers skip them and a later run recognises them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Union

from .errors import SegmixError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_npz", "write_csv",
           "read_csv_rows", "read_json", "write_json", "temporary_dir", "is_temporary",
           "give_usual_mode", "remove_stale_temporaries", "folder_lock", "FolderLockedError",
           "LOCK_FILE"]

TEMP_MARK = ".tmp"  # every temporary's name starts with "." and holds this
LOCK_FILE = ".segmix.lock"

PathLike = Union[str, "os.PathLike[str]"]


def give_usual_mode(path: PathLike) -> None:
    """Give ``path`` the mode ``open()`` / ``mkdir()`` would give it (0o666 / 0o777 less the
    process umask): temporaries are private, the outputs they become are not."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def is_temporary(path: PathLike) -> bool:
    """Whether ``path`` is a temporary file or folder of segmix's (hidden, ``.tmp`` in its name)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


def temporary_dir(beside: PathLike, name: str) -> Path:
    """A new empty temporary folder in the folder of ``beside`` (same file system: renames work),
    named so that :func:`remove_stale_temporaries` recognises it."""
    folder = Path(beside).parent
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TEMP_MARK, dir=folder))


def remove_stale_temporaries(folder: PathLike) -> None:
    """Remove the temporaries that a killed run left anywhere under ``folder``. Safe only while
    this process holds :func:`folder_lock` on ``folder`` (nobody else writes there)."""
    stale = [path for path in Path(folder).rglob(f".*{TEMP_MARK}*") if is_temporary(path)]
    for path in sorted(stale, key=lambda p: len(p.parts)):  # a folder before what it held
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)  # missing: it was inside a folder removed above


class FolderLockedError(SegmixError, RuntimeError):
    """An output folder another segmix process is writing into."""


_HELD: Set[Path] = set()  # folders this process holds (a nested call for one of them reuses it)


@contextmanager
def folder_lock(folder: PathLike, share: Optional[str] = None) -> Iterator[None]:
    """Hold ``folder`` for this process: a second segmix run into it is refused at once with a
    :class:`FolderLockedError` naming the holder (pid, host). The lock is an OS file lock
    (``filelock``), so a killed process never blocks the next run. Stale temporaries under
    ``folder`` are removed once it is held. Re-entrant within a process.

    ``share`` (e.g. ``"1-of-4"``): hold only that share of a run whose processes write into the
    folder together (:mod:`segmix.sharding`); the same share twice is refused, and temporaries are
    left alone (another share may be writing them; a later whole run removes what is stale)."""
    from filelock import FileLock, Timeout

    folder = Path(folder).resolve()
    if folder in _HELD:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    name = LOCK_FILE if share is None else f"{LOCK_FILE}.{share}"
    lock = FileLock(str(folder / name), timeout=0)
    holder = folder / f"{name}.holder"
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text(encoding="utf-8").strip() if holder.is_file() else "unknown"
        what = "" if share is None else f" (share {share})"
        raise FolderLockedError(f"{folder}{what} is in use by another segmix run ({who}); wait for"
                                " it to finish, or use another --output-dir") from None
    _HELD.add(folder)
    try:
        atomic_write_text(holder, f"pid {os.getpid()} on host {socket.gethostname()}")
        if share is None:
            remove_stale_temporaries(folder)
        yield
    finally:
        holder.unlink(missing_ok=True)
        _HELD.discard(folder)
        lock.release()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was. The
    temporary name keeps the suffix of ``path`` so writers that look at it (OpenCV) still work.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        give_usual_mode(tmp)  # mkstemp makes it private; outputs get the usual mode
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: PathLike, **arrays: Any) -> None:
    """Write arrays as a compressed ``.npz`` atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def write_csv(path: PathLike, rows: Sequence[Dict[str, Any]]) -> None:
    """Write a list of dicts as CSV atomically; the columns are the union of the keys, in order."""
    columns: Dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: PathLike) -> Optional[Any]:
    """The JSON document at ``path``, or ``None`` if there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: PathLike, document: Any) -> None:
    """Write ``document`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(document, indent=2))


def read_csv_rows(path: PathLike) -> List[Dict[str, str]]:
    """The rows of a CSV file with a header, as dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

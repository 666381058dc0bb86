"""Atomic file writes: outputs appear whole or not at all (temp file in the same folder + rename)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_npz", "write_csv",
           "read_csv_rows", "read_json", "write_json"]

PathLike = Union[str, "os.PathLike[str]"]


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
        os.chmod(tmp, _file_mode())  # mkstemp makes it private; outputs get the usual mode
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

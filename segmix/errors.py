"""The one class of user errors: bad input, config values or files, named in the message.

The ``segmix`` command prints a :class:`SegmixError` as one line without a traceback; any other
exception is a bug and keeps its traceback. The subclasses also derive from the built-in class a
caller would expect (``ValueError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["SegmixError"]


class SegmixError(Exception):
    """A run that cannot go on as asked; the message names the key or file and what is allowed."""

"""Errors that come back from Ray tasks, said the way the ledger and the CLI keep them."""

from __future__ import annotations

import re

import ray.exceptions

__all__ = ["one_line", "format_task_error"]

#: Ray colours the remote traceback for terminals; the ledger keeps plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(text: str) -> str:
    """The last non-empty line of ``text`` (where a traceback says what went wrong)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def format_task_error(exc: ray.exceptions.RayTaskError) -> str:
    """The worker's traceback, as the ledger keeps it for `dmsweep status`.

    The exception Ray hands back has lost its ``__traceback__`` in transit; its
    text keeps the remote frames under a first line naming the task, pid and
    node. That line is kept, the frames get Python's usual header, and the
    ``^^^^`` column markers (noise outside a terminal) go.
    """
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    if not lines:
        return repr(exc)
    frames = [line for line in lines[1:] if line.strip().strip("^~")]
    if frames and not frames[0].startswith("Traceback"):
        frames.insert(0, "Traceback (most recent call last):")
    return "\n".join([lines[0], *frames])

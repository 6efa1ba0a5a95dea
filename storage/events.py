"""A JSON-lines event log in the store (block started, completed, failed, retried), for post-mortems.

Only the driver appends to it, one line per event, flushed as written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["EventLog", "read_events", "EVENTS_FILE"]

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Append-only writer; use as a context manager."""

    def __init__(self, store_path: str | Path) -> None:
        self._path = Path(store_path) / EVENTS_FILE
        self._file: TextIO | None = None

    def __enter__(self) -> EventLog:
        self._file = self._path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            raise RuntimeError("EventLog used outside its context")
        record = {"time": time.time(), "event": event, **fields}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()


def read_events(store_path: str | Path) -> Iterator[dict[str, Any]]:
    """Every event in order; a torn last line (a crash mid-write) is skipped."""
    path = Path(store_path) / EVENTS_FILE
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue

"""The driver's event log (block started, completed, failed, retried), for post-mortems.

Object storage has no append, so the log is a series of immutable objects in
the store's state area, ``events/<first event's time>-<writer>-<part>.jsonl``,
each a few events as JSON lines. The writer keeps the events of the last
``flush_s`` seconds (at most ``flush_every``) and writes them as one object;
closing it writes the rest. A driver killed with SIGKILL loses at most those
last few seconds of its log; the ledger, not the log, says what is complete.
Readers list the objects and read them in name order, which is time order.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from storage.location import StoreLocation, store_location

__all__ = ["EventLog", "read_events", "EVENTS_PREFIX"]

#: Where the event objects are in the state area.
EVENTS_PREFIX = "events/"


class EventLog:
    """The driver's log writer; use as a context manager.

    Parameters
    ----------
    store : the store (path, URI or location).
    flush_s : longest time an event waits before it is written.
    flush_every : most events kept before they are written.
    clock : wall-clock seconds (event times and flush deadlines).
    """

    def __init__(
        self,
        store: str | Path | StoreLocation,
        *,
        flush_s: float = 5.0,
        flush_every: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._objects = store_location(store).state
        self._flush_s = flush_s
        self._flush_every = flush_every
        self._clock = clock
        self._writer = uuid.uuid4().hex[:8]
        self._part = 0
        self._pending: list[str] = []
        self._oldest = 0.0
        self._open = False

    def __enter__(self) -> EventLog:
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self._open = False

    def write(self, event: str, **fields: Any) -> None:
        """Log one event; it is written within ``flush_s`` seconds."""
        if not self._open:
            raise RuntimeError("EventLog used outside its context")
        now = self._clock()
        if not self._pending:
            self._oldest = now
        self._pending.append(json.dumps({"time": now, "event": event, **fields}, default=str))
        if len(self._pending) >= self._flush_every or now - self._oldest >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the events kept so far as one object."""
        if not self._pending:
            return
        self._part += 1
        key = f"{EVENTS_PREFIX}{int(self._oldest * 1e6):017d}-{self._writer}-{self._part:06d}.jsonl"
        self._objects.put(key, ("\n".join(self._pending) + "\n").encode())
        self._pending = []


def read_events(store: str | Path | StoreLocation) -> Iterator[dict[str, Any]]:
    """Every event, in time order; a line that does not parse is skipped."""
    objects = store_location(store).state
    for key in objects.list(EVENTS_PREFIX):
        blob = objects.get(key)
        if blob is None:
            continue
        lines = []
        for line in blob.data.decode("utf-8", errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        yield from lines

"""One driver per store: a lease object with a heartbeat, swapped by compare-and-swap.

The lease is ``lease.json`` in the store's state area. It is only ever written
conditionally (storage.objects), so two drivers can never both believe they
hold it, on a disk or on S3:

* **take it**: create it if there is none (If-None-Match); replace a stale or
  unreadable one on the version that was read (If-Match). Losing either race
  means another driver got it: refused.
* **renew it** (the heartbeat): replace it on the version this driver last
  wrote. A refusal means another driver took it over: the lease is lost and
  this driver stops.
* **release it**: replace it, on the version this driver wrote, by a "released"
  object that any driver may take.

A driver takes the lease when none exists or the holder's heartbeat is older
than ``ttl_s``; a second driver is refused while it is fresh. Heartbeats are
wall-clock times (drivers on different hosts compare them), read from an
injectable ``clock`` so that tests can age a lease without waiting. A server
that ignores conditional writes is refused before the lease is taken.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.errors import LeaseHeldError
from storage.location import StoreLocation, store_location
from storage.objects import Blob, Objects

__all__ = ["LeaseInfo", "Lease", "LEASE_FILE", "read_lease", "clear_lease"]

LEASE_FILE = "lease.json"
#: What a released lease object holds: no holder, free to take.
_RELEASED = b'{"released": true}'


@dataclass(frozen=True)
class LeaseInfo:
    """The lease as written in the store."""

    holder: str
    host: str
    pid: int
    heartbeat: float
    ttl_s: float

    def is_fresh(self, now: float) -> bool:
        return now - self.heartbeat < self.ttl_s


def _parse(blob: Blob | None) -> LeaseInfo | None:
    """A lease that does not parse (written by something else) counts as none: it may be taken over."""
    if blob is None:
        return None
    try:
        return LeaseInfo(**json.loads(blob.data))
    except (ValueError, TypeError):
        return None


def read_lease(store: str | Path | StoreLocation) -> LeaseInfo | None:
    """The lease currently written in the store, or None if there is none (or it is unreadable)."""
    return _parse(store_location(store).state.get(LEASE_FILE))


def clear_lease(store: str | Path | StoreLocation, holder: str) -> bool:
    """Release the lease of ``holder`` (a driver known to be dead); True if it held it until now."""
    objects = store_location(store).state
    blob = objects.get(LEASE_FILE)
    info = _parse(blob)
    if blob is None or info is None or info.holder != holder:
        return False
    return objects.put_if_match(LEASE_FILE, _RELEASED, blob.etag) is not None


class Lease:
    """The driver's lease on a store; use as a context manager.

    Parameters
    ----------
    store : the store (path, URI or location).
    ttl_s : a heartbeat older than this is stale.
    heartbeat_s : how often the heartbeat is renewed (default ttl/4).
    clock : wall-clock seconds (``time.time``); heartbeats are written and aged with it.
    """

    def __init__(
        self,
        store: str | Path | StoreLocation,
        *,
        ttl_s: float = 30.0,
        heartbeat_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._objects: Objects = store_location(store).state
        self._ttl_s = ttl_s
        self._heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl_s / 4
        self._clock = clock
        self._holder = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str:
        """This lease's unique id, as written in the lease object."""
        return self._holder

    def _payload(self) -> bytes:
        info = LeaseInfo(self._holder, socket.gethostname(), os.getpid(), self._clock(), self._ttl_s)
        return json.dumps(asdict(info)).encode()

    @property
    def lost(self) -> bool:
        """True once another driver has taken the lease over (this driver must stop)."""
        return self._lost.is_set()

    def acquire(self, *, heartbeat: bool = True) -> None:
        """Take the lease, or raise :class:`LeaseHeldError` while another holder's is fresh.

        ``heartbeat=False`` takes it without the renewing thread (the caller
        calls :meth:`renew`), for tests that drive time themselves.

        Raises
        ------
        LeaseHeldError
            Another driver holds a fresh lease, or took it at the same moment.
        ConditionalWritesError
            The object store ignores conditional writes.
        """
        self._objects.check_conditional_writes()
        blob = self._objects.get(LEASE_FILE)
        current = _parse(blob)
        now = self._clock()
        if current is not None and current.holder != self._holder and current.is_fresh(now):
            age = now - current.heartbeat
            raise LeaseHeldError(
                f"another driver (pid {current.pid} on {current.host}) holds the lease on this store, "
                f"heartbeat {age:.0f}s ago; it is taken over after {current.ttl_s:.0f}s without one"
            )
        if blob is None:
            etag = self._objects.put_if_absent(LEASE_FILE, self._payload())
        else:
            etag = self._objects.put_if_match(LEASE_FILE, self._payload(), blob.etag)
        if etag is None:
            raise LeaseHeldError("another driver took the lease on this store at the same moment")
        self._etag = etag
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="dmsweep-lease", daemon=True)
            self._thread.start()

    def renew(self) -> bool:
        """One heartbeat: replace the lease on the version this driver wrote. True if still held."""
        if self._etag is None or self._lost.is_set():
            return False
        etag = self._objects.put_if_match(LEASE_FILE, self._payload(), self._etag)
        if etag is None:
            # Not the version we wrote: another driver took it (or our last write's answer was lost
            # on the way back; then the object still names us and is kept).
            current = self._objects.get(LEASE_FILE)
            info = _parse(current)
            if current is None or info is None or info.holder != self._holder:
                self._lost.set()
                return False
            etag = self._objects.put_if_match(LEASE_FILE, self._payload(), current.etag)
            if etag is None:
                self._lost.set()
                return False
        self._etag = etag
        return True

    def confirm(self) -> bool:
        """Read the lease object: True while it names this driver; False (and :attr:`lost`) once another took it.

        The driver calls this before each ledger write, so that a driver whose
        lease was taken over between two heartbeats (its clock stepped back,
        say) ledgers nothing more: the writes are fenced by the lease, not only
        by the next renewal.
        """
        if self._etag is None or self._lost.is_set():
            return False
        info = _parse(self._objects.get(LEASE_FILE))
        if info is None or info.holder != self._holder:
            self._lost.set()
            return False
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                if not self.renew():
                    return
            except Exception:  # a failed heartbeat is retried; a lease not renewed in time goes stale
                continue

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._etag is not None and not self._lost.is_set():
            # Replaced, not deleted: a conditional replace of the version this driver wrote
            # can never remove a lease another driver has taken meanwhile.
            self._objects.put_if_match(LEASE_FILE, _RELEASED, self._etag)
        self._etag = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


"""One driver per store: a lease file with a heartbeat.

A driver takes the lease when none exists or the holder's heartbeat is older
than ``ttl_s``; while it runs, a background thread renews the heartbeat. A
second driver is refused while the lease is fresh and takes it over once it is
stale (the first driver died without releasing it).

Heartbeats are wall-clock times (drivers on different hosts compare them), read
from an injectable ``clock`` so that tests can age a lease without waiting.
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

__all__ = ["LeaseInfo", "Lease", "LEASE_FILE", "read_lease"]

LEASE_FILE = "lease.json"


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


def read_lease(store_path: str | Path) -> LeaseInfo | None:
    """The lease currently written in the store, or None if there is none.

    A file that does not parse as a lease (written by something else) counts as
    no lease: a driver may take it over, which is the recovery such a file needs.
    """
    path = Path(store_path) / LEASE_FILE
    try:
        return LeaseInfo(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None


def _write_atomic(path: Path, info: LeaseInfo) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)


class Lease:
    """The driver's lease on a store; use as a context manager.

    Parameters
    ----------
    store_path : the store's directory.
    ttl_s : a heartbeat older than this is stale.
    heartbeat_s : how often the heartbeat is renewed (default ttl/4).
    clock : wall-clock seconds (``time.time``); heartbeats are written and aged with it.
    """

    def __init__(
        self,
        store_path: str | Path,
        *,
        ttl_s: float = 30.0,
        heartbeat_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(store_path) / LEASE_FILE
        self._ttl_s = ttl_s
        self._heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl_s / 4
        self._clock = clock
        self._holder = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str:
        """This lease's unique id, as written in the lease file."""
        return self._holder

    def _info(self) -> LeaseInfo:
        return LeaseInfo(self._holder, socket.gethostname(), os.getpid(), self._clock(), self._ttl_s)

    @property
    def lost(self) -> bool:
        """True once another driver has taken the lease over (this driver must stop)."""
        return self._lost.is_set()

    def acquire(self, *, heartbeat: bool = True) -> None:
        """Take the lease, or raise :class:`LeaseHeldError` while another holder's is fresh.

        ``heartbeat=False`` takes it without the renewing thread (the caller
        calls :meth:`renew`), for tests that drive time themselves.
        """
        current = read_lease(self._path.parent)
        now = self._clock()
        if current is not None and current.holder != self._holder and current.is_fresh(now):
            age = now - current.heartbeat
            raise LeaseHeldError(
                f"another driver (pid {current.pid} on {current.host}) holds the lease on this store, "
                f"heartbeat {age:.0f}s ago; it is taken over after {current.ttl_s:.0f}s without one"
            )
        _write_atomic(self._path, self._info())
        # Two drivers that both saw a stale lease race on the rename; the last
        # writer wins and the other sees someone else's holder here.
        confirmed = read_lease(self._path.parent)
        if confirmed is None or confirmed.holder != self._holder:
            raise LeaseHeldError("another driver took the lease on this store at the same moment")
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name="dmsweep-lease", daemon=True)
            self._thread.start()

    def renew(self) -> bool:
        """One heartbeat: rewrite the lease, unless another driver took it (then it is lost). True if held."""
        current = read_lease(self._path.parent)
        if current is not None and current.holder != self._holder:
            self._lost.set()
            return False
        _write_atomic(self._path, self._info())
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            if not self.renew():
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_lease(self._path.parent)
        if current is not None and current.holder == self._holder:
            self._path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

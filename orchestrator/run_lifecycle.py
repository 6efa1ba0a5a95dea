"""What surrounds one run of the driver: the reasons it stops early, the signals that ask it to, the lease's heartbeat.

A run stops early for two kinds of reason, both recorded in one
:class:`RunStop` that the driver reads on every pass of its loop:

* a **request** (SIGTERM from a scheduler that preempts or requeues the job,
  SIGINT from Ctrl-C): the driver stops handing out blocks, ledgers the
  receipts of the blocks already running for a bounded time, and returns a
  result that says it was stopped (the CLI exits 3: resumable as it is);
* a **fault** of the store's environment (disk full, permission denied,
  read-only) seen by a worker, the driver or the lease's heartbeat: the
  driver stops the same way and raises it (the CLI exits 4: resumable once
  fixed).

While stopping, SIGINT (Ctrl-C again) raises :class:`KeyboardInterrupt` at
once; a repeated SIGTERM (schedulers may signal every process of a job, and
again) changes nothing.

The rest is what makes a run end cleanly when the store's filesystem refuses
writes: the lease released once (and before Ray shuts down), the event log
closed without hiding the error that ended the run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import NoReturn

from storage.errors import DmsweepError, EnvironmentFault
from storage.events import EventLog
from storage.lease import Lease

__all__ = [
    "RunStop", "stop_on_signals", "LeaseHeartbeat", "STOP_SIGNALS", "ReleaseOnce", "event_log_closer",
    "raise_environment_fault",
]

#: The signals that ask a run to stop cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStop:
    """Why the run should stop before its work is done; the first reason given wins.

    Safe to set from a signal handler (main thread) and from other threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested: str | None = None
        self._fault: DmsweepError | None = None

    def request(self, reason: str) -> None:
        """Ask for a clean stop (``reason``: what asked, e.g. ``"SIGTERM"``)."""
        with self._lock:
            if self._requested is None and self._fault is None:
                self._requested = reason

    def fail(self, fault: DmsweepError) -> None:
        """Stop because of ``fault`` (an :class:`EnvironmentFault`, or a lost heartbeat); raised after the drain."""
        with self._lock:
            if self._fault is None:
                self._fault = fault

    @property
    def requested(self) -> str | None:
        return self._requested

    @property
    def fault(self) -> DmsweepError | None:
        return self._fault

    @property
    def stopping(self) -> bool:
        return self._requested is not None or self._fault is not None

    @property
    def reason(self) -> str:
        """One phrase for logs and events: the signal's name or the fault's message."""
        if self._fault is not None:
            return str(self._fault)
        return self._requested or ""


@contextmanager
def stop_on_signals(stop: RunStop) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT ask ``stop`` for a clean stop; SIGINT while stopping interrupts at once.

    Outside the main thread (where Python cannot install handlers) nothing is
    installed and signals keep their usual effect. The previous handlers (Ray
    installs its own SIGTERM handler in ``ray.init``) come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt("SIGINT while stopping")
            return  # a scheduler's repeated SIGTERM: the stop is under way, bounded by its drain
        stop.request(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class LeaseHeartbeat:
    """Renews a lease taken with ``acquire(heartbeat=False)`` every ``every_s`` seconds, on a thread.

    The lease's own heartbeat thread cannot tell anyone when a renewal fails;
    this one turns a write the store refuses (disk full, read-only...) into a
    fault on ``stop``, so that the driver stops with one line instead of a
    thread's traceback while its lease silently goes stale.

    Parameters
    ----------
    lease : the acquired lease.
    store : the store's path or URI (for the fault's message).
    every_s : seconds between renewals.
    stop : where a failed renewal is reported.
    """

    def __init__(self, lease: Lease, *, store: str, every_s: float, stop: RunStop) -> None:
        self._lease = lease
        self._store = store
        self._every_s = every_s
        self._stop = stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="dmsweep-lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(self._every_s):
            try:
                if not self._lease.renew():
                    return  # taken over: the driver sees lease.lost
            except OSError as exc:
                fault = EnvironmentFault.classify(exc, store=self._store, action="renewing the lease")
                self._stop.fail(fault or DmsweepError(f"renewing the lease of {self._store} failed: {exc}"))
                return

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class ReleaseOnce:
    """Releases a lease the first time it is called or its context exits."""

    def __init__(self, lease: Lease) -> None:
        self._lease: Lease | None = lease

    def __call__(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            lease.release()
        except OSError:
            pass  # a read-only store keeps it: it goes stale after its TTL (at once for a resume on this host)

    def __enter__(self) -> ReleaseOnce:
        return self

    def __exit__(self, *exc: object) -> None:
        self()


#: An ``ExitStack.push`` callback: (exception type, exception, traceback) -> suppress?
ExitCallback = Callable[[type[BaseException] | None, BaseException | None, TracebackType | None], bool]


def event_log_closer(events: EventLog, store: str) -> ExitCallback:
    """An exit callback closing the event log; a write it could not flush then is an environment fault.

    Closing flushes what a failed write left buffered: on a full disk that
    fails again. When the run is already ending with an error (most likely the
    same full disk), that error is the one to report.
    """

    def close(exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        try:
            events.__exit__(exc_type, exc, tb)
        except OSError as error:
            if exc_type is None:
                raise_environment_fault(error, store, "closing the event log")
        return False

    return close


def raise_environment_fault(exc: OSError, store: str, action: str) -> NoReturn:
    """Raise ``exc`` as the environment fault it is, or as it is when it is none."""
    fault = EnvironmentFault.classify(exc, store=store, action=action)
    if fault is None:
        raise exc
    raise fault from exc

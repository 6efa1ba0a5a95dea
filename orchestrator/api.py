"""The library API behind the CLI: what a notebook calls to init, run, extend, verify a sweep."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from orchestrator.driver import SweepDriver
from orchestrator.run_options import DriverOptions, RunResult
from orchestrator.progress import SweepProgress
from orchestrator.ray_runtime import check_requested_cluster, cluster_requested, ray_for_this_process
from orchestrator.run_lifecycle import (
    LeaseHeartbeat,
    ReleaseOnce,
    RunStop,
    event_log_closer,
    raise_environment_fault,
    stop_on_signals,
)
from orchestrator.spec import SweepSpec, load_spec
from storage.status import StoreStatus, store_status
from orchestrator.sweep_store_setup import check_store_matches, open_store_for_spec, stored_spec
from storage.errors import InputError, LeaseHeldError, StoreMismatchError
from storage.events import EventLog
from storage.lease import Lease, clear_lease, read_lease
from storage.location import STATE_SUFFIX, StoreLocation, is_uri, store_location
from storage.processes import pid_alive
from storage.sweep_store import StoreProbe, SweepStore, probe_store
from storage.verify import VerifyReport, verify_store

__all__ = [
    "load_spec",
    "init_sweep",
    "run_sweep",
    "extend_sweep",
    "verify_sweep",
    "store_status",
    "StoreStatus",
    "RunResult",
    "VerifyReport",
]


def _absolute_store(spec: SweepSpec, *, cluster: bool) -> SweepSpec:
    """Resolve a relative store path against the working directory; refuse one on a cluster.

    An ``s3://`` store is where it is for every node.
    """
    update: dict[str, str] = {}
    if is_uri(spec.store):
        update["store"] = store_location(spec.store).uri  # validated here, before anything is written
    else:
        path = Path(spec.store).expanduser()
        if not path.is_absolute():
            if cluster:
                raise InputError(
                    f"store {spec.store!r} is a relative path; on a cluster give an absolute path on a filesystem "
                    "every node mounts, or an s3:// URI"
                )
            path = Path.cwd() / path
        update["store"] = str(path)
    if spec.masks_file is not None and not is_uri(spec.masks_file):
        masks = Path(spec.masks_file).expanduser()
        if not masks.is_absolute():
            if cluster:
                raise InputError(f"masks_file {spec.masks_file!r} is a relative path; on a cluster give an absolute shared path")
            masks = Path.cwd() / masks
        update["masks_file"] = str(masks)
    return spec.model_copy(update=update)


def _clear_abandoned_lease(store: StoreLocation) -> bool:
    """Remove a lease whose holder is a dead process on this host; True if one was removed.

    A driver killed with SIGKILL leaves its lease fresh for up to ``ttl_s``;
    on the host that held it the driver's death is certain, so a resume there
    need not wait for the heartbeat to go stale. Leases from other hosts are
    only ever taken over once stale.
    """
    info = read_lease(store)
    if info is None or info.host != socket.gethostname() or info.pid == os.getpid() or pid_alive(info.pid):
        return False
    return clear_lease(store, info.holder)


def _lease(store: StoreLocation, *, ttl_s: float) -> Lease:
    """The store's lease, ready to enter: refused while another live driver holds it."""
    _clear_abandoned_lease(store)
    return Lease(store, ttl_s=ttl_s)


def _open_or_create(spec: SweepSpec) -> SweepStore:
    """The spec's store, created if absent; a store another driver created at the same moment is used as it is.

    Two drivers started at once on a new store both try to create it: the
    store's init claim lets one, the other waits for that one's store (or finds
    it there already) and opens it. That is no fault: the lease then decides
    which of them runs.
    """
    location = store_location(spec.store)
    try:
        return open_store_for_spec(spec)[0]
    except LeaseHeldError:
        # Its creator holds the init claim: a store is there within seconds.
        _wait_for_store(location)
    except (OSError, StoreMismatchError) as exc:
        if probe_store(location) is not StoreProbe.STORE:
            if isinstance(exc, OSError):
                raise_environment_fault(exc, location.uri, "creating the store")
            raise
    return open_store_for_spec(spec)[0]


def _wait_for_store(location: StoreLocation, *, timeout_s: float = 120.0) -> None:
    """Wait while another process creates the store; LeaseHeldError if it has not within ``timeout_s``."""
    deadline, pause = time.monotonic() + timeout_s, threading.Event()
    while probe_store(location) is not StoreProbe.STORE:
        if time.monotonic() > deadline:
            raise LeaseHeldError(f"another process has been creating the store at {location.uri!r} for over "
                                 f"{timeout_s:.0f}s; if it is gone, remove {location.uri}{STATE_SUFFIX}/creating.json")
        pause.wait(0.2)


def init_sweep(spec: SweepSpec) -> SweepStore:
    """Create the spec's store (or check that the existing one matches it)."""
    return _open_or_create(_absolute_store(spec, cluster=False))


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    progress: bool = True,
    options: DriverOptions | None = None,
    lease_ttl_s: float = 30.0,
) -> RunResult:
    """Init the store if needed, then run or resume the sweep on Ray until every block is done.

    SIGTERM or SIGINT (when called from the main thread) stops the run cleanly:
    no more blocks are handed out, the running blocks' receipts are ledgered
    for up to ``options.drain_timeout_s``, the lease is released, and the
    result says ``stopped``. SIGINT while stopping interrupts at once.

    Parameters
    ----------
    spec : the sweep.
    address : a running Ray cluster (``ray://`` or ``HOST:PORT`` or ``auto``); ``None``
        joins the Ray already initialised in this process, or starts a local one.
    progress : show the live progress view on stderr.
    options : scheduling options.
    lease_ttl_s : seconds without a heartbeat after which this driver's lease may be taken over.

    Raises
    ------
    InputError : a bad spec or store, another driver's lease, an address no Ray answers at.
    EnvironmentFault : the store refused a write (disk full, permission, read-only); resumable once fixed.
    """
    spec = _absolute_store(spec, cluster=cluster_requested(address))
    check_requested_cluster(address)  # an unreachable address is bad input: refused before the store is made
    stop = RunStop()
    with ExitStack() as stack:
        # From here on a signal stops the run cleanly (one during the store's creation lets it finish first).
        stack.enter_context(stop_on_signals(stop))
        store = _open_or_create(spec)
        where = store.location.uri
        try:
            lease = _lease(store.location, ttl_s=lease_ttl_s)
            lease.acquire(heartbeat=False)
        except OSError as exc:
            raise_environment_fault(exc, where, "taking the lease")
        release = stack.enter_context(ReleaseOnce(lease))  # if Ray never comes up
        stack.enter_context(ray_for_this_process(address))
        # The lease goes before Ray does: shutting down a Ray whose head died can take long.
        stack.callback(release)
        stack.enter_context(stop_on_signals(stop))  # again: ray.init installed its own SIGTERM handler
        stack.enter_context(LeaseHeartbeat(lease, store=where, every_s=lease_ttl_s / 4, stop=stop))
        # Checked again under the lease: another driver may have changed it meanwhile.
        store = store.reopen()
        check_store_matches(store, spec)
        try:
            if spec.num_models > store.num_models:
                store.resize(spec)
                store = store.reopen()
            events = EventLog(store.location).__enter__()
        except OSError as exc:
            raise_environment_fault(exc, where, "growing the store or opening its event log")
        stack.push(event_log_closer(events, where))
        view = stack.enter_context(SweepProgress()) if progress else None
        driver = SweepDriver(store, spec, lease=lease, events=events, progress=view, options=options, stop=stop)
        result = driver.run()
        try:
            # The run's journal records go into the ledger's arrays, so Zarr tools read it current.
            store.ledger.compact()
        except OSError as exc:
            raise_environment_fault(exc, where, "compacting the ledger")
    return result


def extend_sweep(store_path: str | Path | StoreLocation, *, num_models: int) -> SweepStore:
    """Grow a sweep to ``num_models`` (a multiple of its block); the next run fills the new blocks."""
    store = SweepStore.open(store_path, mode="r+")
    spec = stored_spec(store)
    if num_models <= store.num_models:
        raise InputError(f"--num-models must exceed the current {store.num_models}; got {num_models}")
    if num_models % store.block:
        raise InputError(f"--num-models ({num_models}) must be a multiple of the block size ({store.block})")
    with _lease(store.location, ttl_s=30.0):
        store.resize(spec.model_copy(update={"num_models": num_models}))
    return store.reopen()


def verify_sweep(store_path: str | Path | StoreLocation, *, repair: bool = False) -> VerifyReport:
    """Check every completed block; with ``repair`` send bad ones back to be recomputed."""
    store = SweepStore.open(store_path, mode="r+" if repair else "r")
    if repair:
        with _lease(store.location, ttl_s=30.0):
            report = verify_store(store, repair=True)
            store.ledger.compact()
            return report
    return verify_store(store)

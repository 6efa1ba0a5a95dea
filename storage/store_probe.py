"""What is at a store's location, and the init claim: what creating a store checks before it writes.

A store exists once its marker does (the root ``zarr.json`` with dmsweep
attributes, written last by :meth:`storage.sweep_store.SweepStore.create`); an
init claim (``creating.json`` in the state area), written first and removed
last, tells an interrupted init from something else and keeps two creators
apart.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import socket
import time
from pathlib import Path

from storage.errors import LeaseHeldError, StoreError, StoreMismatchError
from storage.location import LocalLocation, StoreLocation, store_location
from storage.metadata import ATTRS_KEY
from storage.processes import pid_alive

__all__ = ["StoreProbe", "probe_store", "claim_creation", "refuse_existing", "remove_hierarchy", "CREATING"]


def remove_hierarchy(location: StoreLocation, *, keep_dir: bool = False) -> None:
    """Delete what an unfinished init wrote (never a store: callers probed first)."""
    if isinstance(location, LocalLocation):
        shutil.rmtree(location.path, ignore_errors=True)
        if keep_dir:
            location.path.mkdir(exist_ok=True)  # the empty directory the user made for us
    else:
        location.root.delete_all()


class StoreProbe(enum.Enum):
    """What is at a store's location."""

    ABSENT = "absent"  # nothing there
    EMPTY = "empty"  # an empty directory: a store may be created in it
    PARTIAL = "partial"  # an init that did not finish (no marker yet): it may be created again
    STORE = "store"  # a Zarr group with dmsweep metadata (validated when opened)
    OTHER = "other"  # something that is not a dmsweep store


#: Written to the state area first at init and removed last: a location holding
#: it but no marker is an interrupted init (:attr:`StoreProbe.PARTIAL`).
CREATING = "creating.json"


#: An init claim from another host older than this is an interrupted init's (an
#: init takes seconds): it may be taken over.
CLAIM_STALE_S = 600.0


def claim_creation(location: StoreLocation) -> None:
    """Write the init claim (``creating.json``) conditionally; refuse while another live process holds it.

    Without it, two drivers started at once on a new store would both create
    it in place, and the one that failed would delete what the other made. A
    claim left by an init that died (its process gone on this host, or older
    than :data:`CLAIM_STALE_S` from another) is taken over, conditionally too.
    """
    claim = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}).encode()
    if location.state.put_if_absent(CREATING, claim) is not None:
        return
    held = location.state.get(CREATING)
    try:
        info = json.loads(held.data) if held is not None else {}
        host, pid, since = str(info["host"]), int(info["pid"]), float(info["time"])
    except (KeyError, TypeError, ValueError):
        host, pid, since = "", 0, 0.0  # unreadable: an interrupted init's
    if host == socket.gethostname():
        gone = not pid_alive(pid)
    else:
        gone = time.time() - since > CLAIM_STALE_S
    taken = gone and (location.state.put_if_match(CREATING, claim, held.etag) if held is not None
                      else location.state.put_if_absent(CREATING, claim))
    if not taken:
        raise LeaseHeldError(f"another process (pid {pid} on {host}) is creating the store at {location.uri!r} "
                             "at this moment; run again once it has")


def refuse_existing(location: StoreLocation, probe: StoreProbe) -> None:
    if probe not in (StoreProbe.ABSENT, StoreProbe.EMPTY, StoreProbe.PARTIAL):
        what = "a dmsweep store" if probe is StoreProbe.STORE else "something else"
        raise StoreMismatchError(f"store path {location.uri!r} already exists and holds {what}")


def probe_store(store: str | Path | StoreLocation) -> StoreProbe:
    """Look at a store's location without opening it as a store.

    A store exists once its marker does: the root ``zarr.json`` with dmsweep
    attributes, the last thing init writes.

    Raises
    ------
    StoreError
        The location cannot be read (permission denied, an I/O error): that is
        never mistaken for "not a store".
    StoreAccessError
        An object store that cannot be used (no credentials, no bucket, no answer).
    """
    location = store_location(store)
    try:
        if isinstance(location, LocalLocation):
            path = location.path
            if not path.exists():
                return StoreProbe.PARTIAL if location.state.get(CREATING) else StoreProbe.ABSENT
            if not path.is_dir():
                return StoreProbe.OTHER
            if not any(path.iterdir()):
                return StoreProbe.EMPTY
        marker = location.root.get("zarr.json")
        if marker is None:
            if location.state.get(CREATING):
                return StoreProbe.PARTIAL
            return StoreProbe.ABSENT if not location.is_local and not location.root.list() else StoreProbe.OTHER
        document = json.loads(marker.data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return StoreProbe.OTHER
    except OSError as exc:
        raise StoreError(f"cannot read the store at {location.uri!r}: {exc.strerror or exc}") from None
    attrs = document.get("attributes") if isinstance(document, dict) else None
    if isinstance(attrs, dict) and ATTRS_KEY in attrs:
        return StoreProbe.STORE
    return StoreProbe.PARTIAL if location.state.get(CREATING) else StoreProbe.OTHER

"""Which Ray a dmsweep process uses, decided in one place.

* Ray already initialised in this process (a notebook, a test, a Ray job's
  driver): use it as it is.
* An address given (``--address``) or ``RAY_ADDRESS`` set: join that cluster.
* Neither: start a **new local** Ray for this process (``address="local"``) and
  shut it down afterwards. Plain ``ray.init()`` would instead join whatever
  cluster Ray's address file in its temp directory names, and a head that died
  without cleanup leaves that file behind: the call then retries the dead
  address for good (DESIGN.md, "Facts measured here").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cluster_requested", "ray_for_this_process", "connect_if_asked"]


def cluster_requested(address: str | None) -> bool:
    """True when the user named a cluster, by ``address`` or ``RAY_ADDRESS``."""
    return address is not None or bool(os.environ.get("RAY_ADDRESS"))


def _init(address: str) -> None:
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)


@contextmanager
def ray_for_this_process(address: str | None) -> Iterator[None]:
    """Ray for the duration of the block; shuts down only a Ray it started."""
    import ray

    if ray.is_initialized():
        yield
        return
    _init(address or os.environ.get("RAY_ADDRESS") or "local")
    try:
        yield
    finally:
        ray.shutdown()


def connect_if_asked(address: str | None) -> None:
    """Join a cluster when one is named (target shards then run as Ray tasks); otherwise start nothing."""
    import ray

    if cluster_requested(address) and not ray.is_initialized():
        _init(address or os.environ["RAY_ADDRESS"])

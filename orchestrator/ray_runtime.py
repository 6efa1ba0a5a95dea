"""Which Ray a dmsweep process uses, decided in one place.

* Ray already initialised in this process (a notebook, a test, a Ray job's
  driver): use it as it is.
* An address given (``--address``) or ``RAY_ADDRESS`` set: join that cluster,
  once its GCS answers (:func:`check_reachable`). An address nobody answers at
  is an :class:`InputError` (exit 2) within :data:`CONNECT_TIMEOUT_S` seconds
  (``ray://``: the Ray client's own 30 s); ``ray.init`` itself would retry a
  dead GCS address for good.
* Neither: start a **new local** Ray for this process (``address="local"``) and
  shut it down afterwards. Plain ``ray.init()`` would instead join whatever
  cluster Ray's address file in its temp directory names, and a head that died
  without cleanup leaves that file behind: the call then retries the dead
  address for good (DESIGN.md, "Facts measured here").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from storage.errors import InputError

__all__ = [
    "CONNECT_TIMEOUT_S", "cluster_requested", "ray_for_this_process", "connect_if_asked", "check_reachable",
    "check_requested_cluster",
]

#: How long a named cluster's GCS may refuse connections before the address is
#: reported unreachable (a head that is still starting answers within seconds).
CONNECT_TIMEOUT_S = 10.0


def cluster_requested(address: str | None) -> bool:
    """True when the user named a cluster, by ``address`` or ``RAY_ADDRESS``."""
    return address is not None or bool(os.environ.get("RAY_ADDRESS"))


def _gcs_address(address: str) -> str:
    """``HOST:PORT`` of the GCS a Ray address names (``auto``: the one Ray's address file names)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:  # auto with no cluster; a malformed address
        raise InputError(f"address {address!r}: {exc}", params=("address",)) from None
    if not target:
        raise InputError(f"address {address!r} names no Ray cluster", params=("address",))
    return target


def check_reachable(address: str, *, timeout_s: float = CONNECT_TIMEOUT_S,
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Raise :class:`InputError` unless a Ray GCS answers at ``address`` within about ``timeout_s``.

    One cheap GCS call (the cluster id) with a deadline: ``ray.init`` itself
    retries an address nobody answers at for good, printing time-outs. Refused
    connections are retried until the deadline (the head may be starting); an
    answer that is not a GCS's (another server, an HTTP proxy) fails at once.
    A GCS that answers "unauthenticated" is there: ``ray.init`` then says what
    the token problem is. ``ray://`` addresses are left to Ray's client, which
    gives up after its own 30 s.
    """
    if address.startswith("ray://"):
        return
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    target = _gcs_address(address)
    deadline = clock() + timeout_s
    pause = threading.Event()  # never set: an interruptible pause between tries
    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        while True:
            try:
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=max(0.5, min(2.0, deadline - clock())))
                return
            except grpc.RpcError as exc:
                code, details = exc.code(), (exc.details() or "").strip()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return
            retry = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retry or clock() >= deadline:
                if retry:  # gRPC's details end with the cause: "...: Connection refused"
                    what, cause = "no Ray cluster answers", details.rsplit(": ", 1)[-1]
                else:
                    what, cause = "something that is not a Ray GCS answers", details
                raise InputError(
                    f"{what} at {target} (address {address!r}: {cause or code.name.lower()}); "
                    "check the address, or leave out --address and RAY_ADDRESS to start a local Ray",
                    params=("address",),
                )
            pause.wait(0.5)


def check_requested_cluster(address: str | None) -> None:
    """Before anything is written: the cluster :func:`ray_for_this_process` will join must answer."""
    import ray

    if cluster_requested(address) and not ray.is_initialized():
        target = address or os.environ["RAY_ADDRESS"]
        if target != "local":
            check_reachable(target)


def _init(address: str) -> None:
    import ray

    if address == "local":
        # A Ray this process starts and owns: its notice that token auth is on
        # would be a second line under every one-line error.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    else:
        check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:  # Ray's own give-up (its client's 30 s for ray://)
        raise InputError(f"cannot connect to the Ray cluster at {address!r}: {exc}", params=("address",)) from None


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

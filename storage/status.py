"""Progress, throughput, ETA and failures of a store, read from the store alone (no Ray, no driver).

``dmsweep status`` prints it, the report shows it, and it works after the
cluster is gone. It works on both kinds of store: a sweep (recipe and spec) and
an import (its provenance instead).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from storage.lease import read_lease
from storage.ledger import BlockStatus
from storage.sweep_store import SweepStore

__all__ = ["FailedBlock", "StoreStatus", "store_status"]

#: Throughput is measured over the most recent completions.
_RATE_WINDOW_BLOCKS = 64


@dataclass(frozen=True)
class FailedBlock:
    block: int
    attempts: int
    node: str
    error: str


@dataclass
class StoreStatus:
    """What ``dmsweep status`` shows.

    Attributes
    ----------
    store : str
    kind : ``sweep`` or ``import``
    source : str
        A sweep's recipe name, or an import's provenance (``import: npy``).
    num_models, block, num_blocks : int
    completed_blocks, failed_blocks, pending_blocks, completed_models : int
    fraction_done : float
    models_per_second, eta_seconds : float or None
        Over the most recent completions; the ETA only while a driver runs.
    driver_running : bool
    driver : str or None
        ``pid N on HOST`` of the driver holding the lease.
    per_node_models : dict of str to int
    failures : list of FailedBlock
    """

    store: str
    kind: str
    source: str
    num_models: int
    block: int
    num_blocks: int
    completed_blocks: int
    failed_blocks: int
    pending_blocks: int
    completed_models: int
    fraction_done: float
    models_per_second: float | None
    eta_seconds: float | None
    driver_running: bool
    driver: str | None
    per_node_models: dict[str, int]
    failures: list[FailedBlock] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _source(store: SweepStore) -> str:
    spec = store.spec
    if spec is not None:
        return spec.recipe.name
    return f"import: {store.metadata.provenance.source}"  # type: ignore[union-attr]


def store_status(store_path: str | Path) -> StoreStatus:
    """Everything ``dmsweep status`` shows, computed from the store and its ledger."""
    store = SweepStore.open(store_path, mode="r")
    table = store.ledger.table()
    status = table["status"]
    complete = status == BlockStatus.COMPLETE
    failed = np.flatnonzero(status == BlockStatus.FAILED)
    finished = np.sort(table["finished_at"][complete])
    rate: float | None = None
    if finished.size >= 2:
        recent = finished[-_RATE_WINDOW_BLOCKS:]
        span = float(recent[-1] - recent[0])
        if span > 0:
            rate = (recent.size - 1) * store.block / span
    lease = read_lease(store.path)
    running = lease is not None and lease.is_fresh(time.time())
    # Models per block: all `block`, but the last block of an import may be short.
    sizes = np.minimum(store.block, store.num_models - np.arange(store.num_blocks) * store.block)
    remaining = int(sizes[~complete].sum())
    per_node: dict[str, int] = {}
    for node, size in zip(table["node"][complete], sizes[complete]):
        per_node[str(node)] = per_node.get(str(node), 0) + int(size)
    return StoreStatus(
        store=str(store.path),
        kind=store.kind,
        source=_source(store),
        num_models=store.num_models,
        block=store.block,
        num_blocks=store.num_blocks,
        completed_blocks=int(complete.sum()),
        failed_blocks=int(failed.size),
        pending_blocks=int(store.num_blocks - complete.sum() - failed.size),
        completed_models=int(sizes[complete].sum()),
        fraction_done=float(complete.mean()) if complete.size else 0.0,
        models_per_second=rate,
        eta_seconds=remaining / rate if rate and running else None,
        driver_running=running,
        driver=f"pid {lease.pid} on {lease.host}" if running and lease else None,
        per_node_models=dict(sorted(per_node.items())),
        failures=[
            FailedBlock(int(b), int(table["attempts"][b]), str(table["node"][b]), str(table["error"][b])) for b in failed
        ],
    )

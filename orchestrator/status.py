"""Progress, throughput, ETA and failures of a sweep, read from its store alone (no Ray)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from storage.lease import read_lease
from storage.ledger import BlockStatus
from storage.sweep_store import SweepStore

__all__ = ["FailedBlock", "SweepStatus", "sweep_status"]

#: Throughput is measured over the most recent completions.
_RATE_WINDOW_BLOCKS = 64


@dataclass(frozen=True)
class FailedBlock:
    block: int
    attempts: int
    node: str
    error: str


@dataclass
class SweepStatus:
    store: str
    recipe: str
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


def sweep_status(store_path: str | Path) -> SweepStatus:
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
    remaining = int((~complete).sum()) * store.block
    nodes, counts = np.unique(table["node"][complete], return_counts=True)
    return SweepStatus(
        store=str(store.path),
        recipe=str(store.spec["recipe"]["name"]),
        num_models=store.num_models,
        block=store.block,
        num_blocks=store.num_blocks,
        completed_blocks=int(complete.sum()),
        failed_blocks=int(failed.size),
        pending_blocks=int(store.num_blocks - complete.sum() - failed.size),
        completed_models=int(complete.sum()) * store.block,
        fraction_done=float(complete.mean()) if complete.size else 0.0,
        models_per_second=rate,
        eta_seconds=remaining / rate if rate and running else None,
        driver_running=running,
        driver=f"pid {lease.pid} on {lease.host}" if running and lease else None,
        per_node_models={str(n): int(c) * store.block for n, c in zip(nodes, counts)},
        failures=[
            FailedBlock(int(b), int(table["attempts"][b]), str(table["node"][b]), str(table["error"][b])) for b in failed
        ],
    )

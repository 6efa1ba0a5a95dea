"""Custom metrics exported through Ray's metrics agent (the dashboard's Prometheus endpoint).

They are recorded on the driver, which sees every receipt, and tagged with the
node that trained the block; Ray prefixes each name with ``ray_`` on export
(``ray_dmsweep_models_completed``...).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

__all__ = ["SweepMetrics"]

_BLOCK_SECONDS_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]


class SweepMetrics:
    """Models completed, block seconds, failures, bytes written and blocks running.

    Parameters
    ----------
    store : a short name of the store, a tag on every metric so that two sweeps
        on one cluster stay apart on the dashboard.
    """

    def __init__(self, *, store: str) -> None:
        self._store = store
        self._models = Counter(
            "dmsweep_models_completed", description="Models trained and ledgered.", tag_keys=("store", "node")
        )
        self._seconds = Histogram(
            "dmsweep_block_seconds", description="Wall seconds per block (train + write).",
            boundaries=_BLOCK_SECONDS_BOUNDARIES, tag_keys=("store", "node"),
        )
        self._failures = Counter(
            "dmsweep_block_failures", description="Failed block attempts, by kind (error, timeout, worker_lost).",
            tag_keys=("store", "node", "kind"),
        )
        self._bytes = Counter(
            "dmsweep_bytes_written", description="Raw bytes of block data written.", tag_keys=("store", "node")
        )
        self._running = Gauge("dmsweep_blocks_running", description="Blocks running now.", tag_keys=("store",))

    def block_completed(self, models: int, seconds: float, nbytes: int, node: str) -> None:
        tags = {"store": self._store, "node": node or "unknown"}
        self._models.inc(models, tags=tags)
        self._seconds.observe(seconds, tags=tags)
        self._bytes.inc(nbytes, tags=tags)

    def block_failed(self, kind: str, node: str) -> None:
        self._failures.inc(1, tags={"store": self._store, "node": node or "unknown", "kind": kind})

    def set_running(self, running: int) -> None:
        self._running.set(running, tags={"store": self._store})

"""Custom metrics exported through Ray's metrics agent (the dashboard's Prometheus endpoint)."""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

__all__ = ["SweepMetrics"]

_BLOCK_SECONDS_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]


class SweepMetrics:
    """Models completed, block seconds, failures and bytes written, tagged by node."""

    def __init__(self) -> None:
        self._models = Counter("dmsweep_models_completed", description="Models trained and ledgered.", tag_keys=("node",))
        self._seconds = Histogram(
            "dmsweep_block_seconds", description="Wall seconds per block (train + write).",
            boundaries=_BLOCK_SECONDS_BOUNDARIES, tag_keys=("node",),
        )
        self._failures = Counter("dmsweep_block_failures", description="Failed block attempts (timeouts, lost workers, recipe errors).")
        self._bytes = Counter("dmsweep_bytes_written", description="Raw bytes of block data written.", tag_keys=("node",))

    def block_completed(self, models: int, seconds: float, nbytes: int, node: str) -> None:
        tags = {"node": node or "unknown"}
        self._models.inc(models, tags=tags)
        self._seconds.observe(seconds, tags=tags)
        self._bytes.inc(nbytes, tags=tags)

    def block_failed(self) -> None:
        self._failures.inc(1)

"""What became of each block attempt, recorded where it belongs: the ledger, the event log, metrics, the live view.

The driver is the ledger's only writer, and this is where it writes: a
completed block's receipt, a block that ran out of retries. An attempt that
failed with retries left goes back on the work queue.
"""

from __future__ import annotations

from orchestrator.metrics import SweepMetrics
from orchestrator.progress import SweepProgress
from orchestrator.scheduling import WorkQueue
from storage.events import EventLog
from storage.ledger import Ledger
from workers.block_runner import BlockReceipt

__all__ = ["BlockOutcomes"]


class BlockOutcomes:
    """The outcomes of one run's block attempts, and their counts.

    Parameters
    ----------
    ledger : the store's ledger.
    events : the store's event log.
    metrics : the run's metrics.
    progress : the live view, if any.
    work : where a block with retries left goes back.
    retries : attempts a block may fail before it is ledgered failed (``spec.retries``).
    block : models per block (the metrics and the live view count models).
    """

    def __init__(self, *, ledger: Ledger, events: EventLog, metrics: SweepMetrics, progress: SweepProgress | None,
                 work: WorkQueue, retries: int, block: int) -> None:
        self._ledger = ledger
        self._events = events
        self._metrics = metrics
        self._progress = progress
        self._work = work
        self._retries_allowed = retries
        self._block = block
        self._attempts: dict[int, int] = {}
        self.failed: list[int] = []
        self.retries = 0
        self.newly_completed = 0
        self.ledgered_while_stopping = 0

    def attempt_failed(self, block_id: int, error: str, *, node: str, kind: str, stopping: bool) -> None:
        """Retry the block, or ledger it failed once it has used its retries.

        While the run is stopping nothing is retried or ledgered: the block
        stays pending and its next run tries it afresh.
        """
        self._metrics.block_failed(kind, node)
        if stopping:
            return
        attempts = self._attempts.get(block_id, 0) + 1
        self._attempts[block_id] = attempts
        if attempts <= self._retries_allowed:
            self.retries += 1
            self._events.write("block_retried", block=block_id, attempt=attempts, node=node, kind=kind, error=error)
            self._work.push(block_id)
            if self._progress:
                self._progress.block_retried()
        else:
            self._attempts.pop(block_id, None)
            self._ledger.mark_failed(block_id, error=error, attempts=attempts, node=node)
            self._events.write("block_failed", block=block_id, attempts=attempts, node=node, kind=kind, error=error)
            self.failed.append(block_id)
            if self._progress:
                self._progress.block_failed()

    def completed(self, receipt: BlockReceipt, *, actor: str, stopping: bool) -> None:
        """Ledger a block's receipt: from here on the block is complete."""
        attempts = self._attempts.pop(receipt.block_id, 0) + 1
        self._ledger.mark_complete(
            receipt.block_id, checksum=receipt.checksum, seconds=receipt.seconds, node=receipt.node, attempts=attempts
        )
        self.newly_completed += 1
        if stopping:
            self.ledgered_while_stopping += 1
        self._events.write(
            "block_completed", block=receipt.block_id, node=receipt.node, actor=actor, pid=receipt.pid,
            train_seconds=round(receipt.train_seconds, 4), write_seconds=round(receipt.write_seconds, 4),
            nbytes=receipt.nbytes, attempt=attempts,
        )
        self._metrics.block_completed(self._block, receipt.seconds, receipt.nbytes, receipt.node)
        if self._progress:
            self._progress.block_completed(self._block, receipt.node)

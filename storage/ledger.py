"""The completion ledger: per-block status, attempts, timings, node, checksum, error.

The ledger has a single writer, the driver. A worker writes its block's chunks
and returns a receipt; only then does the driver mark the block complete. The
status is written last, so a crash between two ledger writes leaves the block
not complete (and it is redone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import zarr

from storage.codecs import ARRAY_CONFIG, checked_compressors

__all__ = ["BlockStatus", "BlockRecord", "Ledger", "LEDGER_CHUNK"]

#: Blocks per ledger chunk. The driver rewrites one small chunk per receipt
#: (zarr's local store replaces chunk files atomically).
LEDGER_CHUNK = 4096


class BlockStatus(IntEnum):
    PENDING = 0
    COMPLETE = 1
    FAILED = 2


@dataclass(frozen=True)
class BlockRecord:
    """One block's ledger entry."""

    block_id: int
    status: BlockStatus
    attempts: int
    seconds: float
    checksum: int
    finished_at: float
    node: str
    error: str


_NUMERIC_FIELDS: dict[str, tuple[str, object]] = {
    "status": ("int8", 0),
    "attempts": ("int32", 0),
    "seconds": ("float32", 0.0),
    "checksum": ("int64", -1),
    "finished_at": ("float64", 0.0),
}
_TEXT_FIELDS = ("node", "error")


class Ledger:
    """The ``ledger/`` group of a store; arrays of length ``num_blocks``."""

    def __init__(self, group: zarr.Group) -> None:
        self._group = group

    @classmethod
    def create(cls, parent: zarr.Group, num_blocks: int) -> Ledger:
        group = parent.create_group("ledger")
        chunk = (min(LEDGER_CHUNK, max(num_blocks, 1)),)
        for name, (dtype, fill) in _NUMERIC_FIELDS.items():
            group.create_array(
                name, shape=(num_blocks,), chunks=chunk, dtype=dtype, fill_value=fill,
                compressors=checked_compressors(), config=ARRAY_CONFIG,
            )
        for name in _TEXT_FIELDS:
            group.create_array(name, shape=(num_blocks,), chunks=chunk, dtype=str, fill_value="", config=ARRAY_CONFIG)
        return cls(group)

    @property
    def num_blocks(self) -> int:
        return int(self._group["status"].shape[0])

    def _array(self, name: str) -> zarr.Array:
        return self._group[name]  # type: ignore[return-value]

    def statuses(self) -> np.ndarray:
        """int8 [num_blocks] of :class:`BlockStatus` values."""
        return np.asarray(self._array("status")[:])

    def completed_blocks(self) -> np.ndarray:
        return np.flatnonzero(self.statuses() == BlockStatus.COMPLETE).astype(np.int64)

    def pending_blocks(self) -> np.ndarray:
        """Blocks not complete (pending or failed): the work a run does."""
        return np.flatnonzero(self.statuses() != BlockStatus.COMPLETE).astype(np.int64)

    def record(self, block_id: int) -> BlockRecord:
        return BlockRecord(
            block_id=block_id,
            status=BlockStatus(int(self._array("status")[block_id])),
            attempts=int(self._array("attempts")[block_id]),
            seconds=float(self._array("seconds")[block_id]),
            checksum=int(self._array("checksum")[block_id]),
            finished_at=float(self._array("finished_at")[block_id]),
            node=str(self._array("node")[block_id]),
            error=str(self._array("error")[block_id]),
        )

    def table(self) -> dict[str, np.ndarray]:
        """Every ledger field as a whole array (text fields as object arrays of str)."""
        table = {name: np.asarray(self._array(name)[:]) for name in _NUMERIC_FIELDS}
        for name in _TEXT_FIELDS:
            table[name] = np.asarray(self._array(name)[:]).astype(object)
        return table

    def mark_complete(self, block_id: int, *, checksum: int, seconds: float, node: str, attempts: int = 1) -> None:
        """Record a block's receipt. Status goes last: until it lands, the block is not complete."""
        self._array("checksum")[block_id] = checksum
        self._array("seconds")[block_id] = seconds
        self._array("attempts")[block_id] = attempts
        self._array("node")[block_id] = node
        self._array("error")[block_id] = ""
        self._array("finished_at")[block_id] = time.time()
        self._array("status")[block_id] = BlockStatus.COMPLETE

    def mark_failed(self, block_id: int, *, error: str, attempts: int, node: str = "") -> None:
        """Record a block that ran out of retries; the next run tries it again."""
        self._array("attempts")[block_id] = attempts
        self._array("error")[block_id] = error
        self._array("node")[block_id] = node
        self._array("finished_at")[block_id] = time.time()
        self._array("status")[block_id] = BlockStatus.FAILED

    def mark_pending(self, block_ids: np.ndarray) -> None:
        """Send blocks back to be recomputed (verify --repair)."""
        status = self._array("status")
        for block_id in np.asarray(block_ids, dtype=np.int64):
            status[int(block_id)] = BlockStatus.PENDING

    def resize(self, num_blocks: int) -> None:
        """Grow every field (driver only, during extend)."""
        for name in (*_NUMERIC_FIELDS, *_TEXT_FIELDS):
            self._array(name).resize((num_blocks,))

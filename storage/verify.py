"""Check completed blocks: every chunk decodes (crc32c) and matches the ledger's checksum."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from storage.checksum import block_checksum
from storage.layout import MASKS
from storage.sweep_store import SweepStore

__all__ = ["BlockProblem", "VerifyReport", "verify_store"]


@dataclass(frozen=True)
class BlockProblem:
    block_id: int
    reason: str


@dataclass
class VerifyReport:
    checked_blocks: int
    problems: list[BlockProblem] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(store: SweepStore, *, repair: bool = False) -> VerifyReport:
    """Read back every completed block; with ``repair``, mark bad ones for recomputation."""
    ledger = store.ledger
    table = ledger.table()
    completed = np.flatnonzero(table["status"] == 1)
    problems: list[BlockProblem] = []
    names = (MASKS, *store.outputs)
    for block_id in completed:
        rows = store.block_rows(int(block_id))
        try:
            arrays = [store.array(name)[rows.start : rows.stop] for name in names]
        except Exception as exc:  # zarr raises ValueError on a crc32c mismatch, KeyError/OSError on damage
            problems.append(BlockProblem(int(block_id), f"chunk unreadable: {exc}"))
            continue
        if block_checksum(arrays) != int(table["checksum"][block_id]):
            problems.append(BlockProblem(int(block_id), "data does not match the ledger's checksum (missing or altered chunk)"))
    if repair and problems:
        ledger.mark_pending(np.array([p.block_id for p in problems], dtype=np.int64))
    return VerifyReport(checked_blocks=int(completed.size), problems=problems, repaired=repair and bool(problems))

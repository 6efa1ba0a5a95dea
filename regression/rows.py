"""Selecting rows and target columns of a store, and writing row sets compactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.errors import InputError
from storage.metadata import ImportMetadata, SweepMetadata

__all__ = ["check_slice", "to_runs", "from_runs", "evaluation_rows", "replicates_of"]


def evaluation_rows(store: Any) -> range | None:
    """The rows an imported store keeps for evaluation (its provenance's ``eval_rows``), or None."""
    meta = store.metadata
    if isinstance(meta, ImportMetadata) and meta.provenance.eval_rows is not None:
        return range(*meta.provenance.eval_rows)
    return None


def replicates_of(store: Any) -> int:
    """Models per mask in a store: rows ``[i·R, (i+1)·R)`` share mask ``i`` (1: every row its own mask)."""
    meta = store.metadata
    if isinstance(meta, SweepMetadata):
        return int(meta.spec.replicates)
    return int(meta.provenance.replicates)


def check_slice(sel: slice | None, size: int, what: str) -> range:
    """The range a user's slice selects in ``[0, size)``; InputError when out of range.

    Unlike Python slicing nothing is clipped silently: bounds outside ``[0, size]``,
    a step other than 1 and an empty selection are refused.

    Parameters
    ----------
    sel : slice or None
        The selection (None: everything).
    size : int
        The length selected from.
    what : str
        The library parameter ``sel`` came in as (``"rows"``, ``"targets"``): the
        error names it and carries it in ``params``.
    """
    if sel is None:
        return range(0, size)
    if not isinstance(sel, slice):
        raise InputError(f"{what} must be a slice, got {type(sel).__name__}", params=(what,))
    if sel.step not in (None, 1):
        raise InputError(f"{what} must have step 1, got {sel.step}", params=(what,))
    start = 0 if sel.start is None else int(sel.start)
    stop = size if sel.stop is None else int(sel.stop)
    if not 0 <= start < stop <= size:
        raise InputError(f"{what} [{sel.start}:{sel.stop}] is outside [0, {size}) or empty", params=(what,))
    return range(start, stop)


def to_runs(rows: np.ndarray) -> list[list[int]]:
    """Sorted int rows as ``[[start, stop), …]`` runs (JSON-able, small)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.r_[rows[0], rows[breaks]]
    stops = np.r_[rows[breaks - 1] + 1, rows[-1] + 1]
    return [[int(a), int(b)] for a, b in zip(starts, stops)]


def from_runs(runs: list[list[int]]) -> np.ndarray:
    """Inverse of :func:`to_runs`."""
    if not runs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs])

"""The project's error hierarchy, rooted in :class:`DmsweepError`.

Every part of dmsweep raises these (storage is the package every other part
depends on, so the root lives here). The CLI maps ``exit_code`` to the process
exit status: 2 for bad input (nothing was written), 1 for a failure.
"""

from __future__ import annotations

__all__ = [
    "DmsweepError",
    "InputError",
    "SpecError",
    "StoreError",
    "StoreMismatchError",
    "LeaseHeldError",
    "CorruptChunkError",
    "RecipeError",
    "BlockFailedError",
    "SolverError",
]


class DmsweepError(Exception):
    """Root of every error dmsweep raises on purpose."""

    exit_code: int = 1


class InputError(DmsweepError, ValueError):
    """The user asked for something invalid; nothing was written.

    Parameters
    ----------
    message : str
        One line that names the offending parameter(s) by their library name
        (``rows``, ``n_alphas``...), the value received and what is allowed.
    params : tuple of str
        Those parameter names, so that a front end can say them its own way
        (the CLI turns ``rows`` into ``--rows``).
    """

    exit_code = 2

    def __init__(self, message: str, *, params: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.params: tuple[str, ...] = tuple(params)


class SpecError(InputError):
    """A sweep spec failed validation."""


class StoreError(DmsweepError):
    """The store is unreadable or inconsistent."""


class StoreMismatchError(InputError):
    """The store exists but does not match what was asked (other spec, not a store)."""


class LeaseHeldError(InputError):
    """Another driver holds a fresh lease on this store."""


class CorruptChunkError(StoreError):
    """A chunk's checksum does not match its data."""


class RecipeError(InputError):
    """A recipe name, class or parameter set is invalid."""


class BlockFailedError(DmsweepError):
    """Training or writing one block failed (the block stays incomplete)."""


class SolverError(DmsweepError):
    """The regression could not run as asked."""

"""The project's error hierarchy, rooted in :class:`DmsweepError`.

Every part of dmsweep raises these (storage is the package every other part
depends on, so the root lives here). The CLI maps ``exit_code`` to the process
exit status: 2 for bad input (nothing was written), 1 for a failure, 4 for
an environment fault.

An :class:`EnvironmentFault` is the store's filesystem refusing a write (disk
full, permission denied, read-only): nothing is wrong with the sweep, and a
run stopped by one resumes once the cause is fixed.
"""

from __future__ import annotations

import errno
from pathlib import Path

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
    "EnvironmentFault",
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


#: What each errno means for a store, said the way ``strerror`` says it.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


class EnvironmentFault(DmsweepError):
    """The store's filesystem refused a write: disk full, permission denied, read-only.

    The message is one line naming the cause and the store; the sweep is
    intact and resumes once the cause is fixed. ``cause`` is the strerror-like
    reason, ``store`` the store's path.
    """

    exit_code = 4

    def __init__(self, message: str, *, cause: str = "", store: str = "") -> None:
        super().__init__(message)
        self.cause = cause
        self.store = store

    @classmethod
    def classify(cls, exc: OSError, *, store: str | Path, action: str) -> EnvironmentFault | None:
        """The fault ``exc`` is, or None when it is not one of the environment's (a bug, a missing file).

        Parameters
        ----------
        exc : the error a write into the store raised.
        store : the store's path.
        action : what was being written, for the message ("writing block 7").
        """
        cause = _ENVIRONMENT_ERRNOS.get(exc.errno or 0)
        if cause is None:
            return None
        where = f" ({exc.filename})" if exc.filename else ""
        return cls(
            f"{cause} at {store} ({action}{where}); once that is fixed, run the same command again to resume: "
            "completed blocks are kept",
            cause=cause, store=str(store),
        )

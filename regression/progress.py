"""Progress as callbacks: the library reports, a front end renders.

The regression never draws anything itself. The engine calls a
:data:`PathProgress` after every λ step; :func:`regression.fit.fit_datamodels`
drives a :class:`FitProgress` over its shards. The CLI implements
:class:`FitProgress` with a rich bar; a notebook or a test can implement it with
anything (a list of calls, a tqdm bar, a log line).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["PathProgress", "FitProgress", "NullProgress"]

#: Called after every λ step of a path: ``(steps done, steps in all, targets still on the path)``.
PathProgress = Callable[[int, int, int], None]


class FitProgress(Protocol):
    """What :func:`regression.fit.fit_datamodels` reports while it fits.

    The calls come in this order: :meth:`fit_started` once; for each shard, any
    number of :meth:`lambda_step` calls then :meth:`shard_finished`;
    :meth:`fit_finished` once at the end, also when the fit fails (so a renderer
    can always close its display). Shards that run as Ray tasks report
    :meth:`shard_finished` only: their λ steps happen in another process.
    """

    def fit_started(self, *, shards: int, steps: int) -> None:
        """The fit begins: ``shards`` shards to fit (finished ones skipped), paths of at most ``steps`` λ steps."""
        ...

    def lambda_step(self, done: int, total: int, alive: int) -> None:
        """The running shard finished λ step ``done`` of ``total``; ``alive`` targets are still on its path.

        Early stopping usually ends a path before ``total``: the next call is then
        :meth:`shard_finished`, not a step ``total``.
        """
        ...

    def shard_finished(self) -> None:
        """One more shard is fitted and recorded."""
        ...

    def fit_finished(self) -> None:
        """The fit is over (every shard fitted, or a failure on its way out)."""
        ...


class NullProgress:
    """A :class:`FitProgress` that reports nowhere: what a fit uses when given no progress."""

    def fit_started(self, *, shards: int, steps: int) -> None:
        """Nothing to show."""

    def lambda_step(self, done: int, total: int, alive: int) -> None:
        """Nothing to show."""

    def shard_finished(self) -> None:
        """Nothing to show."""

    def fit_finished(self) -> None:
        """Nothing to show."""

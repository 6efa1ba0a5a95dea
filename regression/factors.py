"""Shared noise factors: the model-to-model variation that every target's output shares.

Two models trained on one mask differ by their seed, and much of that difference
is common to all targets: a model that came out more confident, or leaning
towards one class, moves every margin (or every margin of that class) together.
No mask predicts it, so each target's LASSO fits it as noise. Estimated from many
targets at once, as the top principal components of the training rows' outputs,
it can be subtracted from each target's output before the fit, with that target's
own loading (a control variate). The datamodels stay linear functions of the
mask; only the noise they are fitted through shrinks (docs/decisions.md,
"noise_factors"; measured in docs/benchmarks.md).

Components are estimated on training rows only (scores of validation rows are
projections), from at most :data:`MAX_SAMPLE` output columns spread over the
whole output, and only where there are at least :data:`TARGETS_PER_FACTOR`
columns per component: with few targets a component would be the targets
themselves, and removing it would remove their signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from regression.loader import rows_index

__all__ = [
    "MAX_SAMPLE", "TARGETS_PER_FACTOR", "SharedFactors", "usable_factors", "sample_columns",
    "factors_from_reader", "factors_from_array", "loadings_from_reader", "FactorRemoval", "store_factors",
    "remove_from_array",
    "store_removal",
]

#: Output columns the components are estimated from, at most (spread evenly).
MAX_SAMPLE = 1024
#: Output columns needed per component; fewer targets get fewer components.
TARGETS_PER_FACTOR = 100

#: Reads source rows ``[r0, r1)`` of the sampled (or the fitted) output columns, float array [r1-r0, C].
Reader = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class SharedFactors:
    """Per-row scores of the shared components, centred on the training rows.

    Attributes
    ----------
    scores : ndarray, float64 [n_rows, k]
        Row ``i`` is source row ``i`` (training rows first).
    explained : ndarray, float64 [k]
        Fraction of the sampled columns' training-row variance each component carries.
    columns : int
        How many output columns they were estimated from.
    """

    scores: np.ndarray
    explained: np.ndarray
    columns: int

    @property
    def k(self) -> int:
        return int(self.scores.shape[1])


def usable_factors(requested: int, width: int) -> int:
    """How many of ``requested`` components an output of ``width`` columns supports."""
    return max(0, min(int(requested), int(width) // TARGETS_PER_FACTOR))


def sample_columns(width: int) -> np.ndarray:
    """At most :data:`MAX_SAMPLE` output columns, evenly spread over ``[0, width)``."""
    return np.unique(np.linspace(0, width - 1, min(width, MAX_SAMPLE)).round().astype(np.int64))


def _blocks(n: int, step: int) -> list[tuple[int, int]]:
    return [(r, min(n, r + step)) for r in range(0, n, step)]


def factors_from_reader(read: Reader, *, n_rows: int, n_train: int, k: int, step: int) -> SharedFactors:
    """The top ``k`` components of the sampled outputs, from two streamed passes.

    Parameters
    ----------
    read : callable
        ``read(r0, r1)`` returns the sampled columns of source rows ``[r0, r1)``.
    n_rows, n_train : int
        Source rows (training rows first) and how many are training rows.
    k : int
        Components (≥ 1).
    step : int
        Rows per read.
    """
    blocks = _blocks(n_train, step)
    first = np.asarray(read(*blocks[0]), dtype=np.float64)
    # Sums of the outputs less the first block's means: the covariance stays exact for
    # outputs whose means are far larger than their spread.
    shift = first.mean(0)
    total = np.zeros_like(shift)
    cross = np.zeros((shift.size, shift.size))
    for i, (r0, r1) in enumerate(blocks):
        y = (first if i == 0 else np.asarray(read(r0, r1), dtype=np.float64)) - shift
        total += y.sum(0)
        cross += y.T @ y
    centre = total / n_train
    mean = shift + centre
    cov = cross / n_train - np.outer(centre, centre)
    values, vectors = np.linalg.eigh(cov)  # ascending
    top = vectors[:, ::-1][:, :k]
    explained = values[::-1][:k] / max(float(values.sum()), np.finfo(np.float64).tiny)
    scores = np.empty((n_rows, k), dtype=np.float64)
    for r0, r1 in _blocks(n_rows, step):
        scores[r0:r1] = (np.asarray(read(r0, r1), dtype=np.float64) - mean) @ top
    return SharedFactors(scores=scores, explained=explained, columns=int(mean.size))


def factors_from_array(outputs: np.ndarray, *, n_train: int, k: int) -> SharedFactors:
    """:func:`factors_from_reader` on outputs held in memory, ``[n_rows, width]`` (training rows first)."""
    columns = sample_columns(outputs.shape[1])
    return factors_from_reader(lambda r0, r1: outputs[r0:r1, columns], n_rows=outputs.shape[0], n_train=n_train,
                               k=k, step=max(1, (1 << 22) // max(1, columns.size)))


def remove_from_array(outputs: np.ndarray, *, n_train: int, requested: int) -> np.ndarray:
    """``outputs`` [n_rows, width] (training rows first) less each column's share of the shared components.

    Uses :func:`usable_factors` of ``requested`` for ``width`` columns; returns
    ``outputs`` itself when that is 0, else a float64 copy.
    """
    k = usable_factors(requested, outputs.shape[1])
    if k == 0:
        return outputs
    factors = factors_from_array(outputs, n_train=n_train, k=k)
    step = max(1, (1 << 22) // max(1, outputs.shape[1]))
    loadings = loadings_from_reader(lambda r0, r1: outputs[r0:r1], factors.scores, n_train=n_train, step=step)
    return np.asarray(outputs, dtype=np.float64) - factors.scores @ loadings


def loadings_from_reader(read: Reader, scores: np.ndarray, *, n_train: int, step: int) -> np.ndarray:
    """Each fitted target's least-squares loading on the scores, over the training rows: float64 [k, T].

    ``read(r0, r1)`` returns the fitted targets' outputs of source rows ``[r0, r1)``.
    The scores are centred on the training rows, so no intercept is needed.
    """
    train = scores[:n_train]
    cross = sum(train[r0:r1].T @ np.asarray(read(r0, r1), dtype=np.float64) for r0, r1 in _blocks(n_train, step))
    # lstsq, not solve: a component constant on the training rows has a zero column.
    return np.linalg.lstsq(train.T @ train, cross, rcond=None)[0]


@dataclass(frozen=True)
class FactorRemoval:
    """Subtracts each target's share of the shared components from its outputs, batch by batch.

    Attributes
    ----------
    scores : ndarray, float64 [n_rows, k]
        The :class:`SharedFactors` scores, in source rows.
    loadings : ndarray, float64 [k, T]
        The fitted targets' loadings (:func:`loadings_from_reader`).
    """

    scores: np.ndarray
    loadings: np.ndarray

    def apply(self, r0: int, r1: int, outputs: np.ndarray) -> np.ndarray:
        """``outputs`` of source rows ``[r0, r1)`` with the shared part removed, float32."""
        shared = self.scores[r0:r1] @ self.loadings
        return np.ascontiguousarray(outputs - shared, dtype=np.float32)


def _store_reader(store: Any, rows: np.ndarray, output: str, columns: np.ndarray | slice) -> Reader:
    def read(r0: int, r1: int) -> np.ndarray:
        return np.asarray(store.read(output, rows_index(rows[r0:r1]))[:, columns])

    return read


def _store_step(store: Any, width: int) -> int:
    """Rows per read: whole blocks, about 16 M output values."""
    block = int(store.block)
    return max(block, (1 << 24) // max(1, width) // block * block)


def store_factors(store: Any, rows: np.ndarray, *, n_train: int, output: str, width: int, k: int) -> SharedFactors:
    """:func:`factors_from_reader` over a store's ``output`` (``width`` columns) at ``rows`` (training rows first)."""
    columns = sample_columns(width)
    return factors_from_reader(_store_reader(store, rows, output, columns), n_rows=rows.size, n_train=n_train, k=k,
                               step=_store_step(store, width))


def store_removal(store: Any, rows: np.ndarray, scores: np.ndarray, *, n_train: int, output: str, width: int,
                  targets: slice) -> FactorRemoval:
    """The :class:`FactorRemoval` of ``targets`` (columns of ``output``), loadings fitted on the training rows."""
    read = _store_reader(store, rows, output, targets)
    loadings = loadings_from_reader(read, scores, n_train=n_train, step=_store_step(store, width))
    return FactorRemoval(scores=scores, loadings=loadings)

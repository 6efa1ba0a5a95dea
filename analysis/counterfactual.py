"""Counterfactuals: the datamodel's prediction for a training set the sweep never trained on.

Given either the training subset S' kept, or a set R of training examples
removed from the full training set (S' = S \\ R), the datamodel of target x
predicts ``f(x; S') ≈ θ_x·1_S' + b_x``, with its own error bar: the RMS of its
residuals on models the fit never saw (:meth:`LoadedDatamodels.residual_std`).

The error bar is measured on subsets of the size the sweep trained on (α·N);
a subset of a very different size (such as "everything but R") extrapolates
the linear model, and the result says so through ``subset_fraction`` and
``fit_fraction``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.load import load_datamodels
from storage.errors import InputError

__all__ = ["CounterfactualResult", "predict_counterfactual"]


@dataclass
class CounterfactualResult:
    """Predicted outputs of chosen targets for one counterfactual training set.

    Attributes
    ----------
    name, store, output : str
        Datamodels, store, and the output predicted (``margins/test``: a margin > 0
        means the correct class wins).
    mode : str
        ``removed`` (the full training set minus ``removed``) or ``subset``.
    removed : list of int
        Training examples left out (``mode == "removed"``), else empty.
    subset_size : int
        Training examples in the counterfactual set.
    subset_fraction, fit_fraction : float
        Its fraction of the training set, and that of the subsets the datamodels
        were fitted on (the error bar holds there).
    targets : list of int
        Output indices (test examples, or train examples for train-margin datamodels).
    predicted : list of float
        Predicted output for each target.
    std : list of float
        The datamodel's error bar (one RMS residual) for each target.
    full : list of float
        Predicted output with the full training set, for comparison.
    predicted_correct : list of bool
        ``predicted > 0``.
    error_source : str
        Where ``std`` comes from: ``held-out rows``, ``validation rows`` or ``none``.
    error_rows : int
        Models the residuals were measured on.
    """

    name: str
    store: str
    output: str
    mode: str
    removed: list[int]
    subset_size: int
    subset_fraction: float
    fit_fraction: float
    targets: list[int]
    predicted: list[float]
    std: list[float]
    full: list[float]
    predicted_correct: list[bool]
    error_source: str
    error_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``counterfactual.json`` into ``out_dir``; returns the files written."""
        path = Path(out_dir) / "counterfactual.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return [path]


def predict_counterfactual(
    store_path: str | Path,
    *,
    name: str | None = None,
    targets: np.ndarray | list[int] | None = None,
    removed: np.ndarray | list[int] | None = None,
    subset: np.ndarray | list[int] | None = None,
) -> CounterfactualResult:
    """Predict chosen targets' outputs for a training set given by removals or by its members.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
        Datamodels name (default: the store's only datamodels).
    targets : array of int, shape [K]
        Output indices (validated against the datamodels' targets).
    removed : array of int, shape [R], optional
        Training examples removed from the full training set.
    subset : array of int, shape [S], optional
        The training examples kept. Exactly one of ``removed`` and ``subset``.

    Returns
    -------
    CounterfactualResult

    Raises
    ------
    InputError
        Unknown datamodels, targets outside the fitted ones, both or neither of
        ``removed``/``subset``, an empty set, or indices outside the training set.
    """
    dm = load_datamodels(store_path, name=name)
    if (removed is None) == (subset is None):
        raise InputError("give exactly one of removed (a removal set) or subset (a training subset)", params=("removed", "subset"))
    chosen = np.asarray(removed if removed is not None else subset, dtype=np.int64).reshape(-1)
    what = "removal set" if removed is not None else "training subset"
    param = "removed" if removed is not None else "subset"
    if chosen.size == 0:
        raise InputError(f"{param}: the {what} is empty", params=(param,))
    if chosen.min() < 0 or chosen.max() >= dm.n_train:
        raise InputError(f"{param}: the {what} has indices outside [0, {dm.n_train})", params=(param,))
    chosen = np.unique(chosen)
    targets = dm.choose_targets(targets, required=True)
    columns = dm.columns(targets)
    w = dm.weight[:, columns].astype(np.float64)
    b = dm.bias[columns].astype(np.float64)
    full = w.sum(0) + b
    if removed is not None:
        predicted = full - w[chosen].sum(0)
        size = dm.n_train - chosen.size
    else:
        predicted = w[chosen].sum(0) + b
        size = int(chosen.size)
    std, source, n_rows = dm.residual_std(columns)
    return CounterfactualResult(
        name=dm.name, store=str(dm.store.path), output=dm.output,
        mode="removed" if removed is not None else "subset",
        removed=chosen.tolist() if removed is not None else [],
        subset_size=int(size), subset_fraction=size / dm.n_train, fit_fraction=dm.fit_fraction(),
        targets=targets.tolist(), predicted=predicted.tolist(), std=std.tolist(), full=full.tolist(),
        predicted_correct=(predicted > 0).tolist(), error_source=source, error_rows=n_rows,
    )

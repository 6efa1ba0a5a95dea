"""Brittleness: the smallest set of training examples whose removal the datamodel predicts flips a prediction.

For target x with datamodel (θ, b), the prediction with the full training set is
``p = θ·1 + b`` and removing a set R predicts ``p − Σ_{i∈R} θ_i``. For a target
predicted correct (p > 0) the removal flips it once that falls to ≤ 0; the
smallest such R takes the training examples in decreasing order of θ (greedy by
weight, as in Ilyas et al. 2022, section 3.1; for a linear predictor the greedy
set is the smallest one). A target predicted wrong (p ≤ 0) flips the other way,
by removing its most negative weights. :func:`flip_curve` gives the fraction of
targets flippable by removing at most k examples; :mod:`analysis.verify`
retrains real models to check the predicted flips.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.load import check_positive_int, load_datamodels
from analysis.plots import new_figure, save_figure, step_curve

__all__ = ["TargetBrittleness", "BrittlenessResult", "removal_set", "flip_curve", "brittleness", "brittleness_figure"]


@dataclass
class TargetBrittleness:
    """One target's predicted removal set.

    Attributes
    ----------
    target : int
        Output index.
    full : float
        Predicted output with the full training set.
    predicted_correct : bool
        ``full > 0``.
    size : int or None
        Size of the smallest removal set predicted to flip the prediction; None
        when no set of at most ``max_k`` examples does.
    removal : list of int
        That set, in greedy order (empty when ``size`` is None).
    after : float or None
        Predicted output after removing it.
    """

    target: int
    full: float
    predicted_correct: bool
    size: int | None
    removal: list[int]
    after: float | None


@dataclass
class BrittlenessResult:
    """Predicted removal sets of chosen targets and the flip curve.

    Attributes
    ----------
    name, store, output : str
    max_k : int
        Largest removal set considered.
    targets : list of TargetBrittleness
    curve_k : list of int
        k = 1..max_k.
    curve_fraction : list of float
        Fraction of the chosen targets whose prediction is flippable by removing
        at most k training examples.
    n_flippable : int
    median_size : float or None
        Median removal-set size over the flippable targets.
    verification : dict or None
        The retraining check (:class:`analysis.verify.VerificationResult`), when run.
    """

    name: str
    store: str
    output: str
    max_k: int
    targets: list[TargetBrittleness]
    curve_k: list[int]
    curve_fraction: list[float]
    n_flippable: int
    median_size: float | None
    verification: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sizes(self) -> np.ndarray:
        """Removal-set size per target, ``-1`` where none flips it; int64 [K]."""
        return np.array([-1 if t.size is None else t.size for t in self.targets], dtype=np.int64)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``brittleness.json`` and ``brittleness_curve.png`` into ``out_dir``."""
        out = Path(out_dir)
        path = out / "brittleness.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return [path, save_figure(brittleness_figure(self), out / "brittleness_curve.png")]


def removal_set(weight: np.ndarray, full: float, *, max_k: int) -> tuple[int | None, np.ndarray]:
    """The smallest set whose removal moves a linear prediction across 0.

    Parameters
    ----------
    weight : ndarray, shape [N_train]
        One target's datamodel weights.
    full : float
        Its prediction with every training example.
    max_k : int
        Largest set considered.

    Returns
    -------
    size : int or None
        None when no set of at most ``max_k`` examples flips the prediction.
    indices : ndarray of int64, shape [size] (empty when None)
    """
    w = np.asarray(weight, dtype=np.float64)
    # Removing i changes the prediction by -w_i: lower it (to flip a correct one)
    # with the largest positive weights, raise it with the most negative ones.
    sign = 1.0 if full > 0 else -1.0
    gains = sign * w
    order = np.argsort(-gains, kind="stable")[:max_k]
    order = order[gains[order] > 0]
    after = sign * full - np.cumsum(gains[order])
    hits = np.flatnonzero(after <= 0 if full > 0 else after < 0)
    if hits.size == 0:
        return None, np.zeros(0, dtype=np.int64)
    size = int(hits[0]) + 1
    return size, order[:size].astype(np.int64)


def flip_curve(sizes: np.ndarray, max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of targets flippable by removing at most k examples, for k = 1..max_k.

    Parameters
    ----------
    sizes : ndarray of int, shape [K]
        Removal-set size per target, ``-1`` for none.

    Returns
    -------
    k : ndarray of int64, shape [max_k]
    fraction : ndarray of float64, shape [max_k]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k = np.arange(1, max_k + 1, dtype=np.int64)
    if sizes.size == 0:
        return k, np.zeros(max_k)
    found = np.sort(sizes[sizes > 0])
    return k, np.searchsorted(found, k, side="right") / sizes.size


def brittleness(
    store_path: str | Path,
    *,
    name: str | None = None,
    targets: np.ndarray | list[int] | None = None,
    max_k: int | None = None,
) -> BrittlenessResult:
    """Predicted smallest flipping removal set of each chosen target, and the flip curve.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
        Datamodels name (default: the store's only datamodels).
    targets : array of int, shape [K], optional
        Output indices (default: every target of the datamodels).
    max_k : int, optional
        Largest removal set considered (default: the whole training set).

    Returns
    -------
    BrittlenessResult

    Raises
    ------
    InputError
        Unknown datamodels, targets outside the fitted ones, ``max_k`` < 1.
    """
    dm = load_datamodels(store_path, name=name)
    chosen = dm.choose_targets(targets)
    if max_k is not None:
        check_positive_int(max_k, "max_k")
    k_max = dm.n_train if max_k is None else min(int(max_k), dm.n_train)
    columns = dm.columns(chosen)
    full = dm.weight[:, columns].astype(np.float64).sum(0) + dm.bias[columns]
    records = []
    for target, column, base in zip(chosen.tolist(), columns, full):
        w = dm.weight[:, column]
        size, removal = removal_set(w, float(base), max_k=k_max)
        after = None if size is None else float(base - w[removal].astype(np.float64).sum())
        records.append(TargetBrittleness(
            target=int(target), full=float(base), predicted_correct=bool(base > 0), size=size,
            removal=removal.tolist(), after=after,
        ))
    sizes = np.array([-1 if r.size is None else r.size for r in records], dtype=np.int64)
    k, fraction = flip_curve(sizes, k_max)
    flippable = sizes[sizes > 0]
    return BrittlenessResult(
        name=dm.name, store=str(dm.store.path), output=dm.output, max_k=k_max, targets=records,
        curve_k=k.tolist(), curve_fraction=fraction.tolist(), n_flippable=int(flippable.size),
        median_size=float(np.median(flippable)) if flippable.size else None,
    )


def brittleness_figure(result: BrittlenessResult) -> Any:
    """The flip curve: fraction of targets flippable by removing ≤ k training examples (log k)."""
    fig = new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    sizes = result.sizes()
    correct = np.array([t.predicted_correct for t in result.targets], dtype=bool)
    step_curve(ax, result.curve_k, result.curve_fraction, label=f"all {sizes.size} targets")
    if correct.any() and not correct.all():
        k, fraction = flip_curve(sizes[correct], result.max_k)
        step_curve(ax, k.tolist(), fraction.tolist(), label=f"{int(correct.sum())} predicted correct")
    ax.set_xscale("log")
    ax.set_xlabel("k: training examples removed")
    ax.set_ylabel("fraction of targets flipped")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Predicted brittleness ({result.name})", fontsize=9)
    if result.verification:
        v = result.verification
        ax.text(0.02, 0.95, f"verified: {v['n_confirmed']}/{v['n_candidates']} flips confirmed by retraining",
                transform=ax.transAxes, fontsize=7, va="top")
    return fig

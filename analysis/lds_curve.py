"""The LDS curve: how the datamodels' LDS grows with the number of training models.

The datamodels ``name`` were fitted on some rows of the sweep. This fits the same
targets with the same solver settings on growing prefixes of those rows, and
evaluates every fit — and the original datamodels, the last point — on the same
held-out models, which none of the fits saw: completed rows of the store outside
the original fit's rows (``eval_rows`` narrows them), or the models of
``eval_store``. A curve still rising at its last point says more models are
worth their compute; a flat one says they are not.

The prefix fits are written to temporary ``datamodels/<name>~lds-<m>`` groups of
the store (the regression API writes to a store) and deleted afterwards; the
curve itself is recorded in the datamodels' attributes under ``lds_curve`` so
that ``dmsweep report`` can show it without refitting.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.load import load_datamodels
from analysis.plots import new_figure, save_figure
from regression.config import SolverConfig
from regression.lds import column_correlations
from regression.loader import rows_index
from regression.progress import FitProgress
from regression.rows import from_runs, to_runs
from storage.datamodels import delete_datamodels, list_datamodels, open_datamodels, read_datamodels, update_attrs
from storage.errors import InputError
from storage.sweep_store import SweepStore

__all__ = ["LdsPoint", "LdsCurveResult", "lds_curve", "lds_curve_figure", "stored_lds_curve"]

_ATTR = "lds_curve"


@dataclass
class LdsPoint:
    """LDS of datamodels fitted on the first ``n_models`` rows.

    Attributes
    ----------
    n_models : int
        Rows fitted on (train + validation).
    lds, pearson : float
        Mean over targets of the Spearman / Pearson correlation on the held-out models.
    spearman_std : float
        Spread of the per-target Spearman correlations.
    n_targets : int
        Targets averaged (constant ones are left out).
    fit_seconds : float
        Time of the fit (0 for the original datamodels).
    """

    n_models: int
    lds: float
    pearson: float
    spearman_std: float
    n_targets: int
    fit_seconds: float


@dataclass
class LdsCurveResult:
    """LDS against the number of training models.

    Attributes
    ----------
    name, store, output : str
    eval_store : str
    eval_rows : list of [int, int]
        Held-out rows (runs) of ``eval_store``.
    targets : list of int
        ``[start, stop)`` of the targets evaluated.
    points : list of LdsPoint
        Increasing ``n_models``; the last is the original datamodels.
    seconds : float
    """

    name: str
    store: str
    output: str
    eval_store: str
    eval_rows: list[list[int]]
    targets: list[int]
    points: list[LdsPoint]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``lds_curve.json`` and ``lds_curve.png`` into ``out_dir``."""
        out = Path(out_dir)
        path = out / "lds_curve.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return [path, save_figure(lds_curve_figure(self), out / "lds_curve.png")]


def _default_points(n: int, block: int) -> list[int]:
    """n/8, n/4, n/2 rounded to whole blocks (a fit's validation split needs two), below n."""
    points = []
    for fraction in (1 / 8, 1 / 4, 1 / 2):
        m = max(2 * block, round(n * fraction / block) * block)
        if m < n and m not in points:
            points.append(m)
    return points


def _held_out(dm: Any, eval_store: str | Path | None, eval_rows: slice | None) -> tuple[SweepStore, np.ndarray]:
    store = dm.store if eval_store is None else SweepStore.open(eval_store, mode="r")
    if store.dataset.n_train != dm.n_train:
        raise InputError(f"eval_store has n_train={store.dataset.n_train}, the datamodels {dm.n_train}",
                         params=("eval_store",))
    width = store.dataset.n_test if dm.output == "margins/test" else store.dataset.n_train
    if dm.output not in store.outputs or dm.targets.stop > width:
        raise InputError(f"eval_store has no {dm.output!r} covering targets up to {dm.targets.stop}",
                         params=("eval_store",))
    rows = store.completed_rows()
    if eval_rows is not None:
        start = 0 if eval_rows.start is None else int(eval_rows.start)
        stop = store.num_models if eval_rows.stop is None else int(eval_rows.stop)
        if not 0 <= start < stop <= store.num_models:
            raise InputError(f"eval_rows [{start}:{stop}] is outside [0, {store.num_models})", params=("eval_rows",))
        rows = rows[(rows >= start) & (rows < stop)]
    if eval_store is None:
        used = np.intersect1d(rows, dm.fit_rows())
        if eval_rows is not None and used.size:
            raise InputError(f"{used.size} of the eval_rows were used to fit {dm.name!r} (first: row {used[0]})", params=("eval_rows",))
        rows = np.setdiff1d(rows, dm.fit_rows())
    if rows.size < 3:
        raise InputError(
            f"{rows.size} held-out completed rows to evaluate on; need at least 3 (fit on fewer rows, "
            "or give an eval_store)", params=("eval_store",)
        )
    return store, rows


def _evaluate(store: SweepStore, rows: np.ndarray, output: str, columns: range, weight: np.ndarray,
              bias: np.ndarray) -> tuple[float, float, float, int]:
    index = rows_index(rows)
    masks = store.read("masks", index).astype(np.float32)
    actual = store.read(output, index)[:, columns.start : columns.stop].astype(np.float64)
    spearman, pearson, constant = column_correlations(masks @ weight + bias, actual)
    if constant.all():
        return float("nan"), float("nan"), float("nan"), 0
    return float(np.nanmean(spearman)), float(np.nanmean(pearson)), float(np.nanstd(spearman)), int((~constant).sum())


def lds_curve(
    store_path: str | Path,
    *,
    name: str | None = None,
    points: list[int] | None = None,
    eval_store: str | Path | None = None,
    eval_rows: slice | None = None,
    targets: slice | None = None,
    device: str = "auto",
    progress: FitProgress | None = None,
) -> LdsCurveResult:
    """LDS of datamodels fitted on growing prefixes of the original fit's rows.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
        The original datamodels (default: the store's only ones).
    points : list of int, optional
        Prefix sizes in rows (default n/8, n/4, n/2 in whole blocks); each below
        the original fit's row count and at least two blocks.
    eval_store : str or Path, optional
        A store of models on fresh subsets of the same data.
    eval_rows : slice, optional
        Held-out rows to evaluate on (default: every completed row the original
        fit did not use).
    targets : slice, optional
        Output columns to fit and evaluate (default: all the datamodels'), a
        cheaper curve on fewer targets.
    device : str
        Device of the prefix fits.
    progress : FitProgress, optional
        Told about each prefix fit's shards and λ steps.

    Returns
    -------
    LdsCurveResult

    Raises
    ------
    InputError
        Unknown datamodels, bad points or targets, too few held-out rows.
    """
    from regression.fit import fit_datamodels

    started = time.perf_counter()
    dm = load_datamodels(store_path, name=name)
    fit_rows = dm.fit_rows()
    block = dm.store.block
    if targets is None:
        columns = range(dm.targets.start, dm.targets.stop)
    else:
        start = dm.targets.start if targets.start is None else int(targets.start)
        stop = dm.targets.stop if targets.stop is None else int(targets.stop)
        if not dm.targets.start <= start < stop <= dm.targets.stop:
            raise InputError(f"targets [{start}:{stop}] is outside the datamodels' targets "
                             f"[{dm.targets.start}, {dm.targets.stop}) or empty", params=("targets",))
        columns = range(start, stop)
    if points is None:
        points = _default_points(fit_rows.size, block)
    points = sorted(set(int(p) for p in points))
    bad = [p for p in points if not 2 * block <= p < fit_rows.size]
    if bad:
        raise InputError(
            f"points {bad} must each lie in [{2 * block}, {fit_rows.size}): at least two blocks of {block} and "
            f"fewer than the {fit_rows.size} rows {dm.name!r} was fitted on", params=("points",)
        )
    eval_at, held_out = _held_out(dm, eval_store, eval_rows)
    n_val = from_runs(dm.attrs.get("val_rows", [])).size
    val_fraction = n_val / fit_rows.size if fit_rows.size else 0.0
    # The datamodels' own settings; "refit" sat beside the config in groups fitted before it moved inside.
    config = SolverConfig(**{**dm.attrs.get("config", {}), "refit": bool(dm.attrs.get("refit", False))})
    local = slice(columns.start - dm.targets.start, columns.stop - dm.targets.start)
    results: list[LdsPoint] = []
    for m in points:
        temp = f"{dm.name}~lds-{m}"
        t0 = time.perf_counter()
        try:
            fit = fit_datamodels(
                dm.store.path, name=temp, rows=slice(int(fit_rows[0]), int(fit_rows[m - 1]) + 1),
                targets=slice(columns.start, columns.stop), device=device, val_fraction=val_fraction,
                config=config, output=dm.output, overwrite=True, progress=progress,
            )
            fitted = read_datamodels(SweepStore.open(dm.store.path).group, temp)
            lds, pearson, spread, n_targets = _evaluate(eval_at, held_out, dm.output, columns, fitted.weight,
                                                         fitted.bias)
        finally:
            writable = SweepStore.open(dm.store.path, mode="r+")
            if temp in list_datamodels(writable.group):
                delete_datamodels(writable.group, temp)
        results.append(LdsPoint(n_models=fit.n_train_rows + fit.n_val_rows, lds=lds, pearson=pearson,
                                spearman_std=spread, n_targets=n_targets, fit_seconds=time.perf_counter() - t0))
    lds, pearson, spread, n_targets = _evaluate(eval_at, held_out, dm.output, columns, dm.weight[:, local],
                                                dm.bias[local])
    results.append(LdsPoint(n_models=int(fit_rows.size), lds=lds, pearson=pearson, spearman_std=spread,
                            n_targets=n_targets, fit_seconds=0.0))
    result = LdsCurveResult(
        name=dm.name, store=str(dm.store.path), output=dm.output, eval_store=str(eval_at.path),
        eval_rows=to_runs(held_out), targets=[columns.start, columns.stop], points=results,
        seconds=time.perf_counter() - started,
    )
    writable = SweepStore.open(dm.store.path, mode="r+")
    update_attrs(open_datamodels(writable.group, dm.name), **{_ATTR: result.to_dict()})
    return result


def stored_lds_curve(store_path: str | Path, *, name: str) -> LdsCurveResult | None:
    """The curve recorded by the last :func:`lds_curve` on these datamodels, if any."""
    dm = load_datamodels(store_path, name=name)
    data = dm.attrs.get(_ATTR)
    if not isinstance(data, dict):
        return None
    return LdsCurveResult(**{**data, "points": [LdsPoint(**p) for p in data["points"]]})


def lds_curve_figure(result: LdsCurveResult) -> Any:
    """LDS (± its spread across targets) against the number of models, log x."""
    fig = new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    n = np.array([p.n_models for p in result.points])
    lds = np.array([p.lds for p in result.points])
    spread = np.array([p.spearman_std for p in result.points])
    ax.plot(n, lds, "o-", label="LDS (mean Spearman)")
    ax.fill_between(n, lds - spread, lds + spread, alpha=0.15, label="± std across targets")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("training models used by the fit")
    ax.set_ylabel("LDS on held-out models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    n_eval = sum(b - a for a, b in result.eval_rows)
    ax.set_title(f"LDS curve ({result.name}, {n_eval} held-out models)", fontsize=9)
    return fig

"""The linear datamodeling score (LDS) of fitted datamodels on held-out models.

For each target, the Spearman rank correlation between the datamodel's predictions
``mask @ weight + bias`` and the outputs actually measured, over models the fit
never saw (Ilyas et al. 2022, section 2); the LDS is its mean over targets.

Two protocols, both reported when the evaluation models have replicates (R models
trained on each mask with different seeds, stored as consecutive rows):

* **against each model**: every evaluation row is one sample (what dmsweep
  reported before replicates existed; training noise counts against the LDS);
* **against the mean over replicates**: one sample per mask, its output averaged
  over the mask's R models, as the paper's published numbers do (the datamodel
  predicts the expected output of training on a subset; averaging removes part of
  the seed noise, so this LDS is higher).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from regression.loader import rows_index
from regression.rows import check_slice, evaluation_rows, from_runs, replicates_of, to_runs
from storage.datamodels import open_datamodels, update_attrs
from storage.errors import InputError
from storage.sweep_store import SweepStore

__all__ = ["LdsResult", "evaluate_lds", "column_correlations", "replicate_groups"]


@dataclass
class LdsResult:
    """Correlations of predicted and actual outputs on held-out models.

    Attributes
    ----------
    lds : float
        Mean over targets of the Spearman correlation.
    pearson : float
        Mean over the same targets of the Pearson correlation.
    spearman_std : float
        Standard deviation of the per-target Spearman correlations.
    n_targets : int
        Targets averaged over.
    n_constant : int
        Targets left out because their actual or predicted outputs are constant
        on the evaluation models (a correlation is undefined there).
    n_models : int
        Evaluation models.
    eval_store : str
        Store the evaluation models came from.
    rows : list of [int, int]
        Their rows, as runs.
    seconds : float
    replicates : int
        Models per mask in the evaluation store (1: no replicates).
    n_masks : int
        Complete replicate groups among the evaluation rows (their masks).
    lds_mean, pearson_mean, spearman_std_mean : float or None
        The same correlations against each mask's output averaged over its
        replicates (None without replicates).
    protocol : str
        The protocol in words: which rows, how many replicates, what was averaged.
    """

    lds: float
    pearson: float
    spearman_std: float
    n_targets: int
    n_constant: int
    n_models: int
    eval_store: str
    rows: list[list[int]]
    seconds: float
    replicates: int = 1
    n_masks: int = 0
    lds_mean: float | None = None
    pearson_mean: float | None = None
    spearman_std_mean: float | None = None
    protocol: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_correlations(pred: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column Spearman and Pearson correlations.

    Parameters
    ----------
    pred, actual : ndarray, shape [M, T]

    Returns
    -------
    spearman, pearson : ndarray of float64, shape [T]
        NaN where a column is constant.
    constant : ndarray of bool, shape [T]
    """
    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    constant = (np.ptp(pred, axis=0) == 0) | (np.ptp(actual, axis=0) == 0)
    # Spearman = Pearson of average ranks (ties share their mean rank).
    spearman = _pearson(rankdata(pred, axis=0), rankdata(actual, axis=0))
    pearson = _pearson(pred, actual)
    spearman[constant] = np.nan
    pearson[constant] = np.nan
    return spearman, pearson, constant


def replicate_groups(rows: np.ndarray, replicates: int) -> np.ndarray:
    """Positions in ``rows`` of each complete replicate group, shape [groups, replicates].

    Rows ``[i·R, (i+1)·R)`` of a store share mask ``i``; a group counts only when
    all R of its rows are in ``rows`` (sorted, distinct).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if replicates <= 1:
        return np.arange(rows.size, dtype=np.int64)[:, None]
    mask_id = rows // replicates
    starts = np.flatnonzero(np.r_[True, mask_id[1:] != mask_id[:-1]])
    sizes = np.diff(np.r_[starts, rows.size])
    whole = starts[sizes == replicates]
    return whole[:, None] + np.arange(replicates)[None, :]


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / denom


def evaluate_lds(
    store_path: str | Path,
    *,
    name: str,
    eval_store: str | Path | None = None,
    rows: slice | None = None,
) -> LdsResult:
    """LDS of ``datamodels/<name>`` on held-out models; the result goes into the group's attrs.

    Parameters
    ----------
    store_path : str or Path
        The store holding the datamodels.
    name : str
        Datamodels name.
    eval_store : str or Path, optional
        A store of models trained on fresh subsets of the same dataset. Without
        it, the evaluation models of ``store_path``: an imported store's recorded
        evaluation rows, else the completed rows that the fit did not use.
    rows : slice, optional
        Restrict the evaluation models to these rows (completed ones only). With
        replicates, the range must hold whole groups of them.

    Returns
    -------
    LdsResult

    Raises
    ------
    InputError
        Unknown name, evaluation rows that overlap the fit's rows of the same
        store, no evaluation rows, shapes that do not match, NaN outputs, a row
        range that splits a replicate group.
    """
    started = time.perf_counter()
    fit_store = SweepStore.open(store_path, mode="r")
    group = open_datamodels(fit_store.group, name)
    meta = dict(group.attrs["datamodels"])  # type: ignore[arg-type]
    output = str(meta.get("output", "margins/test"))
    t0, t1 = (int(v) for v in meta["targets"])
    store = fit_store if eval_store is None else SweepStore.open(eval_store, mode="r")
    same_store = eval_store is None or store.location.canonical == fit_store.location.canonical
    if store.dataset.n_train != int(meta["n_train"]):
        raise InputError(
            f"eval_store has n_train={store.dataset.n_train}, the datamodels {meta['n_train']}", params=("eval_store",)
        )
    if output not in store.outputs:
        raise InputError(f"eval_store has no {output!r}; it has {list(store.outputs)}", params=("eval_store",))
    width = store.dataset.n_test if output == "margins/test" else store.dataset.n_train
    if t1 > width:
        raise InputError(
            f"the datamodels cover {output} columns [{t0}, {t1}); eval_store has {width}", params=("eval_store",)
        )

    completed = store.completed_rows()
    selected = check_slice(rows, store.num_models, "rows")
    replicates = replicates_of(store)
    if rows is not None and replicates > 1 and (selected.start % replicates or selected.stop % replicates):
        raise InputError(
            f"rows [{selected.start}:{selected.stop}] split a replicate group: the evaluation store holds "
            f"{replicates} models per mask, so rows must start and end at multiples of {replicates}",
            params=("rows",),
        )
    recorded = evaluation_rows(store)
    if rows is None and recorded is not None:
        selected = recorded
    eval_rows = completed[(completed >= selected.start) & (completed < selected.stop)]
    if same_store:
        fitted = from_runs(meta["rows"])
        overlap = np.intersect1d(eval_rows, fitted)
        if rows is None and recorded is None:
            eval_rows = np.setdiff1d(eval_rows, fitted)
        elif overlap.size:
            raise InputError(
                f"rows: {overlap.size} evaluation rows were used to fit {name!r} (first: row {overlap[0]}); "
                "evaluate on held-out rows or another eval_store",
                params=("rows",),
            )
    if eval_rows.size < 3:
        raise InputError(
            f"rows / eval_store hold {eval_rows.size} held-out completed rows to evaluate on; need at least 3",
            params=("rows", "eval_store"),
        )

    weight = group["weight"]
    bias = np.asarray(group["bias"][...], dtype=np.float32)  # type: ignore[index]
    if not np.isfinite(bias).all():
        raise InputError(
            f"datamodels name={name!r} are not completely fitted (some shards missing); finish the fit first",
            params=("name",),
        )
    w = np.asarray(weight[...], dtype=np.float32)  # type: ignore[index]
    preds, actuals = [], []
    step = max(store.block, (1 << 26) // max(1, store.dataset.n_train) // store.block * store.block)
    for i in range(0, eval_rows.size, step):
        index = rows_index(eval_rows[i : i + step])
        masks = store.read("masks", index)
        actual = store.read(output, index)[:, t0:t1].astype(np.float32)
        if not np.isfinite(actual).all():
            raise InputError(
                f"{output} of the evaluation rows (rows / eval_store) has NaN or infinite values",
                params=("rows", "eval_store"),
            )
        preds.append(masks.astype(np.float32) @ w + bias)
        actuals.append(actual)
    pred, actual = np.concatenate(preds), np.concatenate(actuals)
    spearman, pearson, constant = column_correlations(pred, actual)
    if constant.all():
        raise InputError(
            "every target is constant on the evaluation rows (rows / eval_store), or has constant predictions",
            params=("rows", "eval_store"),
        )
    groups = replicate_groups(eval_rows, replicates)
    means: dict[str, Any] = {}
    if replicates > 1 and groups.shape[0] >= 3:
        mean_actual = actual[groups].mean(axis=1)  # [masks, R, T] → [masks, T]
        sp_mean, pe_mean, const_mean = column_correlations(pred[groups[:, 0]], mean_actual)
        means = {"lds_mean": float(np.nanmean(sp_mean)) if not const_mean.all() else None,
                 "pearson_mean": float(np.nanmean(pe_mean)) if not const_mean.all() else None,
                 "spearman_std_mean": float(np.nanstd(sp_mean)) if not const_mean.all() else None}
    runs = to_runs(eval_rows)
    where = ", ".join(f"{a}:{b}" for a, b in runs)
    protocol = (f"Spearman per target over {eval_rows.size} models (rows {where} of {store.path}), mean over "
                f"{int((~constant).sum())} targets")
    if replicates > 1:
        protocol += (f"; also against the mean of the {replicates} replicates of each of {groups.shape[0]} masks "
                     "(the paper's protocol)")
    result = LdsResult(
        lds=float(np.nanmean(spearman)),
        pearson=float(np.nanmean(pearson)),
        spearman_std=float(np.nanstd(spearman)),
        n_targets=int((~constant).sum()),
        n_constant=int(constant.sum()),
        n_models=int(eval_rows.size),
        eval_store=str(store.path),
        rows=runs,
        seconds=time.perf_counter() - started,
        replicates=replicates,
        n_masks=int(groups.shape[0]),
        protocol=protocol,
        **means,
    )
    writable = SweepStore.open(store_path, mode="r+")
    update_attrs(open_datamodels(writable.group, name), lds=result.to_dict())
    return result

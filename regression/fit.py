"""Fit datamodels from a sweep store: validate, shard targets, solve, write, resume.

:func:`fit_datamodels` is the library function behind ``dmsweep fit``. It reads
only completed rows, holds out the last ``val_fraction`` of them for early stopping
and the choice of λ, splits the targets into shards of whole weight chunks and
fits each with :func:`regression.shards.fit_shard` — as Ray tasks when Ray is
installed **and already initialised**, else one after another. A shard writes
only its own columns and returns a receipt; this process alone records finished
shards in the group's attributes, so a re-run with the same settings skips them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from regression.config import SolverConfig, as_config
from regression.factors import store_factors, usable_factors
from regression.loader import rows_index
from regression.gram import choose_engine
from regression.memory import plan_memory, state_units, usable_memory
from regression.progress import FitProgress, NullProgress
from regression.rows import check_slice, evaluation_rows, to_runs
from regression.shards import ShardJob, run_shards
from storage.datamodels import (
    create_datamodels,
    finished_shards,
    list_datamodels,
    mark_shard_finished,
    open_datamodels,
    shard_ranges,
    update_attrs,
)
from storage.errors import InputError
from storage.sweep_store import SweepStore
from workers.device import resolve_device

__all__ = ["FitResult", "fit_datamodels"]

#: What a group's description must match for a re-run to resume it.
_FIT_KEYS = ("rows", "train_rows", "val_rows", "targets", "output", "n_train", "config", "refit")
_OUTPUTS = ("margins/test", "margins/train")


@dataclass
class FitResult:
    """What a fit did.

    Attributes
    ----------
    name, store : str
        Datamodels name and store path.
    n_train_rows, n_val_rows : int
        Rows the path was fitted on / held out for early stopping.
    targets : tuple of int
        Output columns ``[start, stop)`` fitted.
    shards, shards_fitted, shards_skipped : int
        Shards in all, fitted by this call, found finished and skipped.
    wall_time : float
        Seconds this call took.
    device : str
        Device(s) the shards ran on.
    mean_val_mse, mean_nnz, mean_lam : float
        Over all targets of the group (NaN MSE without validation rows; the MSE
        of the outputs the fit saw, the shared noise removed).
    config : dict
        The solver settings, ``SolverConfig.model_dump(mode="json")``
        (``SolverConfig(**config)`` rebuilds them).
    noise_factors : int
        Shared noise components removed before the fit (``config["noise_factors"]``
        or fewer, :func:`regression.factors.usable_factors`).
    noise_explained : float
        The fraction of the sampled outputs' variance across training models those components carry.
    """

    name: str
    store: str
    n_train_rows: int
    n_val_rows: int
    targets: tuple[int, int]
    shards: int
    shards_fitted: int
    shards_skipped: int
    wall_time: float
    device: str
    mean_val_mse: float
    mean_nnz: float
    mean_lam: float
    config: dict[str, Any]
    noise_factors: int = 0
    noise_explained: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-able data (what ``dmsweep fit --json`` prints)."""
        return asdict(self)


def fit_datamodels(
    store_path: str | Path,
    *,
    name: str,
    config: SolverConfig | None = None,
    rows: slice | None = None,
    targets: slice | None = None,
    output: Literal["margins/test", "margins/train"] = "margins/test",
    val_fraction: float = 0.1,
    shards: int = 1,
    device: str = "auto",
    max_memory: int | None = None,
    overwrite: bool = False,
    progress: FitProgress | None = None,
) -> FitResult:
    """Fit one datamodel per target on a store's completed rows; write ``datamodels/<name>``.

    Parameters
    ----------
    store_path : str or Path
        A sweep store.
    name : str
        Name of the datamodels group.
    config : SolverConfig, optional
        Solver settings (``SolverConfig()`` when None); ``config.refit`` re-solves
        at each chosen λ on train + validation rows.
    rows : slice, optional
        Model rows to use (default all but an imported store's evaluation rows);
        only completed rows inside are used.
    targets : slice, optional
        Columns of ``output`` to fit (default all).
    output : {"margins/test", "margins/train"}
        The stored output regressed on.
    val_fraction : float
        Fraction of the rows held out, the last ``round(f·n)`` of the ``n`` rows,
        for early stopping and the choice of λ, wherever that split falls (0 ≤ f < 1;
        0 walks the whole path and keeps its last λ).
    shards : int
        Target shards (each a whole number of weight chunks); Ray tasks when Ray
        is initialised, else run in turn. A resumed fit keeps the original split.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    max_memory : int, optional
        Bound in bytes on this process's resident memory during a shard's fit.
    overwrite : bool
        Replace an existing group of that name fitted with other settings.
    progress : FitProgress, optional
        Told when the fit starts, after each λ step of a shard fitted in this
        process, when a shard is recorded and when the fit ends.

    Returns
    -------
    FitResult

    Raises
    ------
    InputError
        Bad input (nothing written), with ``params`` naming the parameters: no
        completed rows, ``rows``/``targets`` out of range, NaN outputs, a bad
        ``val_fraction``, ``shards``, ``device`` or ``output``, a memory bound
        that cannot be met, an existing group with other settings.
    SolverError
        A shard failed.
    """
    started = time.perf_counter()
    config = as_config(config)
    progress = NullProgress() if progress is None else progress
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise InputError(f"shards={shards!r} (expected an int >= 1)", params=("shards",))
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction={val_fraction!r} (expected a number in [0, 1))", params=("val_fraction",))
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory <= 0):
        raise InputError(f"max_memory={max_memory!r} (expected a positive number of bytes)", params=("max_memory",))
    resolved = resolve_device(device)  # refuse a bad device before anything is read

    store = SweepStore.open(store_path, mode="r")
    if output not in store.outputs or output not in _OUTPUTS:
        raise InputError(
            f"output={output!r}: the store records {list(store.outputs)}; fit uses one of {list(_OUTPUTS)}",
            params=("output",),
        )
    dataset = store.dataset
    width = dataset.n_test if output == "margins/test" else dataset.n_train
    row_range = check_slice(rows, store.num_models, "rows")
    target_range = check_slice(targets, width, "targets")
    completed = store.completed_rows()
    fit_rows = completed[(completed >= row_range.start) & (completed < row_range.stop)]
    held_out = evaluation_rows(store)
    if held_out is not None:
        kept = (fit_rows >= held_out.start) & (fit_rows < held_out.stop)
        if rows is not None and kept.any():
            raise InputError(
                f"rows [{row_range.start}:{row_range.stop}] overlap the store's evaluation models "
                f"[{held_out.start}:{held_out.stop}) (kept for eval); fit on other rows",
                params=("rows",),
            )
        fit_rows = fit_rows[~kept]
    if fit_rows.size < 2:
        raise InputError(
            f"rows [{row_range.start}:{row_range.stop}] hold {fit_rows.size} completed rows; need at least 2 to fit",
            params=("rows",),
        )
    n_train_rows = _train_split(fit_rows.size, val_fraction)
    if config.debias == "relaxed" and n_train_rows == fit_rows.size:
        raise InputError("debias='relaxed' chooses its mix on validation rows: give val_fraction > 0",
                         params=("debias", "val_fraction"))
    _check_finite(store, fit_rows, output, target_range)
    n_factors = usable_factors(config.noise_factors, width)
    factors = (store_factors(store, fit_rows, n_train=n_train_rows, output=output, width=width, k=n_factors)
               if n_factors else None)

    settings = config.model_dump(mode="json")
    description = {
        "rows": to_runs(fit_rows),
        "train_rows": to_runs(fit_rows[:n_train_rows]),
        "val_rows": to_runs(fit_rows[n_train_rows:]),
        "targets": [target_range.start, target_range.stop],
        "output": output,
        "n_train": int(dataset.n_train),
        "config": settings,
        "refit": config.refit,
        "noise_factors": n_factors,
        "noise_explained": 0.0 if factors is None else float(factors.explained.sum()),
    }
    n_targets = len(target_range)
    # Refuse a memory bound no shard can meet before anything is written; each
    # shard plans again in its own process.
    engine = choose_engine(config.engine, n_rows=n_train_rows, n_features=dataset.n_train,
                           memory=usable_memory(resolved, max_memory))
    plan_memory(
        n_rows=int(fit_rows.size), n_features=dataset.n_train, n_targets=math.ceil(n_targets / shards),
        output_width=width, batch_rows=min(config.batch_size, fit_rows.size) + store.block, device=resolved,
        max_memory=max_memory, engine=engine,
        units=state_units(refit=config.refit, average=config.average, debias=config.debias, engine=engine),
    )
    writable = SweepStore.open(store_path, mode="r+")
    group = _open_or_create(writable.group, name, description, n_targets, dataset.n_train, shards, overwrite)
    chunk = int(group.attrs["datamodels"]["target_chunk"])  # type: ignore[index]
    ranges = shard_ranges(n_targets, chunk)
    done = finished_shards(group)
    jobs = [
        ShardJob(
            store_path=str(store.path), name=name, shard=i, start=r.start, stop=r.stop,
            target_offset=target_range.start, output=output, fit_rows=fit_rows, n_train_rows=n_train_rows,
            config=settings, device=device, max_memory=max_memory,
            factor_scores=None if factors is None else factors.scores,
        )
        for i, r in enumerate(ranges)
        if i not in done
    ]

    def record(receipt: dict[str, Any]) -> None:
        # This process is the only writer of the finished-shard records.
        mark_shard_finished(group, int(receipt["shard"]), receipt)
        progress.shard_finished()

    progress.fit_started(shards=len(jobs), steps=config.n_alphas)
    try:
        run_shards(jobs, record=record, on_step=progress.lambda_step)
    finally:
        progress.fit_finished()

    receipts = finished_shards(group)
    summary = {k: np.asarray(group[k][...]) for k in ("val_mse", "nnz", "lam")}  # type: ignore[index]
    devices = sorted({str(r.get("device", "?")) for r in receipts.values()})
    update_attrs(
        group,
        wall_time=float(sum(float(r.get("seconds", 0.0)) for r in receipts.values())),
        device=",".join(devices),
        finished=len(receipts) == len(ranges),
    )
    val = summary["val_mse"]
    return FitResult(
        name=name, store=str(store.path), n_train_rows=int(n_train_rows),
        n_val_rows=int(fit_rows.size - n_train_rows), targets=(target_range.start, target_range.stop),
        shards=len(ranges), shards_fitted=len(jobs), shards_skipped=len(ranges) - len(jobs),
        wall_time=time.perf_counter() - started, device=",".join(devices),
        mean_val_mse=float(np.mean(val)) if np.isfinite(val).all() else float("nan"),
        mean_nnz=float(np.mean(summary["nnz"])), mean_lam=float(np.mean(summary["lam"])), config=settings,
        noise_factors=n_factors, noise_explained=float(description["noise_explained"]),
    )

def _train_split(n: int, val_fraction: float) -> int:
    """Training rows of ``n``: all but the last ``round(val_fraction · n)``, wherever that split falls."""
    n_val = round(val_fraction * n)
    if val_fraction > 0 and not 0 < n_val < n:
        raise InputError(
            f"val_fraction={val_fraction} of {n} rows leaves {n_val} validation and {n - n_val} training rows; "
            "both need at least one (or val_fraction=0)",
            params=("val_fraction",),
        )
    return n - n_val


def _check_finite(store: SweepStore, fit_rows: np.ndarray, output: str, targets: range) -> None:
    """Refuse NaN/inf outputs before anything is written (one streamed pass over the outputs)."""
    step = max(store.block, (1 << 24) // max(1, store.dataset.n_test * 2) // store.block * store.block)
    for i in range(0, fit_rows.size, step):
        values = store.read(output, rows_index(fit_rows[i : i + step]))[:, targets.start : targets.stop]
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(fit_rows[i + int(np.flatnonzero(bad.any(1))[0])])
            raise InputError(
                f"output={output!r} has NaN or infinite values (first in row {row}); refusing to fit",
                params=("output",),
            )


def _open_or_create(root: Any, name: str, description: dict[str, Any], n_targets: int, n_train: int,
                    shards: int, overwrite: bool) -> Any:
    """The group to fit into: resumed when its description matches, else created (or replaced)."""
    if name in list_datamodels(root):
        group = open_datamodels(root, name)
        meta = dict(group.attrs["datamodels"])  # type: ignore[arg-type]
        same = all(meta.get(k) == description[k] for k in _FIT_KEYS)
        if same:
            return group  # resume: finished shards are skipped
        if not overwrite:
            changed = [k for k in _FIT_KEYS if meta.get(k) != description[k]]
            raise InputError(
                f"datamodels name={name!r} exist with other settings ({', '.join(changed)}); pass overwrite=True to "
                "replace them or choose another name",
                params=("name", "overwrite"),
            )
    chunk = math.ceil(n_targets / shards)
    return create_datamodels(
        root, name, n_train=n_train, n_targets=n_targets, target_chunk=chunk,
        attrs=description, overwrite=overwrite,
    )

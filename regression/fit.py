"""Fit datamodels from a sweep store: validate, shard targets, solve, write, resume.

:func:`fit_datamodels` is the library function behind ``dmsweep fit``. It reads
only completed rows, holds out the last ``val_fraction`` of them for early stopping
and the choice of λ, splits the targets into shards of whole weight chunks and
solves each shard with :func:`regression.saga.solve_source` — as Ray tasks when Ray
is installed **and already initialised**, else one after another. A shard writes
only its own columns and returns a receipt; this process alone records finished
shards in the group's attributes, so a re-run with the same settings skips them.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from regression.loader import StoreSource, rows_index, split_batches
from regression.memory import plan_memory
from regression.rows import check_slice, to_runs
from regression.saga import SagaConfig, resolve_device, solve_source
from storage.datamodels import (
    create_datamodels,
    finished_shards,
    list_datamodels,
    mark_shard_finished,
    open_datamodels,
    shard_ranges,
    update_attrs,
    write_columns,
)
from storage.errors import DmsweepError, InputError, SolverError
from storage.sweep_store import SweepStore

__all__ = ["FitResult", "fit_datamodels", "fit_shard", "ShardJob"]

#: Folder of the store for the SAGA table when it has to live in a file.
_SCRATCH = "scratch"
_FIT_KEYS = ("rows", "train_rows", "val_rows", "targets", "output", "n_train", "config", "refit")


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard needs; plain data so it travels to a Ray task."""

    store_path: str
    name: str
    shard: int
    start: int  # first column in the datamodels group
    stop: int
    target_offset: int  # column of the store's output that group column 0 is
    output: str
    fit_rows: np.ndarray
    n_train_rows: int
    config: dict[str, Any]
    refit: bool
    device: str
    max_memory: int | None


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
        Over all targets of the group (NaN MSE without validation rows).
    config : dict
        Solver settings.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_datamodels(
    store_path: str | Path,
    *,
    name: str,
    rows: slice | None = None,
    targets: slice | None = None,
    shards: int = 1,
    device: str = "auto",
    val_fraction: float = 0.1,
    refit: bool = False,
    output: Literal["margins/test", "margins/train"] = "margins/test",
    n_alphas: int = 100,
    eps: float = 1e-6,
    lr: float | Literal["auto"] = 5e-3,
    batch_size: int = 2000,
    tol: float = 1e-4,
    max_epochs: int = 100,
    patience: int = 5,
    seed: int = 0,
    max_memory: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> FitResult:
    """Fit one datamodel per target on a store's completed rows; write ``datamodels/<name>``.

    Parameters
    ----------
    store_path : str or Path
        A sweep store.
    name : str
        Name of the datamodels group.
    rows : slice, optional
        Model rows to use (default all); only completed rows inside are used.
    targets : slice, optional
        Columns of ``output`` to fit (default all).
    shards : int
        Target shards (each a whole number of weight chunks); Ray tasks when Ray
        is initialised, else run in turn. A resumed fit keeps the original split.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    val_fraction : float
        Last fraction of the rows held out for early stopping (0 ≤ f < 1; 0 walks
        the whole path and keeps its last λ).
    refit : bool
        Re-solve at each chosen λ on train + validation rows.
    output : str
        The stored output regressed on.
    n_alphas, eps, lr, batch_size, tol, max_epochs, patience, seed
        Solver settings, see :class:`regression.saga.SagaConfig`.
    max_memory : int, optional
        Bound in bytes on this process's resident memory during a shard's fit.
    overwrite : bool
        Replace an existing group of that name fitted with other settings.
    progress : bool
        Show a rich progress bar over shards and λ steps.

    Returns
    -------
    FitResult

    Raises
    ------
    InputError
        Bad input (nothing written): no completed rows, ``rows``/``targets`` out of
        range, NaN outputs, parameter out of range, a memory bound that cannot be
        met, an existing group with other settings.
    SolverError
        A shard failed.
    """
    started = time.perf_counter()
    config = SagaConfig(
        n_alphas=n_alphas, eps=eps, lr=lr, batch_size=batch_size, tol=tol,
        max_epochs=max_epochs, patience=patience, seed=seed,
    )
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise InputError(f"shards={shards!r} (expected an int >= 1)")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction={val_fraction!r} (expected a number in [0, 1))")
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory <= 0):
        raise InputError(f"max_memory={max_memory!r} (expected a positive number of bytes)")
    resolve_device(device)  # refuse a bad device before anything is read

    store = SweepStore.open(store_path, mode="r")
    if output not in store.outputs or output not in ("margins/test", "margins/train"):
        raise InputError(f"output={output!r}: the store records {list(store.outputs)}; fit uses margins/test or margins/train")
    dataset = store.dataset
    width = dataset.n_test if output == "margins/test" else dataset.n_train
    row_range = check_slice(rows, store.num_models, "rows")
    target_range = check_slice(targets, width, "targets")
    completed = store.completed_rows()
    fit_rows = completed[(completed >= row_range.start) & (completed < row_range.stop)]
    if fit_rows.size < 2:
        raise InputError(
            f"rows [{row_range.start}:{row_range.stop}] hold {fit_rows.size} completed rows; need at least 2 to fit"
        )
    n_train_rows = _train_split(store, fit_rows, val_fraction)
    _check_finite(store, fit_rows, output, target_range)

    description = {
        "rows": to_runs(fit_rows),
        "train_rows": to_runs(fit_rows[:n_train_rows]),
        "val_rows": to_runs(fit_rows[n_train_rows:]),
        "targets": [target_range.start, target_range.stop],
        "output": output,
        "n_train": int(dataset.n_train),
        "config": asdict(config),
        "refit": bool(refit),
    }
    n_targets = len(target_range)
    # Refuse a memory bound no shard can meet before anything is written; each
    # shard plans again in its own process.
    config_rows = min(config.batch_size, fit_rows.size) + store.block
    plan_memory(
        n_rows=int(fit_rows.size), n_features=dataset.n_train, n_targets=math.ceil(n_targets / shards),
        output_width=width, batch_rows=config_rows, device=resolve_device(device), max_memory=max_memory,
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
            config=asdict(config), refit=bool(refit), device=device, max_memory=max_memory,
        )
        for i, r in enumerate(ranges)
        if i not in done
    ]

    def record(receipt: dict[str, Any]) -> None:
        mark_shard_finished(group, int(receipt["shard"]), receipt)

    ray = _initialised_ray()
    with _Progress(enabled=progress, shards=len(jobs), steps=config.n_alphas) as bar:
        if ray is not None and len(jobs) > 1:
            _run_on_ray(ray, jobs, record, bar)
        else:
            for job in jobs:
                record(fit_shard(job, on_step=bar.step))
                bar.shard_done()

    receipts = finished_shards(group)
    bias_lam = {k: np.asarray(group[k][...]) for k in ("val_mse", "nnz", "lam")}  # type: ignore[index]
    devices = sorted({str(r.get("device", "?")) for r in receipts.values()})
    wall = time.perf_counter() - started
    update_attrs(
        group,
        wall_time=float(sum(float(r.get("seconds", 0.0)) for r in receipts.values())),
        device=",".join(devices),
        finished=len(receipts) == len(ranges),
    )
    val = bias_lam["val_mse"]
    return FitResult(
        name=name, store=str(store.path), n_train_rows=int(n_train_rows),
        n_val_rows=int(fit_rows.size - n_train_rows), targets=(target_range.start, target_range.stop),
        shards=len(ranges), shards_fitted=len(jobs), shards_skipped=len(ranges) - len(jobs), wall_time=wall,
        device=",".join(devices), mean_val_mse=float(np.mean(val)) if np.isfinite(val).all() else float("nan"),
        mean_nnz=float(np.mean(bias_lam["nnz"])), mean_lam=float(np.mean(bias_lam["lam"])), config=asdict(config),
    )


def fit_shard(job: ShardJob, *, on_step: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Fit one shard's targets and write its columns; return the receipt.

    Runs in the calling process or in a Ray task (it opens the store itself).

    Returns
    -------
    dict
        ``shard``, ``columns``, ``seconds``, ``device``, ``node``, ``epochs``,
        ``n_iter``, ``step_size``, ``masks_resident``, ``table_on_device``, ``table_on_disk``.
    """
    started = time.perf_counter()
    device = resolve_device(job.device)
    store = SweepStore.open(job.store_path, mode="r")
    config = SagaConfig(**job.config)
    columns = slice(job.target_offset + job.start, job.target_offset + job.stop)
    width = store.dataset.n_test if job.output == "margins/test" else store.dataset.n_train
    source = StoreSource(store, rows=job.fit_rows, output=job.output, targets=columns, device=device)
    cuts = source.cut_points()
    train = split_batches(cuts, 0, job.n_train_rows, config.batch_size)
    val = split_batches(cuts, job.n_train_rows, source.n_rows, config.batch_size)
    plan = plan_memory(
        n_rows=source.n_rows, n_features=source.n_features, n_targets=source.n_targets, output_width=width,
        batch_rows=max(b - a for a, b in train + val), device=device, max_memory=job.max_memory,
    )
    source = StoreSource(
        store, rows=job.fit_rows, output=job.output, targets=columns, device=device,
        queue_depth=plan.queue_depth, pin=device.type == "cuda",
    )
    data = source.load() if plan.masks_resident else source
    # The last resort for the SAGA table: a file next to the datamodels, deleted afterwards.
    table_file = store.path / _SCRATCH / f"{job.name}-shard{job.shard:04d}.table" if plan.table_on_disk else None
    result = solve_source(
        data, train=train, val=val, config=config, refit=job.refit,
        table_on_device=plan.table_on_device, table_file=table_file, cache_bytes=plan.cache_bytes,
        progress=on_step,
    )
    writable = SweepStore.open(job.store_path, mode="r+")
    group = open_datamodels(writable.group, job.name)
    write_columns(
        group, job.start, weight=result.weight,
        columns={"bias": result.bias, "lam": result.lam, "val_mse": result.val_mse,
                 "nnz": result.nnz, "n_epochs": result.n_epochs},
    )
    return {
        "shard": job.shard,
        "columns": [job.start, job.stop],
        "seconds": time.perf_counter() - started,
        "solver_seconds": result.wall_time,
        "device": result.device,
        "node": socket.gethostname(),
        "epochs": int(result.n_epochs.sum()),
        "n_iter": int(result.n_iter),
        "unconverged_steps": int(result.n_unconverged.sum()),
        "step_size": float(result.step_size),
        "masks_resident": bool(plan.masks_resident),
        "table_on_device": bool(plan.table_on_device),
        "table_on_disk": bool(plan.table_on_disk),
    }


def _train_split(store: SweepStore, fit_rows: np.ndarray, val_fraction: float) -> int:
    """Rows before the validation split: the last ``val_fraction`` of rows, cut at a block edge."""
    n = int(fit_rows.size)
    if val_fraction == 0:
        return n
    starts = (fit_rows % store.block == 0) | np.r_[True, np.diff(fit_rows) != 1]
    cuts = np.flatnonzero(starts)
    cuts = cuts[(cuts > 0) & (cuts < n)]
    if cuts.size == 0:
        raise InputError(
            f"{n} completed rows form a single block of {store.block}; a validation split needs at least two blocks "
            "(or val_fraction=0)"
        )
    ideal = n - max(1, round(val_fraction * n))
    return int(cuts[np.argmin(np.abs(cuts - ideal))])


def _check_finite(store: SweepStore, fit_rows: np.ndarray, output: str, targets: range) -> None:
    """Refuse NaN/inf outputs before anything is written (one streamed pass over the outputs)."""
    step = max(store.block, (1 << 24) // max(1, store.dataset.n_test * 2) // store.block * store.block)
    for i in range(0, fit_rows.size, step):
        values = store.read(output, rows_index(fit_rows[i : i + step]))[:, targets.start : targets.stop]
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(fit_rows[i + int(np.flatnonzero(bad.any(1))[0])])
            raise InputError(f"{output} has NaN or infinite values (first in row {row}); refusing to fit")


def _open_or_create(root: Any, name: str, description: dict[str, Any], n_targets: int, n_train: int,
                    shards: int, overwrite: bool) -> Any:
    if name in list_datamodels(root):
        group = open_datamodels(root, name)
        meta = dict(group.attrs["datamodels"])  # type: ignore[arg-type]
        same = all(meta.get(k) == description[k] for k in _FIT_KEYS)
        if same:
            return group  # resume: finished shards are skipped
        if not overwrite:
            changed = [k for k in _FIT_KEYS if meta.get(k) != description[k]]
            raise InputError(
                f"datamodels {name!r} exist with other settings ({', '.join(changed)}); pass overwrite to replace them"
            )
    chunk = math.ceil(n_targets / shards)
    return create_datamodels(
        root, name, n_train=n_train, n_targets=n_targets, target_chunk=chunk,
        attrs=description, overwrite=overwrite,
    )


def _initialised_ray() -> Any:
    """The ``ray`` module when it is installed and ``ray.init`` has run, else None."""
    try:
        import ray  # optional: regression works without Ray
    except ImportError:
        return None
    return ray if ray.is_initialized() else None


def _run_on_ray(ray: Any, jobs: list[ShardJob], record: Callable[[dict[str, Any]], None], bar: _Progress) -> None:
    """One Ray task per shard (a GPU each when the cluster has GPUs); record each as it returns."""
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    remote = ray.remote(fit_shard).options(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=0)
    pending = {remote.remote(job): job for job in jobs}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            receipt = ray.get(ready[0])
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            for ref in pending:
                ray.cancel(ref)
            if isinstance(cause, DmsweepError):
                raise cause from exc
            raise SolverError(f"shard {job.shard} (columns {job.start}:{job.stop}) failed: {exc}") from exc
        record(receipt)
        bar.shard_done()


class _Progress:
    """A rich progress bar over shards and the λ steps of the running shard (or nothing)."""

    def __init__(self, *, enabled: bool, shards: int, steps: int) -> None:
        self._enabled = enabled
        self._shards, self._steps = shards, steps
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self._enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self._bar.__enter__()
            self._shard_task = self._bar.add_task("shards", total=self._shards, info="")
            self._step_task = self._bar.add_task("λ steps", total=self._steps, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def step(self, done: int, total: int, alive: int) -> None:
        if self._bar is not None:
            self._bar.update(self._step_task, completed=done, total=total, info=f"{alive} targets on the path")

    def shard_done(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._shard_task)
            tasks = {task.id: task for task in self._bar.tasks}
            if tasks[self._shard_task].finished:
                # Early stopping ends most paths before step k: show the path as done, not 37/100.
                step_task = tasks[self._step_task]
                self._bar.update(self._step_task, total=step_task.completed or 1,
                                 completed=step_task.completed or 1, info="every target stopped")
            else:
                self._bar.reset(self._step_task, total=self._steps, info="")

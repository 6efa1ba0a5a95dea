"""Target shards: one job's plain data, fitting it, and running many in turn or as Ray tasks.

A shard is a contiguous range of a datamodels group's columns (whole weight
chunks). :func:`fit_shard` fits one in whatever process runs it (it opens the
store itself), writes only its own columns and returns a small receipt; the
caller alone records finished shards. Ray is optional: :func:`run_shards` uses it
only when it is installed **and** ``ray.init`` has already run.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from regression.config import SolverConfig
from regression.engine import solve_source
from regression.factors import store_removal
from regression.loader import StoreSource, split_batches
from regression.gram import choose_engine
from regression.memory import plan_memory, state_units, usable_memory
from regression.progress import PathProgress
from storage.datamodels import open_datamodels, write_columns
from storage.errors import DmsweepError, SolverError
from storage.sweep_store import SweepStore
from workers.device import resolve_device

__all__ = ["ShardJob", "fit_shard", "run_shards", "run_shards_on_ray", "initialised_ray"]

#: Receives each shard's receipt as the shard finishes.
RecordFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard needs; plain data so it travels to a Ray task.

    Attributes
    ----------
    store_path : str
        The sweep store.
    name : str
        The datamodels group.
    shard : int
        Shard number.
    start, stop : int
        The shard's columns ``[start, stop)`` in the datamodels group.
    target_offset : int
        The column of the store's ``output`` that group column 0 is.
    output : str
        The stored output regressed on.
    fit_rows : ndarray of int64, shape [n_rows]
        Completed store rows to fit on, training rows first.
    n_train_rows : int
        How many of ``fit_rows`` are training rows (the rest validate).
    config : dict
        ``SolverConfig.model_dump(mode="json")``; :func:`fit_shard` rebuilds the config.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``, resolved where the shard runs.
    max_memory : int or None
        Bound on the fitting process's resident bytes.
    factor_scores : ndarray of float64, shape [n_rows, k], or None
        Scores of the shared noise components at ``fit_rows``
        (:func:`regression.factors.store_factors`); each target's share is
        removed from its outputs before the fit.
    """

    store_path: str
    name: str
    shard: int
    start: int
    stop: int
    target_offset: int
    output: str
    fit_rows: np.ndarray
    n_train_rows: int
    config: dict[str, Any]
    device: str
    max_memory: int | None
    factor_scores: np.ndarray | None = None


def fit_shard(job: ShardJob, *, on_step: PathProgress | None = None) -> dict[str, Any]:
    """Fit one shard's targets and write its columns; return the receipt.

    Runs in the calling process or in a Ray task (it opens the store itself).

    Parameters
    ----------
    job : ShardJob
    on_step : PathProgress, optional
        Called after every λ step of the shard's path.

    Returns
    -------
    dict
        ``shard``, ``columns``, ``seconds``, ``solver_seconds``, ``device``,
        ``node``, ``epochs``, ``n_iter``, ``flops`` (of the matrix products), ``unconverged_steps``, ``step_size``,
        ``engine``, ``precision``,
        ``masks_resident``, ``table_on_device``, ``table_on_disk``.
    """
    started = time.perf_counter()
    device = resolve_device(job.device)
    store = SweepStore.open(job.store_path, mode="r")
    config = SolverConfig(**job.config)
    columns = slice(job.target_offset + job.start, job.target_offset + job.stop)
    width = store.dataset.n_test if job.output == "margins/test" else store.dataset.n_train
    adjust = None if job.factor_scores is None else store_removal(
        store, job.fit_rows, job.factor_scores, n_train=job.n_train_rows, output=job.output, width=width,
        targets=columns)
    open_source = partial(StoreSource, store, rows=job.fit_rows, output=job.output, targets=columns, device=device,
                          splits=(job.n_train_rows,), adjust=adjust)
    source = open_source()
    cuts = source.cut_points()
    train = split_batches(cuts, 0, job.n_train_rows, config.batch_size)
    val = split_batches(cuts, job.n_train_rows, source.n_rows, config.batch_size)
    refit = split_batches(cuts, 0, source.n_rows, config.batch_size) if config.refit else []
    engine = choose_engine(config.engine, n_rows=job.n_train_rows, n_features=source.n_features,
                           memory=usable_memory(device, job.max_memory))
    plan = plan_memory(
        n_rows=source.n_rows, n_features=source.n_features, n_targets=source.n_targets, output_width=width,
        batch_rows=max(b - a for a, b in train + val + refit), device=device, max_memory=job.max_memory,
        units=state_units(refit=config.refit, average=config.average, debias=config.debias, engine=engine),
        engine=engine,
    )
    source = open_source(queue_depth=plan.queue_depth, pin=device.type == "cuda")
    data = source.load() if plan.masks_resident else source
    # The last resort for the SAGA table: a local scratch file (beside a local store, in the
    # temporary directory for one on S3), deleted afterwards.
    table_file = store.location.scratch_dir() / f"{job.name}-shard{job.shard:04d}.table" if plan.table_on_disk else None
    result = solve_source(
        data, train=train, val=val, config=config,
        table_on_device=plan.table_on_device, table_file=table_file, cache_bytes=plan.cache_bytes,
        progress=on_step, engine=engine,
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
        "flops": float(result.extra["saga_flops"]),
        "unconverged_steps": int(result.n_unconverged.sum()),
        "step_size": float(result.step_size),
        "engine": result.engine,
        "precision": result.precision,
        "masks_resident": bool(plan.masks_resident),
        "table_on_device": bool(plan.table_on_device),
        "table_on_disk": bool(plan.table_on_disk),
    }


def run_shards(jobs: Sequence[ShardJob], *, record: RecordFn, on_step: PathProgress | None = None) -> None:
    """Fit ``jobs``: as Ray tasks when Ray is initialised and there are several, else in turn here.

    Parameters
    ----------
    jobs : sequence of ShardJob
    record : callable
        Called with each receipt as its shard finishes (in this process).
    on_step : PathProgress, optional
        λ-step progress of shards fitted here (Ray tasks do not report it).

    Raises
    ------
    SolverError
        A shard failed (the others are cancelled); a project error raised by a
        shard is re-raised as it is.
    """
    ray = initialised_ray() if len(jobs) > 1 else None
    if ray is not None:
        run_shards_on_ray(ray, jobs, record=record)
        return
    for job in jobs:
        record(fit_shard(job, on_step=on_step))


def initialised_ray() -> Any:
    """The ``ray`` module when ``ray.init`` has run in this process, else None.

    Ray is optional; a process that never imported it has not initialised it, so
    this never imports it (half a second).
    """
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def run_shards_on_ray(ray: Any, jobs: Sequence[ShardJob], *, record: RecordFn) -> None:
    """One Ray task per shard (a GPU each when the cluster has GPUs); record each as it returns.

    Parameters
    ----------
    ray : module
        The initialised ``ray`` module (see :func:`initialised_ray`).
    jobs : sequence of ShardJob
    record : callable
        Called with each receipt, in the order the shards finish.
    """
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

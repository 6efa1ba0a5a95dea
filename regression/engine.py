"""LASSO regularisation paths for many targets at once, in torch: the path, and SAGA for its λ steps.

Each λ step is solved by one of two engines (``SolverConfig.engine``): minibatch
proximal SAGA, described here, or accelerated proximal gradient on the Gram
matrix (:mod:`regression.gram`), which ``engine="auto"`` picks when there are at
most twice as many features as rows and the matrix fits. Everything else below —
standardisation, the grid, warm starts, early stopping, the choice of λ, what
follows it, the output — is the same for both.

This is the paper's ``fast_l1`` (Ilyas et al. 2022, arXiv 2202.00622, appendix) as a
library function. For every target ``t`` (a column of ``Y``) it minimises the
scikit-learn Lasso objective on standardised masks

    (1 / 2n) ‖y_t − Xs w_t − b_t‖² + λ_t ‖w_t‖₁,      Xs = (X − μ) / σ  (column-wise)

(plus ``(l2 / 2) ‖w_t‖²`` for an elastic net, ``l2 > 0``)

along a decreasing geometric grid of λ per target, all targets as one matrix
``W [N, T]`` so each minibatch step is two matrix products.

The algorithm
-------------
* **Standardisation.** μ and σ are the column mean and (population) std of the fit
  rows, computed in one streamed pass; zero-variance columns get ``1/σ = 0`` (their
  weight stays 0). Because the columns of ``Xs`` are centred, the unpenalised
  intercept is exactly ``b_t = ȳ_t``; the solver works on ``y − ȳ``.
* **SAGA.** The rows are cut into ``m`` near-equal contiguous batches (store-block
  aligned). Each batch is a term of the finite sum, and the table of past residuals
  ``R [n, T]`` stores, per row, the residual ``Xs w − (y − ȳ)`` at the last visit, so
  each batch's past gradient is ``Xs_bᵀ R_b``. A step on batch ``b`` is::

      r = Xs_b W − Y_b;  g = Xs_bᵀ (r − R_b)
      W ← prox_{η λ}( W − η (m/n · g + Ḡ) );  Ḡ ← Ḡ + g / n;  R_b ← r

  with ``Ḡ = Xsᵀ R / n`` the table's average gradient and ``prox`` the soft
  threshold. Each epoch visits every batch once in an order drawn from
  ``(seed, λ step, epoch)`` only, so a target's trajectory does not depend on which
  other targets are being solved (sharded fits equal unsharded ones).
* **Step size (what ``lr`` means).** ``lr`` is the step η on the objective above in
  standardised coordinates (the gradient of the smooth part is ``Xsᵀ r / n``), the
  unit of ``fast_l1``'s ``lr``. The step actually used is
  ``min(lr, 1 / L̂)`` (``lr="auto"``: ``1 / L̂``) where ``L̂ = 1.1 · max_b m · λ_max(Xs_bᵀ Xs_b) / n`` is the
  largest smoothness constant of a batch term, estimated by power iteration in the
  same pass that fills the table. ``1/L`` is the step SAG and SAGA are run with in
  practice; ``1/(3L)`` is the one proximal SAGA is proven to converge with (Defazio
  et al. 2014). So the path runs at ``1/L̂`` under a guard: every optimum satisfies
  ``‖w_t‖₁ ≤ ‖y_t − ȳ_t‖² / (2nλ_t)`` (its objective is at most that of w = 0), and
  an iterate 10× over that bound, or a non-finite one, means divergence; the whole
  path is then redone at ``min(lr, 1/(3 L̂))``, which always converges. The step
  used is reported as ``step_size``.
* **Path and warm starts.** ``λ_max,t = max_j |Xs_jᵀ (y_t − ȳ_t)| / n`` is the smallest
  λ with ``w_t = 0``; the grid is ``λ_max,t · eps^(k/(K−1))``, k = 0…K−1, and each step
  starts from the previous step's weights and table.
* **Convergence and active set.** After each epoch a target whose weights changed by
  at most ``tol`` relative (``max_j |Δw_j| / max_j |w_j|``) is converged at this λ and
  leaves the working matrices, so it costs nothing more until the next λ. When
  each target is solved again at its chosen λ afterwards (the refit, averaging),
  the path's steps only rank the λs and use the looser ``path_tol``; the solve
  at the chosen λ uses ``tol``.
* **Early stopping and λ choice.** After each λ step the validation rows' MSE is
  computed per target; a target whose validation MSE has not improved for
  ``patience`` steps stops. The weights at its best step are kept. With
  ``choose="1se"`` the chosen λ is instead the largest one whose validation MSE
  is within one standard error of the best (glmnet's ``lambda.1se``), solved
  from the best step's weights.
* **At the chosen λ** (:mod:`regression.final`). By default (``refit=True``) each
  target is re-solved at its chosen λ on train + validation rows (new μ, σ, ȳ),
  warm-started from the chosen weights, as the published pipeline does. Options:
  ``average`` (the solutions at the chosen λ's neighbours on the grid, averaged),
  ``debias="ls"`` (least squares on each target's support) and
  ``debias="relaxed"`` (a per-target blend of the two, chosen on validation rows).
* **Precision** (:mod:`regression.products`). The two products per step run in
  fp32, TF32, or bf16 on the exact 0/1 masks with fp32 accumulation.
* **Output** is in the raw indicator space: ``weight = w / σ`` and
  ``bias = ȳ − μ · weight``, so ``masks @ weight + bias`` predicts the output.

Where it lives
--------------
The settings named above (``n_alphas`` = K, ``eps``, ``lr``, ``batch_size``,
``tol``, ``max_epochs``, ``patience``, ``seed``, ``refit``, ``l2``, ``average``,
``debias``, ``ridge``, ``precision``) are the fields of
:class:`regression.config.SolverConfig`. This module walks the path
(:func:`solve_source`: grid, early stopping, the divergence redo);
:mod:`regression.grid` makes and checks the grid; :mod:`regression.final` does what
follows the choice of λ;
:mod:`regression.moments` computes μ, σ, ȳ and ``Xsᵀ(y − ȳ)/n``;
:mod:`regression.epochs` runs the SAGA epochs at one λ and estimates the step
(or hands the step to :mod:`regression.fista`, on :mod:`regression.gram`'s matrix);
:mod:`regression.table` holds ``R``; :mod:`regression.path` is the array API.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from regression.config import SolverConfig, as_config
from regression.epochs import (
    PRACTICAL_STEP_FRACTION,
    PROVEN_STEP_FRACTION,
    Diverged,
    Problem,
    default_cache_bytes,
    prepare,
    run_fixed_lambda,
)
from regression.final import PathEnd, finish
from regression.gram import choose_engine, resolve_precision
from regression.grid import check_alphas, lambda_grid
from regression.loader import Range, RowSource
from regression.moments import Moments, compute_moments
from regression.progress import PathProgress
from regression.results import LassoPathResult
from regression.table import ResidualTable
from storage.errors import InputError

__all__ = ["solve_source"]


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (phase timings on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _val_mse(problem: Problem, source: RowSource, val: Sequence[Range], w: torch.Tensor, cols: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation MSE [A] of columns ``cols`` of ``w`` [N, A], and its standard error [A].

    The standard error is that of a mean of the rows' squared errors,
    ``sqrt((E[e⁴] − E[e²]²) / n_val)``.
    """
    sq = torch.zeros(cols.numel(), dtype=torch.float64, device=w.device)
    quad = torch.zeros_like(sq)
    rows = 0
    ybar = problem.moments.ybar.index_select(0, cols)
    for _, xs, targets in problem.batches_of(val):
        pred = xs.times(w) + ybar
        err = pred - targets.index_select(1, cols)
        err2 = (err * err).to(torch.float64)
        sq += err2.sum(0)
        quad += (err2 * err2).sum(0)
        rows += xs.rows
    n = max(rows, 1)
    mse = sq / n
    se = ((quad / n - mse * mse).clamp_min(0.0) / n).sqrt()
    return mse.to(problem.dtype), se.to(problem.dtype)


def _one_standard_error(val_path: torch.Tensor, se_path: torch.Tensor, best_k: torch.Tensor) -> torch.Tensor:
    """Per target, the first (largest-λ) step whose validation MSE is within one standard error of the best."""
    best = val_path.gather(0, best_k[None, :])[0]
    limit = best + se_path.gather(0, best_k[None, :])[0]
    within = val_path <= limit[None, :]  # NaN (steps not walked) compares false
    steps = torch.arange(val_path.shape[0], device=val_path.device)[:, None].expand_as(within)
    first = torch.where(within, steps, torch.full_like(steps, val_path.shape[0])).amin(0)
    return torch.minimum(first, best_k)


def solve_source(
    source: RowSource,
    *,
    train: Sequence[Range],
    val: Sequence[Range] = (),
    config: SolverConfig | None = None,
    alphas: np.ndarray | torch.Tensor | Sequence[float] | None = None,
    coef_init: np.ndarray | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    table_on_device: bool = True,
    table_file: str | Path | None = None,
    cache_bytes: int | None = None,
    progress: PathProgress | None = None,
    engine: str | None = None,
) -> LassoPathResult:
    """Fit the path on ``source`` rows ``train``, early-stopping on rows ``val``.

    The engine behind :func:`regression.path.saga_lasso_path` and
    :func:`regression.fit.fit_datamodels`.

    Parameters
    ----------
    source : RowSource
        Rows of masks [., N] and targets [., T].
    train, val : sequence of (int, int)
        Row ranges (in the source's numbering) forming the SAGA batches and the
        validation rows. ``val`` empty: no early stopping, the last λ is chosen.
    config : SolverConfig, optional
        Solver settings (``SolverConfig()`` when None); with ``config.refit`` and
        validation rows, each target is re-solved at its chosen λ on train + val.
    alphas : array-like, shape [K] or [K, T], optional
        Explicit non-increasing λ grid, replacing ``n_alphas``/``eps``.
    coef_init : array-like, shape [N, T], optional
        Raw-space starting weights for the first λ step.
    dtype : torch.dtype
        Compute dtype (float32, or float64 for tests).
    table_on_device : bool
        Keep the SAGA table on the device; False keeps it in pinned host memory.
    table_file : path, optional
        Keep the SAGA table in this file instead (created, and deleted at the end):
        the last resort when the host cannot hold it.
    cache_bytes : int, optional
        Device bytes for keeping standardised batches between epochs (None: half
        the free GPU memory on CUDA, a quarter of the available host memory on CPU;
        0 re-reads and re-standardises every batch every epoch).
    progress : PathProgress, optional
        ``progress(done, total, alive)`` after every λ step.
    engine : {"saga", "gram"}, optional
        The engine, already chosen (the shard jobs choose it with their memory
        plan); None: ``config.engine``, with ``"auto"`` judged against the
        device's free memory (:func:`regression.gram.choose_engine`).

    Returns
    -------
    LassoPathResult

    Raises
    ------
    InputError
        No training rows, NaN targets, or ``alphas``/``coef_init`` of the wrong
        shape or with bad values; ``params`` names which.
    """
    cfg = as_config(config)
    start = time.perf_counter()
    device = source.device
    n_features, n_targets = source.n_features, source.n_targets
    if not train:
        raise InputError("train holds no row ranges; need at least one", params=("train",))
    grid_in = check_alphas(alphas, n_targets)
    if cfg.debias == "relaxed" and not val:
        raise InputError("debias='relaxed' chooses its mix on validation rows; there are none", params=("debias",))
    if cfg.precision not in ("fp32", "auto") and dtype != torch.float32:
        raise InputError(f"precision={cfg.precision!r} needs the float32 compute dtype", params=("precision",))
    batches = list(train)
    mom = compute_moments(source, batches, dtype)
    chosen = choose_engine(cfg.engine if engine is None else engine, n_rows=mom.n, n_features=n_features,
                           memory=default_cache_bytes(device) * 2)
    precision = resolve_precision(cfg.precision, chosen, device, dtype)
    moments_seconds = _clock(device) - start
    lam_max = mom.c.abs().amax(0)
    grid = lambda_grid(lam_max, cfg, None if grid_in is None else torch.as_tensor(grid_in, dtype=dtype, device=device))

    weight = torch.zeros((n_features, n_targets), dtype=dtype, device=device)
    if coef_init is not None:
        init = torch.as_tensor(np.asarray(coef_init, dtype=np.float64) if not isinstance(coef_init, torch.Tensor) else coef_init)
        if tuple(init.shape) != (n_features, n_targets):
            raise InputError(
                f"coef_init must have shape [{n_features}, {n_targets}]; got {tuple(init.shape)}", params=("coef_init",)
            )
        if not bool(torch.isfinite(init).all()):
            raise InputError("coef_init contains NaN or infinite values", params=("coef_init",))
        weight = init.to(dtype=dtype, device=device) * mom.sd()[:, None]  # raw → standardised

    # The Gram engine backtracks per target and never goes below the proven 1/L: one attempt.
    # SAGA tries 1/L first and redoes the path at 1/(3L) if that diverges.
    fractions = (PRACTICAL_STEP_FRACTION, PROVEN_STEP_FRACTION) if chosen == "saga" else (PROVEN_STEP_FRACTION,)
    for step_fraction in fractions:
        table = None if chosen == "gram" else ResidualTable(
            source.n_rows, n_targets, device=device, dtype=dtype, on_device=table_on_device,
            spill_file=None if table_file is None else Path(table_file))
        try:
            result = _solve_path(source, train=train, val=val, cfg=cfg, dtype=dtype, table=table,
                                 cache_bytes=cache_bytes, progress=progress, mom=mom, grid=grid,
                                 weight=weight.clone(), start=start, step_fraction=step_fraction,
                                 engine=chosen, precision=precision)
            result.extra["step_fraction"] = step_fraction
            result.extra["seconds_moments"] = moments_seconds
            return result
        except Diverged:
            continue  # redo the whole path at the proven step
        finally:
            if table is not None:
                table.close()
    raise AssertionError("unreachable: the proven step never raises Diverged")


def _solve_path(
    source: RowSource, *, train: Sequence[Range], val: Sequence[Range], cfg: SolverConfig,
    dtype: torch.dtype, table: ResidualTable | None, cache_bytes: int | None, progress: PathProgress | None,
    mom: Moments, grid: torch.Tensor, weight: torch.Tensor, start: float, step_fraction: float,
    engine: str, precision: str,
) -> LassoPathResult:
    """The path itself, once the moments, the grid and the table are set up (see :func:`solve_source`)."""
    device = source.device
    n_targets = source.n_targets
    batches = list(train)
    n_steps = grid.shape[0]
    lam_max = mom.c.abs().amax(0)
    budget = default_cache_bytes(device) if cache_bytes is None else int(cache_bytes)
    guard = step_fraction > PROVEN_STEP_FRACTION
    # The path only has to rank the λs when each target is solved again at its chosen one.
    solved_again = len(val) > 0 and (cfg.refit or cfg.average > 0)
    problem = Problem(source=source, batches=batches, moments=mom, table=table, dtype=dtype, cfg=cfg,
                       engine=engine, precision=precision, cache_budget=budget, step_fraction=step_fraction,
                       guard=guard, path_tol=cfg.path_tol if solved_again else cfg.tol)
    path_started = _clock(device)
    grad = prepare(problem, weight)
    path_step, path_lipschitz = problem.step, problem.lipschitz

    has_val = len(val) > 0
    val_path = torch.full((n_steps, n_targets), float("nan"), dtype=dtype, device=device)
    se_path = torch.full_like(val_path, float("nan"))
    best_mse = torch.full((n_targets,), float("inf"), dtype=dtype, device=device)
    best_k = torch.full((n_targets,), n_steps - 1, dtype=torch.int64, device=device)
    since_best = torch.zeros(n_targets, dtype=torch.int64, device=device)
    best_w = weight.clone()
    epochs = torch.zeros(n_targets, dtype=torch.int64, device=device)
    unconverged = torch.zeros(n_targets, dtype=torch.int64, device=device)
    alive = torch.arange(n_targets, device=device)

    for k in range(n_steps):
        lam_k = grid[k].index_select(0, alive)
        # At λ ≥ λ_max a zero start is already the exact solution: skip the epochs.
        is_zero = weight.index_select(1, alive).abs().amax(0) == 0
        work = ~(is_zero & (lam_k >= lam_max.index_select(0, alive)))
        cols = alive[work]
        if cols.numel():
            ep, conv = run_fixed_lambda(problem, weight, grad, cols, lam_k[work], phase=k)
            epochs.index_add_(0, cols, ep)
            unconverged.index_add_(0, cols, (~conv).to(torch.int64))
        if has_val:
            w_alive = weight.index_select(1, alive)
            mse, se = _val_mse(problem, source, val, w_alive, alive)
            val_path[k].index_copy_(0, alive, mse)
            se_path[k].index_copy_(0, alive, se)
            improved = mse < best_mse.index_select(0, alive)
            better = alive[improved]
            best_mse.index_copy_(0, better, mse[improved])
            best_k.index_fill_(0, better, k)
            since_best.index_fill_(0, better, 0)
            best_w.index_copy_(1, better, w_alive[:, improved])
            worse = alive[~improved]
            since_best.index_add_(0, worse, torch.ones_like(worse))
            alive = alive[since_best.index_select(0, alive) < cfg.patience]
        if progress is not None:
            progress(k + 1, n_steps, int(alive.numel()))
        if alive.numel() == 0:
            break

    if not has_val:
        best_w = weight
    moved = False
    if has_val and cfg.choose == "1se":
        chosen = _one_standard_error(val_path, se_path, best_k)
        moved = bool((chosen != best_k).any())
        best_k = chosen  # the weights stay those at the minimum: the solve at the chosen λ starts there
        best_mse = val_path.gather(0, best_k[None, :])[0]
    lam_chosen = grid.gather(0, best_k[None, :])[0]
    end = PathEnd(weight=best_w, index=best_k, grid=grid)
    path_done = _clock(device)
    final = finish(problem, source, val=val, cfg=cfg, dtype=dtype, table=table, budget=budget, end=end,
                    grad=grad, step_fraction=step_fraction, guard=guard, resolve=moved)
    final.extra["seconds_final"] = _clock(device) - path_done
    final.extra["seconds_path"] = path_done - path_started
    epochs += final.epochs
    unconverged += final.unconverged
    best_w, final_mom = final.weight, final.moments
    raw = best_w * final_mom.inv_sd[:, None]
    bias = final_mom.ybar - final_mom.mu @ raw
    best_val = best_mse if has_val else torch.full_like(best_mse, float("nan"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LassoPathResult(
        weight=raw.to(torch.float32).cpu().numpy(),
        bias=bias.to(torch.float32).cpu().numpy(),
        lam=lam_chosen.to(torch.float32).cpu().numpy(),
        lam_index=best_k.to(torch.int32).cpu().numpy(),
        val_mse=best_val.to(torch.float32).cpu().numpy(),
        nnz=(raw != 0).sum(0).to(torch.int32).cpu().numpy(),
        n_epochs=epochs.to(torch.int32).cpu().numpy(),
        n_unconverged=unconverged.to(torch.int32).cpu().numpy(),
        lambdas=grid.to(torch.float32).cpu().numpy(),
        val_mse_path=val_path.to(torch.float32).cpu().numpy(),
        n_iter=final.n_iter,
        step_size=path_step,
        lipschitz=path_lipschitz,
        n_train=mom.n,
        n_val=sum(b - a for a, b in val),
        refit=bool(cfg.refit and has_val),
        wall_time=time.perf_counter() - start,
        device=str(device),
        extra={"n_steps_walked": float(k + 1), **final.extra},
        mix=None if final.mix is None else final.mix.to(torch.float32).cpu().numpy(),
        engine=problem.engine,
        precision=problem.precision,
    )


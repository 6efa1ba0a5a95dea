"""What happens at each target's chosen λ: refit, neighbourhood averaging, least-squares debias.

The path (:mod:`regression.engine`) ends with each target's best λ step ``k_t``
(by validation MSE) and its weights there. This module turns those into the
weights that are written:

* **Neighbourhood average** (``average = a``): the LASSO solved at the grid's
  ``λ_{k_t − a} … λ_{k_t + a}`` (the steps that exist), warm-started one from the
  next, and the weights averaged. The validation-MSE curve is flat and noisy
  near its minimum; the average does not bet on one point of it.
* **Refit** (``refit``): the same solves on train + validation rows (their own μ,
  σ, ȳ), warm-started from the chosen weights: the published pipeline's last
  step, which uses every row once λ is chosen.
* **Least-squares debias** (``debias="ls"``): the LASSO shrinks every weight it
  keeps towards 0; least squares on each target's selected examples (its
  support), with an optional ridge, removes that shrinkage. It is solved by
  conjugate gradients on the normal equations restricted to the support, all
  targets at once, one pass over the rows per iteration, so it streams and runs on
  any device like the path.
* **Relaxed** (``debias="relaxed"``): the blend ``γ_t·LASSO + (1 − γ_t)·LS`` per
  target, with ``γ_t ∈ [0, 1]`` minimising the validation MSE of the models fitted
  on the training rows (the relaxed LASSO of Meinshausen 2007 in the form of
  Hastie, Tibshirani and Tibshirani 2020). The blend's MSE is a quadratic in γ,
  so the choice is exact and costs one pass over the validation rows; the same γ
  is then applied to the refitted weights.

Every choice uses validation rows only; held-out rows never reach the solver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from regression.config import SolverConfig
from regression.epochs import PATH_PHASES, REFIT_STEP, Problem, prepare, run_fixed_lambda
from regression.loader import Range, RowSource, split_batches
from regression.moments import Moments, compute_moments
from regression.table import ResidualTable

__all__ = ["PathEnd", "FinalWeights", "finish", "solve_near_chosen", "least_squares_on_support", "relaxed_mix"]

#: Batch-order phase ids of the neighbourhood solves after the first (beyond any grid's λ steps).
_NEIGHBOUR_PHASES = PATH_PHASES

#: Relative residual ‖b − A x‖ / ‖b‖ at which conjugate gradients stop: about what the
#: products can resolve (float64 in tests; fp32, and the rounded TF32 and bf16 operands).
_CG_RTOL = {"float64": 1e-12, "fp32": 1e-5, "tf32": 1e-3, "bf16": 5e-3}


@dataclass
class PathEnd:
    """Where the path left each target.

    Attributes
    ----------
    weight : Tensor, shape [N, T]
        Weights at each target's chosen step, in the path's standardised coordinates.
    index : Tensor of int64, shape [T]
        The chosen step per target.
    grid : Tensor, shape [K, T]
        The λ grid.
    """

    weight: torch.Tensor
    index: torch.Tensor
    grid: torch.Tensor


def solve_near_chosen(
    problem: Problem, weight: torch.Tensor, grad: torch.Tensor, end: PathEnd, average: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LASSO on ``problem``'s rows at each target's chosen λ, averaged over ``average`` steps either side.

    Parameters
    ----------
    problem : Problem
        The rows to solve on, with the table filled at ``weight`` (:func:`regression.epochs.prepare`).
    weight, grad : Tensor, shape [N, T]
        The start (std. coords of ``problem``) and the table's gradient average;
        updated in place as the solves walk from ``λ_{k−a}`` down to ``λ_{k+a}``.
    end : PathEnd
        The chosen steps and the grid.
    average : int
        Steps on either side of the chosen one (0: the chosen λ alone).

    Returns
    -------
    weight : Tensor, shape [N, T]
        The average of the solutions at the steps that exist on the grid.
    epochs, unconverged : Tensor of int64, shape [T]
        Epochs spent, and solves that ended at ``max_epochs``, per target.
    """
    n_steps, n_targets = end.grid.shape
    device = weight.device
    everyone = torch.arange(n_targets, device=device)
    total = torch.zeros_like(weight)
    count = torch.zeros(n_targets, dtype=weight.dtype, device=device)
    epochs = torch.zeros(n_targets, dtype=torch.int64, device=device)
    unconverged = torch.zeros(n_targets, dtype=torch.int64, device=device)
    for offset in range(-average, average + 1):
        steps = end.index + offset
        valid = (steps >= 0) & (steps < n_steps)
        cols = everyone[valid]
        if cols.numel() == 0:
            continue
        lam = end.grid.gather(0, steps.clamp(0, n_steps - 1)[None, :])[0]
        # Larger λ first: each solve starts from the sparser one before it. With
        # average=0 this is the single refit at the chosen λ (phase REFIT_STEP);
        # the others get batch orders of their own, past every λ step's.
        phase = REFIT_STEP if offset == -average else _NEIGHBOUR_PHASES + offset + average
        ep, conv = run_fixed_lambda(problem, weight, grad, cols, lam[cols], phase=phase)
        epochs.index_add_(0, cols, ep)
        unconverged.index_add_(0, cols, (~conv).to(torch.int64))
        total[:, cols] += weight[:, cols]
        count[cols] += 1
    return total / count.clamp_min(1)[None, :], epochs, unconverged


def _normal_product(problem: Problem, p: torch.Tensor, support: torch.Tensor, ridge: float) -> torch.Tensor:
    """``S ⊙ (Xsᵀ Xs (S ⊙ p)) / n + ridge · p`` over ``problem``'s rows: one pass, two products per batch."""
    masked = p * support
    if problem.gram is not None:  # XsᵀXs / n is the Gram engine's matrix
        problem.n_iter += 1
        problem.flops += 2.0 * p.shape[0] * p.shape[0] * p.shape[1]
        return problem.gram.times(masked) * support + ridge * masked
    out = torch.zeros_like(p)
    for _, xs, _ in problem.batches_of(problem.batches):
        out += xs.t_times(xs.times(masked))
    problem.n_iter += len(problem.batches)
    problem.flops += 4.0 * problem.moments.n * p.shape[0] * p.shape[1]
    return out * support / problem.moments.n + ridge * masked


def least_squares_on_support(
    problem: Problem, start: torch.Tensor, support: torch.Tensor, *, ridge: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares (with an optional ridge) on each target's support, by conjugate gradients.

    Solves, per target ``t`` and with ``w_t`` zero off its support ``S_t``,

        minimise  (1 / 2n) ‖y_t − ȳ_t − Xs w_t‖² + (ridge / 2) ‖w_t‖²

    on ``problem``'s rows: the normal equations ``(Xs_Sᵀ Xs_S / n + ridge I) w = c_S``
    with ``c = Xsᵀ(y − ȳ)/n`` from the problem's moments. Because Xs is centred and
    the intercept is ȳ, this is ordinary least squares with an intercept on the raw
    support columns.

    Parameters
    ----------
    problem : Problem
        The rows and their moments.
    start : Tensor, shape [N, T]
        Starting weights (the LASSO's, in the problem's std. coords); zero off the support.
    support : Tensor of bool, shape [N, T]
        Each target's selected examples.
    ridge : float
        L2 penalty (0: plain least squares).
    max_iter : int
        Iterations at most (each one pass over the rows).

    Returns
    -------
    weight : Tensor, shape [N, T]
    iterations : Tensor of int64, shape [T]
        Iterations until each target's relative residual fell below the tolerance.
    """
    s = support.to(start.dtype)
    # The Gram engine's normal products are in the compute dtype whatever its in-step precision.
    exact = start.dtype == torch.float64 or problem.gram is not None
    rtol = _CG_RTOL["float64" if start.dtype == torch.float64 else "fp32" if exact else problem.precision]
    b = problem.moments.c * s
    x = start * s
    r = b - _normal_product(problem, x, s, ridge)
    p = r.clone()
    rs = (r * r).sum(0)
    target = (rtol * b.norm(dim=0)) ** 2
    iterations = torch.zeros(start.shape[1], dtype=torch.int64, device=start.device)
    active = rs > target
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        ap = _normal_product(problem, p, s, ridge)
        curvature = (p * ap).sum(0)
        # Converged columns stop moving: their step is 0.
        alpha = torch.where(active & (curvature > 0), rs / curvature.clamp_min(torch.finfo(rs.dtype).tiny),
                            torch.zeros_like(rs))
        x += alpha[None, :] * p
        r -= alpha[None, :] * ap
        rs_new = (r * r).sum(0)
        iterations += active.to(torch.int64)
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta[None, :] * p
        rs = rs_new
        active = active & (rs > target)
    return x * s, iterations


def relaxed_mix(
    problem: Problem, val: Sequence[Range], lasso: torch.Tensor, least_squares: torch.Tensor
) -> torch.Tensor:
    """Per-target γ ∈ [0, 1] minimising the validation MSE of ``γ·lasso + (1 − γ)·least_squares``.

    Both weights are in ``problem``'s standardised coordinates, fitted on its
    (training) rows; ``val`` are the validation rows. With ``e_L``, ``e_O`` the two
    validation errors, the blend's error is ``e_O + γ (e_L − e_O)``, whose squared
    norm is least at ``γ = −⟨e_O, e_L − e_O⟩ / ‖e_L − e_O‖²`` (clipped; 1 when both agree).

    Returns
    -------
    Tensor, shape [T]
    """
    ybar = problem.moments.ybar
    cross = torch.zeros(lasso.shape[1], dtype=torch.float64, device=lasso.device)
    spread = torch.zeros_like(cross)
    for _, xs, targets in problem.batches_of(val):
        err_ls = xs.times(least_squares) + ybar - targets
        diff = xs.times(lasso) + ybar - targets - err_ls
        cross += (err_ls * diff).sum(0, dtype=torch.float64)
        spread += (diff * diff).sum(0, dtype=torch.float64)
    gamma = torch.where(spread > 0, -cross / spread.clamp_min(1e-300), torch.ones_like(spread))
    return gamma.clamp(0.0, 1.0).to(lasso.dtype)


@dataclass
class FinalWeights:
    """The weights to write (std. coords of ``moments``) and what producing them cost."""

    weight: torch.Tensor
    moments: Moments
    epochs: torch.Tensor
    unconverged: torch.Tensor
    n_iter: int
    mix: torch.Tensor | None
    extra: dict[str, float]


def _even_batches(source: RowSource, ranges: Sequence[Range], batch_size: int) -> list[Range]:
    """``ranges`` merged into contiguous spans, each cut into near-equal batches at the source's cut points."""
    spans: list[list[int]] = []
    for a, b in sorted(ranges):
        if spans and spans[-1][1] == a:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    cuts = source.cut_points()
    return [batch for a, b in spans for batch in split_batches(cuts, a, b, batch_size)]


def finish(
    problem: Problem, source: RowSource, *, val: Sequence[Range], cfg: SolverConfig, dtype: torch.dtype,
    table: ResidualTable | None, budget: int, end: PathEnd, grad: torch.Tensor, step_fraction: float, guard: bool,
    resolve: bool = False,
) -> FinalWeights:
    """From the path's chosen weights to the written ones: average, refit, debias (the module docstring).

    ``problem`` is the path's (training rows, its table and moments), ``grad`` its
    table's gradient average; with a refit, the moments of train + ``val`` rows are
    computed afresh and the solves run on those rows. ``resolve``: the chosen
    steps are not those of ``end.weight`` (``choose="1se"``), so solve there even
    without a refit.
    """
    n_targets = end.weight.shape[1]
    zeros = torch.zeros(n_targets, dtype=torch.int64, device=end.weight.device)
    refit = cfg.refit and len(val) > 0
    extra: dict[str, float] = {}
    mix: torch.Tensor | None = None
    ls_train: torch.Tensor | None = None
    if cfg.debias == "relaxed":
        # γ is chosen on validation rows, from models fitted on the training rows alone.
        ls_train, it = least_squares_on_support(problem, end.weight, end.weight != 0, ridge=cfg.ridge,
                                                max_iter=cfg.max_epochs)
        mix = relaxed_mix(problem, val, end.weight, ls_train)
        extra["least_squares_iterations"] = float(it.float().mean())
        extra["mean_mix"] = float(mix.mean())

    if not refit and cfg.average == 0 and not resolve:
        lasso, mom, work, epochs, unconverged = end.weight, problem.moments, problem, zeros, zeros
    else:
        work, weight = problem, end.weight.clone()
        mom = problem.moments
        if refit:
            rows = _even_batches(source, list(problem.batches) + list(val), cfg.batch_size)
            mom = compute_moments(source, rows, dtype)
            weight = end.weight * problem.moments.inv_sd[:, None] * mom.sd()[:, None]  # path std → raw → refit std
            problem.cache.clear()  # standardised with the path's moments; free it first
            work = Problem(source=source, batches=rows, moments=mom, table=table, dtype=dtype, cfg=cfg,
                           engine=problem.engine, precision=problem.precision, cache_budget=budget,
                           step_fraction=step_fraction, guard=guard)
            work.n_iter, work.flops = problem.n_iter, problem.flops
            if problem.gram is not None:  # count the validation rows into the path's matrix
                work.gram = problem.gram.add_rows(source, val, mom)
                problem.gram = None
                work.flops += 2.0 * sum(b - a for a, b in val) * end.weight.shape[0] ** 2
            grad = prepare(work, weight)
        lasso, epochs, unconverged = solve_near_chosen(work, weight, grad, end, cfg.average)

    final = lasso
    if cfg.debias != "none":
        if cfg.debias == "relaxed" and not refit and cfg.average == 0 and not resolve:
            least_squares = ls_train
        else:
            least_squares, it = least_squares_on_support(work, lasso, lasso != 0, ridge=cfg.ridge,
                                                         max_iter=cfg.max_epochs)
            extra["least_squares_iterations"] = float(it.float().mean())
        assert least_squares is not None  # computed above for 'relaxed' without refit or averaging
        final = least_squares if mix is None else mix[None, :] * lasso + (1 - mix[None, :]) * least_squares
    return FinalWeights(weight=final, moments=mom, epochs=epochs, unconverged=unconverged, n_iter=work.n_iter,
                  mix=mix, extra={**extra, "saga_flops": work.flops})

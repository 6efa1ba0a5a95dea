"""SAGA epochs at a fixed λ: the problem a run shares, the table fill and step, the proximal steps.

See :mod:`regression.engine` for the algorithm; this module is its inner loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from regression.config import SolverConfig
from regression.fista import FIRST_STEP_FACTOR, References, solve_gram_lambda
from regression.gram import GramSystem, build_gram
from regression.loader import Range, RowSource
from regression.memory import available_host
from regression.moments import Moments
from regression.products import Design, make_design, top_eigenvalue
from regression.table import ResidualTable
from storage.errors import SolverError

__all__ = [
    "PRACTICAL_STEP_FRACTION",
    "PROVEN_STEP_FRACTION",
    "PATH_PHASES",
    "REFIT_STEP",
    "Diverged",
    "Problem",
    "default_cache_bytes",
    "prepare",
    "run_fixed_lambda",
]

_POWER_ITERATIONS = 20
_LIPSCHITZ_SAFETY = 1.1  # power iteration approaches λ_max from below
#: Proximal SAGA's proven step is 1/(3L) (Defazio et al. 2014); 1/L is the step
#: SAG/SAGA are run with in practice and converges ~2x faster here (docs/benchmarks.md).
#: The path starts at 1/L and, if it diverges, is redone from the start at 1/(3L).
PRACTICAL_STEP_FRACTION = 1.0
PROVEN_STEP_FRACTION = 1.0 / 3.0
#: An iterate this many times over the bound ‖w‖₁ ≤ ‖y − ȳ‖² / (2nλ), which every
#: optimum satisfies (its objective is at most that of w = 0), is diverging.
_DIVERGENCE_FACTOR = 10.0
REFIT_STEP = -1  # the λ-step id of the refit phase in the batch-order seed
#: Phases 0 … PATH_PHASES − 1 are the path's λ steps; the solves after it use other ids.
PATH_PHASES = 1 << 20


@dataclass
class GramHistory:
    """Each target's solution at the path's previous λ step, and the λs of its last two steps."""

    weight: torch.Tensor
    lam1: torch.Tensor
    lam2: torch.Tensor
    phase: int


class Diverged(Exception):
    """The practical step made the path diverge: redo it at the proven step."""


@dataclass
class Problem:
    """Everything one SAGA run over a set of batches shares."""

    source: RowSource
    batches: list[Range]
    moments: Moments
    table: ResidualTable | None
    dtype: torch.dtype
    cfg: SolverConfig
    #: ``saga`` or ``gram`` (resolved from ``cfg.engine``) and the products' precision (from ``cfg.precision``).
    engine: str = "saga"
    precision: str = "fp32"
    step: float = 0.0
    lipschitz: float = 0.0
    n_iter: int = 0
    flops: float = 0.0  # of the SAGA matrix products (2 per step, 2·B·N·A each)
    cache_budget: int = 0
    cache: dict[Range, tuple[Design, torch.Tensor]] = field(default_factory=dict)
    cache_used: int = 0
    step_fraction: float = PROVEN_STEP_FRACTION
    #: The tolerance of the path's λ steps (phase ≥ 0): ``cfg.path_tol`` when the chosen λ
    #: is solved again afterwards, else ``cfg.tol`` (set by the engine).
    path_tol: float | None = None
    #: Watch for divergence (only while trying the practical step).
    guard: bool = False
    #: ‖y_t − ȳ_t‖² / n per target, for the divergence bound (set by prepare).
    y_power: torch.Tensor | None = None
    #: The Gram engine's matrix (set by prepare when ``engine == "gram"``), its per-target
    #: steps and the path's last solutions for the extrapolated warm start.
    gram: GramSystem | None = None
    gram_steps: torch.Tensor | None = None
    gram_history: GramHistory | None = None
    gram_references: References | None = None

    def standardise(self, masks: torch.Tensor) -> Design:
        """The batch ``(masks − μ) / σ`` [B, N] behind the products of ``precision``."""
        # The Gram engine only multiplies batches to score validation rows: in the compute dtype.
        precision = self.precision if self.engine == "saga" else "fp32"
        return make_design(masks, self.moments.mu, self.moments.inv_sd, precision=precision,  # type: ignore[arg-type]
                           dtype=self.dtype)

    def batches_of(self, ranges: Sequence[Range]) -> Iterator[tuple[Range, Design, torch.Tensor]]:
        """Yield ``(range, standardised masks [B, N], targets [B, T])`` per range.

        Standardising a batch costs a pass over B·N values, as much as the two
        products when few targets are active late on the path; batches are kept
        standardised on the device while ``cache_budget`` bytes allow.
        """
        missing = [r for r in ranges if r not in self.cache]
        fresh = iter(self.source.iterate(missing))
        for rng in ranges:
            hit = self.cache.get(rng)
            if hit is not None:
                yield rng, hit[0], hit[1]
                continue
            masks, targets = next(fresh)
            xs, y = self.standardise(masks), targets.to(self.dtype)
            size = xs.nbytes + y.numel() * y.element_size()
            if self.cache_used + size <= self.cache_budget:
                self.cache[rng] = (xs, y)
                self.cache_used += size
            yield rng, xs, y

    def tolerance(self, phase: int) -> float:
        """The convergence tolerance of a solve: the path's for its λ steps, ``cfg.tol`` for the rest."""
        on_path = 0 <= phase < PATH_PHASES
        return self.path_tol if on_path and self.path_tol is not None else self.cfg.tol

    def order(self, phase: int, epoch: int) -> list[int]:
        """The batch visiting order of one epoch (a permutation of ``range(len(batches))``)."""
        # Depends on (seed, phase, epoch) only, never on which targets are active,
        # so a sharded fit walks every target exactly as the unsharded one does.
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, phase + 1, epoch]))
        return rng.permutation(len(self.batches)).tolist()


def default_cache_bytes(device: torch.device) -> int:
    """Bytes of standardised batches kept between epochs when the caller does not say."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.5)
    return int(available_host() * 0.25)


def prepare(problem: Problem, weight: torch.Tensor) -> torch.Tensor:
    """Fill the table at ``weight`` (std. coords, [N, T]); return Ḡ; estimate the step.

    One pass over the problem's batches: the residuals of every row at the start
    point go into the table, their gradient average is Ḡ, and a power iteration per
    batch gives the smoothness constant that caps the step.
    """
    source, mom = problem.source, problem.moments
    if problem.engine == "gram":
        if problem.gram is None:
            problem.gram = build_gram(source, problem.batches, mom, problem.dtype, problem.precision)
            problem.flops += 2.0 * mom.n * source.n_features * source.n_features
        problem.lipschitz, problem.step = problem.gram.lipschitz, problem.gram.step
        return weight.new_zeros(0)  # no table, no table gradient
    assert problem.table is not None  # SAGA always has one
    zero_start = not bool(weight.any())
    grad = -mom.c.clone() if zero_start else torch.zeros_like(weight)
    m = len(problem.batches)
    gen = torch.Generator(device="cpu").manual_seed(problem.cfg.seed)
    v0 = torch.randn(source.n_features, generator=gen, dtype=torch.float64).to(problem.dtype).to(source.device)
    worst = 0.0
    y_power = torch.zeros(source.n_targets, dtype=problem.dtype, device=source.device)
    for (r0, r1), xs, targets in problem.batches_of(problem.batches):
        yc = targets - mom.ybar
        y_power += (yc * yc).sum(0)
        resid = -yc if zero_start else xs.times(weight) - yc
        problem.table.put(r0, r1, None, resid)
        if not zero_start:
            grad += xs.t_times(resid)
        worst = max(worst, m * _top_eigenvalue(xs, v0) / mom.n)
    if not zero_start:
        grad /= mom.n
    problem.y_power = y_power / mom.n
    problem.lipschitz = _LIPSCHITZ_SAFETY * worst
    safe = problem.step_fraction / problem.lipschitz if problem.lipschitz > 0 else math.inf
    problem.step = safe if problem.cfg.lr == "auto" else min(float(problem.cfg.lr), safe)
    if not math.isfinite(problem.step):
        problem.step = 1.0  # every column is constant: any step leaves the weights at 0
    return grad


def _top_eigenvalue(xs: Design, v0: torch.Tensor) -> float:
    """Largest eigenvalue of ``xsᵀ xs`` by power iteration."""
    return top_eigenvalue(lambda v: xs.t_times(xs.times(v)), v0[:, None], _POWER_ITERATIONS)


def run_fixed_lambda(
    problem: Problem,
    weight: torch.Tensor,
    grad: torch.Tensor,
    cols: torch.Tensor,
    lam: torch.Tensor,
    phase: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAGA epochs at fixed per-target λ until each target converges.

    Parameters
    ----------
    problem : Problem
        The run's batches, moments, table and step; its ``n_iter`` and ``flops``
        are counted up.
    weight, grad : Tensor, shape [N, T_all]
        Weights (std. coords) and table gradient average; columns ``cols`` are
        updated in place.
    cols : Tensor of int64, shape [A]
        Targets to solve.
    lam : Tensor, shape [A]
        Their λ.
    phase : int
        λ-step id (seeds the batch order).

    Returns
    -------
    epochs : Tensor of int64, shape [A]
    converged : Tensor of bool, shape [A]

    Raises
    ------
    Diverged
        Under the guard, an iterate left the bound every optimum obeys (or went
        non-finite): the caller redoes the path at the proven step.
    SolverError
        Non-finite weights at the proven step (a bug).
    """
    if problem.gram is not None:
        return _run_gram(problem, weight, cols, lam, phase)
    cfg, mom, table = problem.cfg, problem.moments, problem.table
    tol = problem.tolerance(phase)
    assert table is not None  # SAGA always has one
    step, n, m = problem.step, mom.n, len(problem.batches)
    n_all = weight.shape[1]
    epochs = torch.zeros(cols.numel(), dtype=torch.int64, device=weight.device)
    converged = torch.zeros(cols.numel(), dtype=torch.bool, device=weight.device)
    pos = torch.arange(cols.numel(), device=weight.device)
    act = cols
    full = act.numel() == n_all and bool((act == torch.arange(n_all, device=act.device)).all())
    w = weight if full else weight.index_select(1, act)
    g_avg = grad if full else grad.index_select(1, act)
    thr = step * lam
    # The elastic net's ridge part is exact in the prox: soft-threshold, then shrink by 1/(1 + η·l2).
    shrink = 1.0 / (1.0 + step * cfg.l2)
    ybar = mom.ybar.index_select(0, act)
    assert problem.y_power is not None
    bound = _DIVERGENCE_FACTOR * problem.y_power.index_select(0, act) / (2 * lam.clamp_min(torch.finfo(lam.dtype).tiny))

    def write_back(keep: torch.Tensor | None) -> None:
        """Copy converged columns (all when ``keep`` is None) back; compact to the ``keep`` ones."""
        nonlocal w, g_avg, act, pos, thr, ybar, bound, full
        if full and keep is None:
            return  # ``w`` is ``weight`` itself
        done = slice(None) if keep is None else ~keep
        weight.index_copy_(1, act[done], w[:, done])
        grad.index_copy_(1, act[done], g_avg[:, done])
        if keep is not None:
            w, g_avg = w[:, keep].contiguous(), g_avg[:, keep].contiguous()
            act, pos, thr, ybar, bound = act[keep], pos[keep], thr[keep], ybar[keep], bound[keep]
            full = False

    for epoch in range(cfg.max_epochs):
        w_prev = w.clone()
        order = problem.order(phase, epoch)
        ranges = [problem.batches[i] for i in order]
        cols_arg = None if full else act
        for (r0, r1), xs, y in problem.batches_of(ranges):
            if cols_arg is not None:
                y = y.index_select(1, act)
            resid = xs.times(w)
            resid -= y - ybar
            delta = resid - table.get(r0, r1, cols_arg)
            g = xs.t_times(delta)
            w.add_(g, alpha=-step * m / n).add_(g_avg, alpha=-step)
            g_avg.add_(g, alpha=1.0 / n)
            table.put(r0, r1, cols_arg, resid)
            # Soft threshold: w − clamp(w, −τ, τ) is sign(w)·max(|w| − τ, 0).
            w.sub_(torch.maximum(torch.minimum(w, thr), -thr))
            if shrink != 1.0:
                w.mul_(shrink)
            problem.n_iter += 1
            problem.flops += 4.0 * xs.rows * xs.cols * w.shape[1]
        epochs[pos] += 1
        change = (w - w_prev).abs().amax(0) / w.abs().amax(0).clamp_min(torch.finfo(w.dtype).tiny)
        done = change <= tol
        finite = bool(torch.isfinite(w).all())
        if problem.guard and (not finite or bool((w.abs().sum(0) > bound).any())):
            raise Diverged()
        if not finite:
            raise SolverError("SAGA diverged (non-finite weights) at the proven step 1/(3L); this is a bug")
        if bool(done.any()):
            converged[pos[done]] = True
            if bool(done.all()):
                break
            write_back(~done)
    write_back(None)
    return epochs, converged


def _run_gram(problem: Problem, weight: torch.Tensor, cols: torch.Tensor, lam: torch.Tensor, phase: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`run_fixed_lambda` on the Gram engine (:func:`regression.fista.solve_gram_lambda`).

    Along the path (consecutive phases), each target starts from its last two
    solutions extrapolated to the new λ: the LASSO path is piecewise linear in λ,
    so ``w_k ≈ w_{k−1} + (λ_k − λ_{k−1}) / (λ_{k−1} − λ_{k−2}) · (w_{k−1} − w_{k−2})``.
    """
    gram, cfg = problem.gram, problem.cfg
    assert gram is not None
    if problem.gram_steps is None:
        problem.gram_steps = torch.full((weight.shape[1],), FIRST_STEP_FACTOR * gram.step, dtype=weight.dtype,
                                        device=weight.device)
    start = None
    history = problem.gram_history
    on_path = 0 <= phase < PATH_PHASES
    w1 = weight.index_select(1, cols) if on_path else None  # one gather of the columns, used twice
    if w1 is not None and history is not None and history.phase == phase - 1:
        lam1, lam2 = history.lam1.index_select(0, cols), history.lam2.index_select(0, cols)
        gap = lam1 - lam2
        ratio = torch.where((gap != 0) & (lam2 > 0), (lam - lam1) / torch.where(gap != 0, gap, torch.ones_like(gap)),
                            torch.zeros_like(gap))
        start = torch.addcmul(w1, w1 - history.weight.index_select(1, cols), ratio[None, :])
    if w1 is not None:
        if history is None:
            history = GramHistory(weight=torch.zeros_like(weight), lam1=torch.zeros_like(problem.gram_steps),
                                  lam2=torch.zeros_like(problem.gram_steps), phase=phase)
            problem.gram_history = history
        history.weight.index_copy_(1, cols, w1)
        history.lam2.index_copy_(0, cols, history.lam1.index_select(0, cols))
        history.lam1.index_copy_(0, cols, lam)
        history.phase = phase
    if problem.gram_references is None:
        problem.gram_references = References.empty(weight)
    iterations, converged, products = solve_gram_lambda(
        gram, problem.moments.c, weight, cols, lam, problem.gram_steps, tol=problem.tolerance(phase),
        max_iter=cfg.max_epochs, l2=cfg.l2, start=w1 if start is None else start,
        references=problem.gram_references)
    problem.n_iter += int(iterations.max()) if iterations.numel() else 0
    problem.flops += 2.0 * products * weight.shape[0] * weight.shape[0]
    if not bool(torch.isfinite(weight.index_select(1, cols)).all()):
        raise SolverError("the Gram engine produced non-finite weights; this is a bug")
    return iterations, converged

"""LASSO regularisation paths for many targets at once: minibatch proximal SAGA in torch.

This is the paper's ``fast_l1`` (Ilyas et al. 2022, arXiv 2202.00622, appendix) as a
library function. For every target ``t`` (a column of ``Y``) it minimises the
scikit-learn Lasso objective on standardised masks

    (1 / 2n) ‖y_t − Xs w_t − b_t‖² + λ_t ‖w_t‖₁,      Xs = (X − μ) / σ  (column-wise)

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
  leaves the working matrices, so it costs nothing more until the next λ.
* **Early stopping and λ choice.** After each λ step the validation rows' MSE is
  computed per target; a target whose validation MSE has not improved for
  ``patience`` steps stops. The weights at its best step are kept.
* **Refit.** Optionally, each target is re-solved at its chosen λ on train +
  validation rows (new μ, σ, ȳ), warm-started from the chosen weights.
* **Output** is in the raw indicator space: ``weight = w / σ`` and
  ``bias = ȳ − μ · weight``, so ``masks @ weight + bias`` predicts the output.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from regression.loader import Range, RowSource, TensorSource, split_batches
from regression.memory import available_host
from regression.params import SAGA_CONSTRAINTS, check_params
from storage.errors import InputError, SolverError

__all__ = [
    "SagaConfig",
    "LassoPathResult",
    "ProgressFn",
    "saga_lasso_path",
    "solve_source",
    "resolve_device",
    "default_cache_bytes",
]

# Called after every λ step: (steps done, steps in all, targets still on the path).
ProgressFn = Callable[[int, int, int], None]

_POWER_ITERATIONS = 20
_LIPSCHITZ_SAFETY = 1.1  # power iteration approaches λ_max from below
#: Proximal SAGA's proven step is 1/(3L) (Defazio et al. 2014); 1/L is the step
#: SAG/SAGA are run with in practice and converges ~2x faster here (docs/benchmarks.md).
#: The path starts at 1/L and, if it diverges, is redone from the start at 1/(3L).
_PRACTICAL_STEP_FRACTION = 1.0
_PROVEN_STEP_FRACTION = 1.0 / 3.0
#: An iterate this many times over the bound ‖w‖₁ ≤ ‖y − ȳ‖² / (2nλ), which every
#: optimum satisfies (its objective is at most that of w = 0), is diverging.
_DIVERGENCE_FACTOR = 10.0
_REFIT_STEP = -1  # the λ-step id of the refit phase in the batch-order seed


@dataclass(frozen=True)
class SagaConfig:
    """Solver settings (published ``fast_l1`` defaults where the paper gives them).

    Attributes
    ----------
    n_alphas : int
        Number of λ steps ``k`` on the path (paper: 100).
    eps : float
        Ratio ``λ_min / λ_max`` (paper: 1e-6); 0 < eps < 1.
    lr : float or "auto"
        Requested SAGA step in standardised units (paper: 5e-3); capped at
        ``1/L̂``, and at the proven-safe ``1/(3 L̂)`` should the path diverge (see
        the module docstring). ``"auto"`` takes the cap itself.
    batch_size : int
        Rows per minibatch (paper: 2000); batches begin at store-block edges.
    tol : float
        Relative weight change per epoch below which a target is converged.
    max_epochs : int
        Epochs per λ step (and for the refit) before moving on unconverged.
    patience : int
        λ steps without a validation-MSE improvement before a target stops.
    seed : int
        Seeds the batch order and the power iteration.
    """

    n_alphas: int = 100
    eps: float = 1e-6
    lr: float | Literal["auto"] = 5e-3
    batch_size: int = 2000
    tol: float = 1e-4
    max_epochs: int = 100
    patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_params(self.__dict__, SAGA_CONSTRAINTS)


@dataclass
class LassoPathResult:
    """A fitted path for ``T`` targets; every array is numpy, on the host.

    Attributes
    ----------
    weight : ndarray of float32, shape [N, T]
        Raw-indicator-space weights at each target's chosen λ (after the refit if
        one was asked for).
    bias : ndarray of float32, shape [T]
        Intercepts; ``masks @ weight + bias`` predicts the targets.
    lam : ndarray of float32, shape [T]
        The chosen λ per target.
    lam_index : ndarray of int32, shape [T]
        Index of the chosen λ in ``lambdas``.
    val_mse : ndarray of float32, shape [T]
        Validation MSE at the chosen λ (NaN without validation rows).
    nnz : ndarray of int32, shape [T]
        Non-zero weights per target.
    n_epochs : ndarray of int32, shape [T]
        Epochs spent on each target over the whole path (and refit).
    n_unconverged : ndarray of int32, shape [T]
        λ steps (and refit) that ended at ``max_epochs`` without reaching ``tol``.
    lambdas : ndarray of float32, shape [K, T]
        The λ grid per target.
    val_mse_path : ndarray of float32, shape [K, T]
        Validation MSE per λ step; NaN after a target stopped early.
    n_iter : int
        Minibatch SAGA steps taken (each over all targets active at that time).
    step_size : float
        The SAGA step used on the path (``min(lr, 1/L̂)``, or ``min(lr, 1/(3 L̂))``
        after a divergence).
    lipschitz : float
        The batch smoothness estimate ``L̂``.
    n_train : int
        Rows the path was fitted on.
    n_val : int
        Validation rows (0 without early stopping).
    refit : bool
        Whether the weights were refitted on train + validation rows.
    wall_time : float
        Seconds from the first read to the result.
    device : str
        Torch device the solver ran on.
    extra : dict of str to float
        ``saga_flops`` (FLOPs of the SAGA matrix products) and ``n_steps_walked``
        (λ steps before every target had stopped).
    """

    weight: np.ndarray
    bias: np.ndarray
    lam: np.ndarray
    lam_index: np.ndarray
    val_mse: np.ndarray
    nnz: np.ndarray
    n_epochs: np.ndarray
    n_unconverged: np.ndarray
    lambdas: np.ndarray
    val_mse_path: np.ndarray
    n_iter: int
    step_size: float
    lipschitz: float
    n_train: int
    n_val: int
    refit: bool
    wall_time: float
    device: str
    extra: dict[str, float] = field(default_factory=dict)

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted outputs, shape [M, T], for masks of shape [M, N]."""
        return np.asarray(masks, dtype=np.float32) @ self.weight + self.bias


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as torch reads it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device={device!r} is not a torch device (use 'auto', 'cpu' or 'cuda[:i]')") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} asked for, but CUDA is not available here")
    return resolved


# --------------------------------------------------------------------------- state


@dataclass
class _Moments:
    n: int
    mu: torch.Tensor  # [N]
    inv_sd: torch.Tensor  # [N], 0 for zero-variance columns
    ybar: torch.Tensor  # [T]
    c: torch.Tensor  # [N, T] = Xsᵀ (y − ȳ) / n


class _Diverged(Exception):
    """The practical step made the path diverge: redo it at the proven step."""


class _ResidualTable:
    """The SAGA table ``R [n_rows, T]``: on the device, in (pinned) host memory, or
    in a file (the last resort when not even the host can hold it).

    In a file, rows are contiguous, so a batch's rows are one positioned read and
    one write, and the table costs no resident memory beyond the batch in hand.
    """

    def __init__(
        self, n_rows: int, n_targets: int, *, device: torch.device, dtype: torch.dtype, on_device: bool,
        spill_file: Path | None = None,
    ):
        self.device = device
        self.shape = (n_rows, n_targets)
        self.dtype = dtype
        self.nbytes = n_rows * n_targets * torch.empty((), dtype=dtype).element_size()
        self.spill_file = spill_file
        self._fd: int | None = None
        if spill_file is not None:
            self.on_device = False
            spill_file.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(spill_file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self._fd, self.nbytes)  # reads back as zeros, like torch.zeros
            self._np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            return
        self.on_device = on_device or device.type == "cpu"
        where = device if self.on_device else torch.device("cpu")
        pin = (not self.on_device) and device.type == "cuda"
        self.data = torch.zeros((n_rows, n_targets), dtype=dtype, device=where, pin_memory=pin)

    def _read_rows(self, r0: int, r1: int) -> torch.Tensor:
        assert self._fd is not None
        row_bytes = self.nbytes // self.shape[0]
        raw = os.pread(self._fd, (r1 - r0) * row_bytes, r0 * row_bytes)
        return torch.from_numpy(np.frombuffer(raw, dtype=self._np_dtype).reshape(r1 - r0, self.shape[1]).copy())

    def _write_rows(self, r0: int, rows: torch.Tensor) -> None:
        assert self._fd is not None
        row_bytes = self.nbytes // self.shape[0]
        os.pwrite(self._fd, rows.contiguous().numpy().tobytes(), r0 * row_bytes)

    def get(self, r0: int, r1: int, cols: torch.Tensor | None) -> torch.Tensor:
        block = self._read_rows(r0, r1) if self._fd is not None else self.data[r0:r1]
        if cols is not None:
            block = block.index_select(1, cols if self.on_device else cols.cpu())
        return block.to(self.device, non_blocking=True)

    def put(self, r0: int, r1: int, cols: torch.Tensor | None, values: torch.Tensor) -> None:
        if not self.on_device:
            values = values.to("cpu")
            cols = None if cols is None else cols.cpu()
        if self._fd is not None:
            rows = values if cols is None else self._read_rows(r0, r1).index_copy_(1, cols, values)
            self._write_rows(r0, rows)
        elif cols is None:
            self.data[r0:r1] = values
        else:
            self.data[r0:r1].index_copy_(1, cols, values)

    def close(self) -> None:
        """Delete the spill file, if any."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            assert self.spill_file is not None
            self.spill_file.unlink(missing_ok=True)
            try:
                self.spill_file.parent.rmdir()  # only when no other shard's table is there
            except OSError:
                pass


@dataclass
class _Problem:
    """Everything one SAGA run over a set of batches shares."""

    source: RowSource
    batches: list[Range]
    moments: _Moments
    table: _ResidualTable
    dtype: torch.dtype
    cfg: SagaConfig
    step: float = 0.0
    lipschitz: float = 0.0
    n_iter: int = 0
    flops: float = 0.0  # of the SAGA matrix products (2 per step, 2·B·N·A each)
    cache_budget: int = 0
    cache: dict[Range, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    cache_used: int = 0
    step_fraction: float = _PROVEN_STEP_FRACTION
    #: Watch for divergence (only while trying the practical step).
    guard: bool = False
    #: ‖y_t − ȳ_t‖² / n per target, for the divergence bound (set by _prepare).
    y_power: torch.Tensor | None = None

    def standardise(self, masks: torch.Tensor) -> torch.Tensor:
        return (masks.to(self.dtype) - self.moments.mu) * self.moments.inv_sd

    def batches_of(self, ranges: Sequence[Range]) -> Iterator[tuple[Range, torch.Tensor, torch.Tensor]]:
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
            size = (xs.numel() + y.numel()) * xs.element_size()
            if self.cache_used + size <= self.cache_budget:
                self.cache[rng] = (xs, y)
                self.cache_used += size
            yield rng, xs, y

    def order(self, phase: int, epoch: int) -> list[int]:
        # Depends on (seed, phase, epoch) only, never on which targets are active.
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, phase + 1, epoch]))
        return rng.permutation(len(self.batches)).tolist()


def default_cache_bytes(device: torch.device) -> int:
    """Bytes of standardised batches kept between epochs when the caller does not say."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.5)
    return int(available_host() * 0.25)


def _moments(source: RowSource, batches: Sequence[Range], dtype: torch.dtype) -> _Moments:
    """Column mean/std, target mean and ``Xsᵀ(y − ȳ)/n`` in one pass over ``batches``."""
    device = source.device
    n_features, n_targets = source.n_features, source.n_targets
    colsum = torch.zeros(n_features, dtype=torch.float64, device=device)
    colsq = torch.zeros(n_features, dtype=torch.float64, device=device)
    xty = torch.zeros((n_features, n_targets), dtype=torch.float64, device=device)
    ysum = torch.zeros(n_targets, dtype=torch.float64, device=device)
    shift: torch.Tensor | None = None
    n = 0
    for masks, targets in source.iterate(batches):
        x = masks.to(dtype)
        y = targets.to(dtype)
        if not torch.isfinite(y).all():
            raise InputError("targets contain NaN or infinite values; refusing to fit")
        if shift is None:
            # Accumulating Xᵀ(y − shift) with shift ≈ ȳ keeps float32 sums far from
            # the cancellation a raw Xᵀy − n μ ȳ would suffer.
            shift = y.mean(0)
        y = y - shift
        colsum += x.sum(0, dtype=torch.float64)
        colsq += (x * x).sum(0, dtype=torch.float64)
        xty += (x.T @ y).to(torch.float64)
        ysum += y.sum(0, dtype=torch.float64)
        n += int(x.shape[0])
    if n == 0 or shift is None:
        raise InputError("no rows to fit on")
    mu = colsum / n
    var = (colsq / n - mu * mu).clamp_min(0.0)
    # Columns constant on these rows carry no information: weight 0.
    varying = var > 1e-12 * torch.clamp(mu * mu, min=1.0)
    inv_sd = torch.where(varying, var.clamp_min(1e-300).rsqrt(), torch.zeros_like(var))
    ybar_shifted = ysum / n
    xtyc = xty - colsum[:, None] * ybar_shifted[None, :]
    c = xtyc * inv_sd[:, None] / n
    ybar = ybar_shifted + shift.to(torch.float64)
    return _Moments(n=n, mu=mu.to(dtype), inv_sd=inv_sd.to(dtype), ybar=ybar.to(dtype), c=c.to(dtype))


def _prepare(problem: _Problem, weight: torch.Tensor) -> torch.Tensor:
    """Fill the table at ``weight`` (std. coords, [N, T]); return Ḡ; estimate the step.

    One pass over the problem's batches: the residuals of every row at the start
    point go into the table, their gradient average is Ḡ, and a power iteration per
    batch gives the smoothness constant that caps the step.
    """
    source, mom = problem.source, problem.moments
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
        resid = -yc if zero_start else xs @ weight - yc
        problem.table.put(r0, r1, None, resid)
        if not zero_start:
            grad += xs.T @ resid
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


def _top_eigenvalue(xs: torch.Tensor, v0: torch.Tensor) -> float:
    """Largest eigenvalue of ``xsᵀ xs`` by power iteration."""
    v = v0 / v0.norm()
    value = 0.0
    for _ in range(_POWER_ITERATIONS):
        w = xs.T @ (xs @ v)
        value = float(w.norm())
        if value == 0.0:
            return 0.0
        v = w / value
    return value


def _run_fixed_lambda(
    problem: _Problem,
    weight: torch.Tensor,
    grad: torch.Tensor,
    cols: torch.Tensor,
    lam: torch.Tensor,
    phase: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAGA epochs at fixed per-target λ until each target converges.

    Parameters
    ----------
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
    """
    cfg, mom, table = problem.cfg, problem.moments, problem.table
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
    ybar = mom.ybar.index_select(0, act)
    assert problem.y_power is not None
    bound = _DIVERGENCE_FACTOR * problem.y_power.index_select(0, act) / (2 * lam.clamp_min(torch.finfo(lam.dtype).tiny))

    def write_back(keep: torch.Tensor | None) -> None:
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
            resid = xs @ w
            resid -= y - ybar
            delta = resid - table.get(r0, r1, cols_arg)
            g = xs.T @ delta
            w.add_(g, alpha=-step * m / n).add_(g_avg, alpha=-step)
            g_avg.add_(g, alpha=1.0 / n)
            table.put(r0, r1, cols_arg, resid)
            # Soft threshold: w − clamp(w, −τ, τ) is sign(w)·max(|w| − τ, 0).
            w.sub_(torch.maximum(torch.minimum(w, thr), -thr))
            problem.n_iter += 1
            problem.flops += 4.0 * xs.shape[0] * xs.shape[1] * w.shape[1]
        epochs[pos] += 1
        change = (w - w_prev).abs().amax(0) / w.abs().amax(0).clamp_min(torch.finfo(w.dtype).tiny)
        done = change <= cfg.tol
        finite = bool(torch.isfinite(w).all())
        if problem.guard and (not finite or bool((w.abs().sum(0) > bound).any())):
            raise _Diverged()
        if not finite:
            raise SolverError("SAGA diverged (non-finite weights) at the proven step 1/(3L); this is a bug")
        if bool(done.any()):
            converged[pos[done]] = True
            if bool(done.all()):
                break
            write_back(~done)
    write_back(None)
    return epochs, converged


def _val_mse(problem: _Problem, source: RowSource, val: Sequence[Range], w: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the validation rows for columns ``cols`` of ``w`` [N, A]."""
    sq = torch.zeros(cols.numel(), dtype=torch.float64, device=w.device)
    rows = 0
    ybar = problem.moments.ybar.index_select(0, cols)
    for _, xs, targets in problem.batches_of(val):
        pred = xs @ w + ybar
        err = pred - targets.index_select(1, cols)
        sq += (err * err).sum(0, dtype=torch.float64)
        rows += int(xs.shape[0])
    return (sq / max(rows, 1)).to(problem.dtype)


def _grid(lam_max: torch.Tensor, cfg: SagaConfig, alphas: torch.Tensor | None) -> torch.Tensor:
    """λ grid [K, T]: geometric from λ_max per target, or the explicit ``alphas``."""
    if alphas is not None:
        return alphas if alphas.ndim == 2 else alphas[:, None].expand(-1, lam_max.numel()).clone()
    k = cfg.n_alphas
    if k == 1:
        return lam_max[None, :].clone()
    ratios = torch.tensor(
        [cfg.eps ** (i / (k - 1)) for i in range(k)], dtype=lam_max.dtype, device=lam_max.device
    )
    return ratios[:, None] * lam_max[None, :]


def _check_alphas(alphas: np.ndarray | torch.Tensor | Sequence[float] | None, n_targets: int) -> np.ndarray | None:
    if alphas is None:
        return None
    a = np.asarray(alphas.cpu() if isinstance(alphas, torch.Tensor) else alphas, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[0] == 0 or (a.ndim == 2 and a.shape[1] != n_targets):
        raise InputError(f"alphas must have shape [K] or [K, {n_targets}] with K >= 1; got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError("alphas must be finite and > 0")
    if np.any(np.diff(a, axis=0) > 0):
        raise InputError("alphas must be non-increasing along the path (largest λ first)")
    return a


def solve_source(
    source: RowSource,
    *,
    train: Sequence[Range],
    val: Sequence[Range] = (),
    config: SagaConfig | None = None,
    alphas: np.ndarray | torch.Tensor | Sequence[float] | None = None,
    coef_init: np.ndarray | torch.Tensor | None = None,
    refit: bool = False,
    dtype: torch.dtype = torch.float32,
    table_on_device: bool = True,
    table_file: str | Path | None = None,
    cache_bytes: int | None = None,
    progress: ProgressFn | None = None,
) -> LassoPathResult:
    """Fit the path on ``source`` rows ``train``, early-stopping on rows ``val``.

    The engine behind :func:`saga_lasso_path` and :func:`regression.fit.fit_datamodels`.

    Parameters
    ----------
    source : RowSource
        Rows of masks [., N] and targets [., T].
    train, val : sequence of (int, int)
        Row ranges (in the source's numbering) forming the SAGA batches and the
        validation rows. ``val`` empty: no early stopping, the last λ is chosen.
    config : SagaConfig, optional
        Solver settings; defaults to ``SagaConfig()``.
    alphas : array-like, shape [K] or [K, T], optional
        Explicit non-increasing λ grid, replacing ``n_alphas``/``eps``.
    coef_init : array-like, shape [N, T], optional
        Raw-space starting weights for the first λ step.
    refit : bool
        Re-solve at the chosen λ on train + val rows.
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
    progress : callable, optional
        ``progress(done, total, alive)`` after every λ step.

    Returns
    -------
    LassoPathResult
    """
    cfg = config or SagaConfig()
    start = time.perf_counter()
    device = source.device
    n_features, n_targets = source.n_features, source.n_targets
    if not train:
        raise InputError("no training rows")
    grid_in = _check_alphas(alphas, n_targets)
    batches = list(train)
    mom = _moments(source, batches, dtype)
    lam_max = mom.c.abs().amax(0)
    grid = _grid(lam_max, cfg, None if grid_in is None else torch.as_tensor(grid_in, dtype=dtype, device=device))

    weight = torch.zeros((n_features, n_targets), dtype=dtype, device=device)
    if coef_init is not None:
        init = torch.as_tensor(np.asarray(coef_init, dtype=np.float64) if not isinstance(coef_init, torch.Tensor) else coef_init)
        if tuple(init.shape) != (n_features, n_targets):
            raise InputError(f"coef_init must have shape [{n_features}, {n_targets}]; got {tuple(init.shape)}")
        if not bool(torch.isfinite(init).all()):
            raise InputError("coef_init contains NaN or infinite values")
        # raw → standardised: w_std = w_raw · σ
        sd = torch.where(mom.inv_sd > 0, 1.0 / mom.inv_sd.clamp_min(1e-30), torch.zeros_like(mom.inv_sd))
        weight = init.to(dtype=dtype, device=device) * sd[:, None]

    for step_fraction in (_PRACTICAL_STEP_FRACTION, _PROVEN_STEP_FRACTION):
        table = _ResidualTable(source.n_rows, n_targets, device=device, dtype=dtype, on_device=table_on_device,
                               spill_file=None if table_file is None else Path(table_file))
        try:
            result = _solve_path(source, train=train, val=val, cfg=cfg, refit=refit, dtype=dtype, table=table,
                                 cache_bytes=cache_bytes, progress=progress, mom=mom, grid=grid,
                                 weight=weight.clone(), start=start, step_fraction=step_fraction)
            result.extra["step_fraction"] = step_fraction
            return result
        except _Diverged:
            continue  # redo the whole path at the proven step
        finally:
            table.close()
    raise AssertionError("unreachable: the proven step never raises _Diverged")


def _solve_path(
    source: RowSource, *, train: Sequence[Range], val: Sequence[Range], cfg: SagaConfig, refit: bool,
    dtype: torch.dtype, table: _ResidualTable, cache_bytes: int | None, progress: ProgressFn | None,
    mom: _Moments, grid: torch.Tensor, weight: torch.Tensor, start: float, step_fraction: float,
) -> LassoPathResult:
    """The path itself, once the moments, the grid and the table are set up (see :func:`solve_source`)."""
    device = source.device
    n_targets = source.n_targets
    batches = list(train)
    n_steps = grid.shape[0]
    lam_max = mom.c.abs().amax(0)
    budget = default_cache_bytes(device) if cache_bytes is None else int(cache_bytes)
    guard = step_fraction > _PROVEN_STEP_FRACTION
    problem = _Problem(source=source, batches=batches, moments=mom, table=table, dtype=dtype, cfg=cfg,
                       cache_budget=budget, step_fraction=step_fraction, guard=guard)
    grad = _prepare(problem, weight)
    path_step, path_lipschitz = problem.step, problem.lipschitz

    has_val = len(val) > 0
    val_path = torch.full((n_steps, n_targets), float("nan"), dtype=dtype, device=device)
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
            ep, conv = _run_fixed_lambda(problem, weight, grad, cols, lam_k[work], phase=k)
            epochs.index_add_(0, cols, ep)
            unconverged.index_add_(0, cols, (~conv).to(torch.int64))
        if has_val:
            w_alive = weight.index_select(1, alive)
            mse = _val_mse(problem, source, val, w_alive, alive)
            val_path[k].index_copy_(0, alive, mse)
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
    lam_chosen = grid.gather(0, best_k[None, :])[0]
    final_mom = mom

    if refit and has_val:
        all_batches = sorted(batches + list(val))
        final_mom = _moments(source, all_batches, dtype)
        sd_new = torch.where(final_mom.inv_sd > 0, 1.0 / final_mom.inv_sd.clamp_min(1e-30), torch.zeros_like(final_mom.inv_sd))
        refit_w = best_w * mom.inv_sd[:, None] * sd_new[:, None]
        problem.cache.clear()  # standardised with the path's moments; free it first
        refit_problem = _Problem(source=source, batches=all_batches, moments=final_mom, table=table, dtype=dtype,
                                 cfg=cfg, cache_budget=budget, step_fraction=step_fraction, guard=guard)
        refit_problem.n_iter, refit_problem.flops = problem.n_iter, problem.flops
        refit_grad = _prepare(refit_problem, refit_w)
        everyone = torch.arange(n_targets, device=device)
        ep, conv = _run_fixed_lambda(refit_problem, refit_w, refit_grad, everyone, lam_chosen, phase=_REFIT_STEP)
        epochs += ep
        unconverged += (~conv).to(torch.int64)
        best_w = refit_w
        problem.n_iter, problem.flops = refit_problem.n_iter, refit_problem.flops

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
        n_iter=problem.n_iter,
        step_size=path_step,
        lipschitz=path_lipschitz,
        n_train=mom.n,
        n_val=sum(b - a for a, b in val),
        refit=bool(refit and has_val),
        wall_time=time.perf_counter() - start,
        device=str(device),
        extra={"saga_flops": problem.flops, "n_steps_walked": float(k + 1)},
    )


def saga_lasso_path(
    X: np.ndarray | torch.Tensor,
    Y: np.ndarray | torch.Tensor,
    *,
    X_val: np.ndarray | torch.Tensor | None = None,
    Y_val: np.ndarray | torch.Tensor | None = None,
    alphas: np.ndarray | torch.Tensor | Sequence[float] | None = None,
    n_alphas: int = 100,
    eps: float = 1e-6,
    lr: float | Literal["auto"] = 5e-3,
    batch_size: int = 2000,
    tol: float = 1e-4,
    max_epochs: int = 100,
    patience: int = 5,
    seed: int = 0,
    coef_init: np.ndarray | torch.Tensor | None = None,
    refit: bool = False,
    device: str | torch.device = "auto",
    dtype: Literal["float32", "float64"] = "float32",
    progress: ProgressFn | None = None,
) -> LassoPathResult:
    """LASSO paths for all columns of ``Y`` on standardised ``X`` by minibatch SAGA.

    Parameters
    ----------
    X : array-like, shape [n, N]
        Training masks (bool; any real matrix works).
    Y : array-like, shape [n, T]
        Training outputs, one column per target.
    X_val, Y_val : array-like, shapes [n_val, N] and [n_val, T], optional
        Validation rows for early stopping and the choice of λ. Without them the
        whole grid is walked and its last λ is chosen.
    alphas : array-like, shape [K] or [K, T], optional
        Explicit non-increasing λ grid (shared or per target); replaces
        ``n_alphas`` and ``eps``.
    n_alphas, eps, lr, batch_size, tol, max_epochs, patience, seed
        See :class:`SagaConfig`.
    coef_init : array-like, shape [N, T], optional
        Raw-space warm start for the first λ.
    refit : bool
        Re-solve at each target's chosen λ on train + validation rows.
    device : str or torch.device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``…
    dtype : {"float32", "float64"}
        Compute dtype.
    progress : callable, optional
        ``progress(done, total, alive)`` after each λ step.

    Returns
    -------
    LassoPathResult
        ``weight [N, T]`` and ``bias [T]`` in raw indicator space, chosen ``lam
        [T]``, ``val_mse [T]``, ``nnz [T]``, the grid ``lambdas [K, T]`` and
        ``val_mse_path [K, T]``, epochs and timing.

    Raises
    ------
    InputError
        Bad shapes, NaN data, or a parameter out of range.
    """
    cfg = SagaConfig(
        n_alphas=n_alphas, eps=eps, lr=lr, batch_size=batch_size, tol=tol,
        max_epochs=max_epochs, patience=patience, seed=seed,
    )
    if dtype not in ("float32", "float64"):
        raise InputError(f"dtype={dtype!r} (expected 'float32' or 'float64')")
    torch_dtype = torch.float32 if dtype == "float32" else torch.float64
    dev = resolve_device(device)
    x = _as_tensor(X, "X", dev)
    y = _as_tensor(Y, "Y", dev, dtype=torch_dtype)
    if y.ndim == 1:
        y = y[:, None]
    n_train = int(x.shape[0]) if x.ndim == 2 else 0
    if (X_val is None) != (Y_val is None):
        raise InputError("give both X_val and Y_val, or neither")
    if X_val is not None and Y_val is not None:
        xv = _as_tensor(X_val, "X_val", dev)
        yv = _as_tensor(Y_val, "Y_val", dev, dtype=torch_dtype)
        if yv.ndim == 1:
            yv = yv[:, None]
        if xv.ndim != 2 or x.ndim != 2 or xv.shape[1] != x.shape[1] or yv.shape[1] != y.shape[1]:
            raise InputError("X_val / Y_val must have the columns of X / Y")
        x, y = torch.cat([x, xv.to(x.dtype)]), torch.cat([y, yv])
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(f"X [n, N] and Y [n, T] must share n; got {tuple(x.shape)} and {tuple(y.shape)}")
    if n_train == 0 or x.shape[1] == 0 or y.shape[1] == 0:
        raise InputError("X and Y must be non-empty")
    source = TensorSource(x, y)
    cuts = source.cut_points()
    train = split_batches(cuts, 0, n_train, cfg.batch_size)
    val = split_batches(cuts, n_train, source.n_rows, cfg.batch_size)
    return solve_source(
        source, train=train, val=val, config=cfg, alphas=alphas, coef_init=coef_init,
        refit=refit, dtype=torch_dtype, progress=progress,
    )


def _as_tensor(a: np.ndarray | torch.Tensor, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(dtype)
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{name} contains NaN or infinite values")
    elif t.dtype not in (torch.bool, torch.uint8, torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.to(device)

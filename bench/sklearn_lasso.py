"""scikit-learn's LASSO tuned as a practitioner would run it, for bench_regression.py's side-by-side.

Per target: coordinate descent along the same λ grid from λ_max, warm-started from
one λ to the next, early-stopped by the same rule as ours (``patience`` steps
without a lower validation MSE), λ chosen on the same validation rows, and
optionally refitted at that λ on train + validation rows (what ``LassoCV`` does
after its search). Two ways to run the descent, both timed:

* ``gram``: the Gram matrix ``XsᵀXs`` and ``Xsᵀy`` computed once for all targets
  and passed as ``precompute=`` and ``Xy=`` (their time is shared out over every
  target of the fit);
* ``direct``: plain coordinate descent on ``Xs`` (scikit-learn's own choice,
  ``precompute="auto"``, when there are fewer rows than features).

One λ per ``lasso_path`` call with ``check_input=False`` (the inputs are prepared
once, as scikit-learn assumes then), so no λ past the stopping point is solved.
Everything runs on one thread (threadpoolctl), on standardised masks and centred
outputs, in float64 as scikit-learn does.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["Standardised", "SklearnFit", "standardise", "fit_targets"]


@dataclass
class Standardised:
    """Rows standardised with their own moments, laid out for scikit-learn (float64, Fortran order)."""

    xs: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    gram: np.ndarray | None
    seconds: float


@dataclass
class SklearnFit:
    """Raw-space weights [N, T] and biases [T] of the fitted targets, at the chosen λ and refitted, and their cost."""

    weight: np.ndarray
    bias: np.ndarray
    lam: np.ndarray
    weight_refit: np.ndarray
    bias_refit: np.ndarray
    seconds: list[float] = field(default_factory=list)
    seconds_refit: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    shared_seconds: float = 0.0


def standardise(x: np.ndarray, *, gram: bool) -> Standardised:
    """Standardise ``x`` [n, N] (zero-variance columns left at 0) and, with ``gram``, form ``XsᵀXs`` (one thread)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        start = time.perf_counter()
        x = x.astype(np.float64)
        mu, sd = x.mean(0), x.std(0)
        sd[sd == 0] = 1.0
        xs = np.asfortranarray((x - mu) / sd)
        g = xs.T @ xs if gram else None
        return Standardised(xs=xs, mu=mu, sd=sd, gram=g, seconds=time.perf_counter() - start)


def _solve(data: Standardised, yc: np.ndarray, xy: np.ndarray | None, lam: float, start: np.ndarray,
           tol: float) -> np.ndarray:
    from sklearn.linear_model import lasso_path

    kwargs = {"precompute": data.gram, "Xy": xy} if data.gram is not None else {"precompute": False}
    _, coefs, _ = lasso_path(data.xs, yc, alphas=[lam], coef_init=start, tol=tol, check_input=False, **kwargs)
    return coefs[:, 0]


def fit_targets(
    train: Standardised, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, grid: np.ndarray, *,
    targets: np.ndarray, patience: int, tol: float = 1e-4, refit: Standardised | None = None,
    y_refit: np.ndarray | None = None, how: Literal["gram", "direct"] = "gram",
) -> SklearnFit:
    """Fit ``targets`` (columns of ``y``) one by one; see the module docstring.

    Parameters
    ----------
    train : Standardised
        The training rows (with ``gram`` for ``how="gram"``).
    y : ndarray, shape [n, T_all]
        Their outputs.
    x_val, y_val : ndarray, shapes [n_val, N] and [n_val, T_all]
        Raw validation masks and outputs (λ is chosen on them).
    grid : ndarray, shape [K, T_all]
        The λ grid per target (ours, so both walk the same λs).
    targets : ndarray of int
        Which columns to fit.
    patience : int
        λ steps without a lower validation MSE before a target stops.
    tol : float
        scikit-learn's ``tol`` (its default, 1e-4).
    refit, y_refit : optional
        Train + validation rows (standardised) and outputs: refit at the chosen λ there.
    how : {"gram", "direct"}

    Returns
    -------
    SklearnFit
        Per-target seconds exclude what all targets share: the Gram matrices
        (``Standardised.seconds``) and ``Xsᵀy`` for every target (``shared_seconds``).
    """
    from threadpoolctl import threadpool_limits

    n_features = train.xs.shape[1]
    out = SklearnFit(weight=np.zeros((n_features, targets.size)), bias=np.zeros(targets.size),
                     lam=np.zeros(targets.size), weight_refit=np.zeros((n_features, targets.size)),
                     bias_refit=np.zeros(targets.size))
    xvs = (x_val.astype(np.float64) - train.mu) / train.sd
    warnings.filterwarnings("ignore", message=".*did not converge.*")
    with threadpool_limits(1):
        started = time.perf_counter()
        xy_all = train.xs.T @ (y - y.mean(0)) if how == "gram" else None  # Xsᵀy of every target, once
        out.shared_seconds = time.perf_counter() - started
        for i, t in enumerate(targets):
            started = time.perf_counter()
            yt = y[:, t].astype(np.float64)
            ybar = yt.mean()
            xy = None if xy_all is None else np.ascontiguousarray(xy_all[:, t])
            coef = np.zeros(n_features)
            best, best_coef, best_k, since, k = np.inf, coef, 0, 0, 0
            for k in range(grid.shape[0]):
                coef = _solve(train, yt - ybar, xy, float(grid[k, t]), coef, tol)
                mse = float(np.mean((xvs @ coef + ybar - y_val[:, t]) ** 2))
                if mse < best:
                    best, best_coef, best_k, since = mse, coef.copy(), k, 0
                else:
                    since += 1
                    if since >= patience:
                        break
            lam = float(grid[best_k, t])
            raw = best_coef / train.sd
            out.weight[:, i], out.bias[i], out.lam[i] = raw, ybar - float(train.mu @ raw), lam
            out.seconds.append(time.perf_counter() - started)
            out.steps.append(k + 1)
            if refit is not None and y_refit is not None:
                started = time.perf_counter()
                yr = y_refit[:, t].astype(np.float64)
                ybar = yr.mean()
                xy_r = refit.xs.T @ (yr - ybar) if refit.gram is not None else None
                start = best_coef / train.sd * refit.sd  # train's std. coords → raw → the refit's
                raw = _solve(refit, yr - ybar, xy_r, lam, start, tol) / refit.sd
                out.weight_refit[:, i], out.bias_refit[i] = raw, ybar - float(refit.mu @ raw)
                out.seconds_refit.append(time.perf_counter() - started)
    return out

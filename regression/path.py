"""The array API: :func:`saga_lasso_path` on in-memory masks and outputs (numpy or torch).

The scikit-learn ``lasso_path`` of this project (named for the SAGA engine, it runs
whichever ``config.engine`` picks): it takes ``eps`` and the number
of λ steps (or explicit ``alphas``) and ``coef_init`` through a
:class:`~regression.config.SolverConfig`, walks the decreasing geometric grid from
λ_max with warm starts and returns arrays with documented shapes. The algorithm is
described in :mod:`regression.engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from regression.config import SolverConfig, as_config
from regression.engine import solve_source
from regression.factors import remove_from_array, usable_factors
from regression.loader import TensorSource, split_batches
from regression.progress import PathProgress
from regression.results import LassoPathResult
from storage.errors import InputError
from workers.device import resolve_device

__all__ = ["saga_lasso_path"]

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def saga_lasso_path(
    X: np.ndarray | torch.Tensor,
    Y: np.ndarray | torch.Tensor,
    *,
    X_val: np.ndarray | torch.Tensor | None = None,
    Y_val: np.ndarray | torch.Tensor | None = None,
    config: SolverConfig | None = None,
    alphas: np.ndarray | torch.Tensor | Sequence[float] | None = None,
    coef_init: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device = "auto",
    dtype: Literal["float32", "float64"] = "float32",
    progress: PathProgress | None = None,
) -> LassoPathResult:
    """LASSO paths for all columns of ``Y`` on standardised ``X`` (SAGA or the Gram engine, as ``config.engine`` picks).

    Parameters
    ----------
    X : array-like, shape [n, N]
        Training masks (bool; any real matrix works).
    Y : array-like, shape [n, T] or [n]
        Training outputs, one column per target.
    X_val, Y_val : array-like, shapes [n_val, N] and [n_val, T], optional
        Validation rows for early stopping and the choice of λ. Without them the
        whole grid is walked and its last λ is chosen (and ``config.refit`` has
        nothing to add).
    config : SolverConfig, optional
        Solver settings (``n_alphas``, ``eps``, ``lr``, ``batch_size``, ``tol``,
        ``max_epochs``, ``patience``, ``seed``, ``refit``); ``SolverConfig()``
        when None.
    alphas : array-like, shape [K] or [K, T], optional
        Explicit non-increasing λ grid (shared or per target); replaces
        ``config.n_alphas`` and ``config.eps``.
    coef_init : array-like, shape [N, T], optional
        Raw-space warm start for the first λ.
    device : str or torch.device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``…
    dtype : {"float32", "float64"}
        Compute dtype.
    progress : PathProgress, optional
        Called as ``progress(done, total, alive)`` after each λ step.

    Returns
    -------
    LassoPathResult
        ``weight [N, T]`` and ``bias [T]`` in raw indicator space, chosen ``lam
        [T]``, ``val_mse [T]``, ``nnz [T]``, the grid ``lambdas [K, T]`` and
        ``val_mse_path [K, T]``, epochs and timing.

    Raises
    ------
    InputError
        Bad shapes, NaN data, a bad ``alphas``, ``coef_init``, ``device`` or
        ``dtype``; ``params`` names which.
    """
    cfg = as_config(config)
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InputError(f"dtype={dtype!r} (expected 'float32' or 'float64')", params=("dtype",))
    torch_dtype = _DTYPES[dtype]
    dev = resolve_device(device)
    x, y = _as_rows(X, Y, ("X", "Y"), dev, torch_dtype)
    n_train = int(x.shape[0]) if x.ndim == 2 else 0
    if (X_val is None) != (Y_val is None):
        raise InputError("give both X_val and Y_val, or neither", params=("X_val", "Y_val"))
    if X_val is not None and Y_val is not None:
        xv, yv = _as_rows(X_val, Y_val, ("X_val", "Y_val"), dev, torch_dtype)
        if xv.ndim != 2 or x.ndim != 2 or xv.shape[1] != x.shape[1] or yv.shape[1] != y.shape[1]:
            raise InputError("X_val / Y_val must have the columns of X / Y", params=("X_val", "Y_val"))
        x, y = torch.cat([x, xv.to(x.dtype)]), torch.cat([y, yv])
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"X [n, N] and Y [n, T] must share n; got {tuple(x.shape)} and {tuple(y.shape)}", params=("X", "Y")
        )
    if n_train == 0 or x.shape[1] == 0 or y.shape[1] == 0:
        raise InputError("X and Y must be non-empty", params=("X", "Y"))
    if usable_factors(cfg.noise_factors, int(y.shape[1])):
        adjusted = remove_from_array(y.cpu().numpy(), n_train=n_train, requested=cfg.noise_factors)
        y = torch.from_numpy(adjusted).to(device=y.device, dtype=y.dtype)
    source = TensorSource(x, y)
    cuts = source.cut_points()
    train = split_batches(cuts, 0, n_train, cfg.batch_size)
    val = split_batches(cuts, n_train, source.n_rows, cfg.batch_size)
    return solve_source(
        source, train=train, val=val, config=cfg, alphas=alphas, coef_init=coef_init, dtype=torch_dtype,
        progress=progress,
    )


def _as_rows(
    X: np.ndarray | torch.Tensor, Y: np.ndarray | torch.Tensor, names: tuple[str, str], device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks as given and outputs in ``dtype`` (a 1-D ``Y`` as one target column), on ``device``."""
    x = _as_tensor(X, names[0], device)
    y = _as_tensor(Y, names[1], device, dtype=dtype)
    return x, y[:, None] if y.ndim == 1 else y


def _as_tensor(a: np.ndarray | torch.Tensor, name: str, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``a`` as a tensor on ``device``: in ``dtype`` (checked finite) when given, else as masks."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(dtype)
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{name} contains NaN or infinite values", params=(name,))
    elif t.dtype not in (torch.bool, torch.uint8, torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.to(device)

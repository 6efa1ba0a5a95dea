"""A scikit-learn-style estimator around :func:`regression.saga.saga_lasso_path`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import numpy as np
import torch

from regression.params import SAGA_CONSTRAINTS, check_params
from regression.saga import LassoPathResult, SagaConfig, saga_lasso_path
from storage.errors import InputError

__all__ = ["SagaLassoPath"]


class SagaLassoPath:
    """LASSO paths for many targets with early stopping on validation rows.

    ``__init__`` only stores its keyword-only parameters; they are checked at
    :meth:`fit` against :data:`regression.params.SAGA_CONSTRAINTS`. Defaults are the
    published ``fast_l1`` ones.

    Parameters
    ----------
    n_alphas, eps, lr, batch_size, tol, max_epochs, patience, seed
        See :class:`regression.saga.SagaConfig`.
    alphas : array-like, shape [K] or [K, T], optional
        Explicit λ grid.
    refit : bool
        Re-solve at the chosen λ on train + validation rows.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``…

    Attributes
    ----------
    coef_ : ndarray of float32, shape [T, N]
        Raw-space weights at the chosen λ (scikit-learn's orientation).
    intercept_ : ndarray of float32, shape [T]
    alpha_ : ndarray of float32, shape [T]
        Chosen λ per target.
    alphas_ : ndarray of float32, shape [K, T]
        The λ grid.
    mse_path_ : ndarray of float32, shape [K, T]
        Validation MSE along the path.
    n_iter_ : ndarray of int32, shape [T]
        Epochs per target.
    result_ : LassoPathResult
        Everything the solver reported.
    """

    _parameter_constraints = SAGA_CONSTRAINTS

    def __init__(
        self,
        *,
        n_alphas: int = 100,
        eps: float = 1e-6,
        lr: float | Literal["auto"] = 5e-3,
        batch_size: int = 2000,
        tol: float = 1e-4,
        max_epochs: int = 100,
        patience: int = 5,
        seed: int = 0,
        alphas: Any = None,
        refit: bool = False,
        device: str = "auto",
    ) -> None:
        self.n_alphas = n_alphas
        self.eps = eps
        self.lr = lr
        self.batch_size = batch_size
        self.tol = tol
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.alphas = alphas
        self.refit = refit
        self.device = device

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as scikit-learn's ``get_params``."""
        return {k: getattr(self, k) for k in (*asdict(SagaConfig()).keys(), "alphas", "refit", "device")}

    def fit(
        self,
        X: np.ndarray | torch.Tensor,
        Y: np.ndarray | torch.Tensor,
        *,
        X_val: np.ndarray | torch.Tensor | None = None,
        Y_val: np.ndarray | torch.Tensor | None = None,
    ) -> SagaLassoPath:
        """Fit on ``X`` [n, N], ``Y`` [n, T]; early-stop on ``X_val``, ``Y_val`` when given."""
        params = self.get_params()
        check_params(params, self._parameter_constraints)
        if not isinstance(self.refit, bool):
            raise InputError(f"refit={self.refit!r} (expected a bool)")
        result = saga_lasso_path(X, Y, X_val=X_val, Y_val=Y_val, **params)
        self.result_: LassoPathResult = result
        self.coef_ = result.weight.T.copy()
        self.intercept_ = result.bias
        self.alpha_ = result.lam
        self.alphas_ = result.lambdas
        self.mse_path_ = result.val_mse_path
        self.n_iter_ = result.n_epochs
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions [M, T] for masks ``X`` [M, N]."""
        if not hasattr(self, "coef_"):
            raise InputError("this SagaLassoPath is not fitted yet; call fit first")
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

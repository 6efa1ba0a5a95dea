"""A scikit-learn-style estimator around :func:`regression.path.saga_lasso_path`."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from regression.config import SolverConfig, as_config
from regression.path import saga_lasso_path
from regression.results import LassoPathResult
from storage.errors import InputError

__all__ = ["SagaLassoPath"]


class SagaLassoPath:
    """LASSO paths for many targets with early stopping on validation rows.

    ``__init__`` only stores its keyword-only parameters: every
    :class:`~regression.config.SolverConfig` field is an attribute of the same
    name, checked when :meth:`fit` builds the config from them (scikit-learn's
    habit, so :meth:`set_params` may set any of them later).

    Parameters
    ----------
    config : SolverConfig, optional
        Solver settings to start from; its fields become this estimator's
        parameters (it is not kept as one itself).
    alphas : array-like, shape [K] or [K, T], optional
        Explicit λ grid, replacing ``n_alphas`` and ``eps``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``…
    **settings
        :class:`~regression.config.SolverConfig` fields by name (``lr="auto"``,
        ``n_alphas=10``...), over those of ``config``.

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
    config_ : SolverConfig
        The settings the fit ran with.
    result_ : LassoPathResult
        Everything the solver reported.

    Raises
    ------
    InputError
        A keyword that is neither a parameter nor a ``SolverConfig`` field (at
        once); a bad value (at :meth:`fit`).
    """

    def __init__(
        self,
        *,
        config: SolverConfig | None = None,
        alphas: Any = None,
        device: str = "auto",
        **settings: Any,
    ) -> None:
        self.alphas = alphas
        self.device = device
        for name, field in SolverConfig.model_fields.items():
            setattr(self, name, field.default)
        self.set_params(config=config, **settings)

    @classmethod
    def _own_param_names(cls) -> tuple[str, ...]:
        """The estimator's own parameters (not SolverConfig fields), read off ``__init__``'s signature."""
        signature = inspect.signature(cls.__init__)
        return tuple(
            p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "config"
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every parameter by name, as scikit-learn's ``get_params``.

        ``SagaLassoPath(**est.get_params())`` builds an equal estimator.
        ``deep`` is accepted for scikit-learn's sake; there are no sub-estimators.
        """
        return {name: getattr(self, name) for name in (*self._own_param_names(), *SolverConfig.model_fields)}

    def set_params(self, *, config: SolverConfig | None = None, **params: Any) -> SagaLassoPath:
        """Set parameters by name (and every ``SolverConfig`` field from ``config``); return ``self``.

        Values are stored as given and checked at :meth:`fit`.

        Raises
        ------
        InputError
            A name that is not a parameter (``params`` names it).
        """
        values = {**(as_config(config).model_dump() if config is not None else {}), **params}
        known = (*self._own_param_names(), *SolverConfig.model_fields)
        unknown = [name for name in values if name not in known]
        if unknown:
            raise InputError(
                f"SagaLassoPath has no parameter(s) {', '.join(unknown)}; it takes {', '.join(known)}",
                params=tuple(unknown),
            )
        for name, value in values.items():
            setattr(self, name, value)
        return self

    def fit(
        self,
        X: np.ndarray | torch.Tensor,
        Y: np.ndarray | torch.Tensor,
        *,
        X_val: np.ndarray | torch.Tensor | None = None,
        Y_val: np.ndarray | torch.Tensor | None = None,
    ) -> SagaLassoPath:
        """Fit on ``X`` [n, N], ``Y`` [n, T]; early-stop on ``X_val``, ``Y_val`` when given.

        Raises
        ------
        InputError
            A parameter out of range (``params`` names it), bad shapes or NaN data.
        """
        config = SolverConfig(**{name: getattr(self, name) for name in SolverConfig.model_fields})
        result = saga_lasso_path(
            X, Y, X_val=X_val, Y_val=Y_val, config=config, alphas=self.alphas, device=self.device
        )
        self.config_ = config
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

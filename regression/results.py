"""What a fitted path returns: :class:`LassoPathResult`, plain numpy arrays on the host."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LassoPathResult"]


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
        Whether the weights were refitted on train + validation rows (asked for
        and validation rows given).
    wall_time : float
        Seconds from the first read to the result.
    device : str
        Torch device the solver ran on.
    extra : dict of str to float
        ``saga_flops`` (FLOPs of the SAGA matrix products), ``n_steps_walked``
        (λ steps before every target had stopped) and ``step_fraction`` (1 for the
        practical step ``1/L̂``, 1/3 when the path was redone at the proven one);
        with a debias, ``least_squares_iterations`` (mean conjugate-gradient
        iterations) and, relaxed, ``mean_mix``; seconds per phase:
        ``seconds_moments`` (the first pass), ``seconds_path`` (step estimate and
        path) and ``seconds_final`` (refit, average, debias).
    mix : ndarray of float32, shape [T], or None
        With ``debias="relaxed"``, each target's weight γ on the LASSO (1 − γ on
        least squares), chosen on validation rows; else None.
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
    mix: np.ndarray | None = None
    engine: str = "saga"
    precision: str = "fp32"

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted outputs, shape [M, T], for masks of shape [M, N]."""
        return np.asarray(masks, dtype=np.float32) @ self.weight + self.bias

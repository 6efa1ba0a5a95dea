"""The λ grid of a path: geometric from each target's λ_max, or explicit ``alphas`` checked.

See :mod:`regression.engine` for how the path walks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from regression.config import SolverConfig
from storage.errors import InputError

__all__ = ["check_alphas", "lambda_grid"]


def lambda_grid(lam_max: torch.Tensor, cfg: SolverConfig, alphas: torch.Tensor | None) -> torch.Tensor:
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


def check_alphas(alphas: np.ndarray | torch.Tensor | Sequence[float] | None, n_targets: int) -> np.ndarray | None:
    """``alphas`` as float64 [K] or [K, T] after checking them, or None."""
    if alphas is None:
        return None
    a = np.asarray(alphas.cpu() if isinstance(alphas, torch.Tensor) else alphas, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[0] == 0 or (a.ndim == 2 and a.shape[1] != n_targets):
        raise InputError(f"alphas must have shape [K] or [K, {n_targets}] with K >= 1; got {a.shape}", params=("alphas",))
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError("alphas must be finite and > 0", params=("alphas",))
    if np.any(np.diff(a, axis=0) > 0):
        raise InputError("alphas must be non-increasing along the path (largest λ first)", params=("alphas",))
    return a

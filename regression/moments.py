"""The standardisation moments of the fit rows, in one streamed pass.

μ and σ are the column mean and (population) std of the fit rows; zero-variance
columns get ``1/σ = 0`` (their weight stays 0). Because the standardised columns
are centred, the unpenalised intercept is exactly ``ȳ``, and ``c = Xsᵀ(y − ȳ)/n``
gives both the zero-start SAGA gradient and ``λ_max = max_j |c_j|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from regression.loader import Range, RowSource
from storage.errors import InputError

__all__ = ["Moments", "compute_moments"]


@dataclass
class Moments:
    """Moments of the fit rows, in the compute dtype on the source's device.

    Attributes
    ----------
    n : int
        Rows they were computed on.
    mu : Tensor, shape [N]
        Column means.
    inv_sd : Tensor, shape [N]
        ``1/σ`` per column; 0 for zero-variance columns.
    ybar : Tensor, shape [T]
        Target means (the intercepts in standardised coordinates).
    c : Tensor, shape [N, T]
        ``Xsᵀ (y − ȳ) / n``.
    """

    n: int
    mu: torch.Tensor
    inv_sd: torch.Tensor
    ybar: torch.Tensor
    c: torch.Tensor

    def sd(self) -> torch.Tensor:
        """σ per column, shape [N]; 0 for zero-variance columns (raw → standardised: ``w_std = w_raw · σ``)."""
        return torch.where(self.inv_sd > 0, 1.0 / self.inv_sd.clamp_min(1e-30), torch.zeros_like(self.inv_sd))


def compute_moments(source: RowSource, batches: Sequence[Range], dtype: torch.dtype) -> Moments:
    """Column mean/std, target mean and ``Xsᵀ(y − ȳ)/n`` in one pass over ``batches``.

    Parameters
    ----------
    source : RowSource
        Rows of masks [., N] and targets [., T].
    batches : sequence of (int, int)
        The row ranges the moments are of.
    dtype : torch.dtype
        The compute dtype of the result (sums are accumulated in float64).

    Returns
    -------
    Moments

    Raises
    ------
    InputError
        NaN or infinite targets, or no rows.
    """
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
            raise InputError("source targets contain NaN or infinite values; refusing to fit", params=("source",))
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
        raise InputError("train holds no rows to fit on", params=("train",))
    mu = colsum / n
    var = (colsq / n - mu * mu).clamp_min(0.0)
    # Columns constant on these rows carry no information: weight 0.
    varying = var > 1e-12 * torch.clamp(mu * mu, min=1.0)
    inv_sd = torch.where(varying, var.clamp_min(1e-300).rsqrt(), torch.zeros_like(var))
    ybar_shifted = ysum / n
    xtyc = xty - colsum[:, None] * ybar_shifted[None, :]
    c = xtyc * inv_sd[:, None] / n
    ybar = ybar_shifted + shift.to(torch.float64)
    return Moments(n=n, mu=mu.to(dtype), inv_sd=inv_sd.to(dtype), ybar=ybar.to(dtype), c=c.to(dtype))

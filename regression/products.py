"""The solver's two matrix products with a batch of standardised masks, in the precision asked for.

Every SAGA step, the step-size estimate, the validation MSE and the least-squares
debias only ever need ``Xs_b @ W`` and ``Xs_bᵀ @ D`` for a batch ``Xs_b = (X_b − μ)/σ``
of standardised masks. A :class:`Design` is one batch behind those two products:

* ``fp32`` (and float64 for tests): ``Xs_b`` kept standardised in the compute dtype;
* ``tf32``: the same products with TF32 inputs (10-bit mantissa), fp32 accumulation.
  CUDA runs them on the tensor cores; on the CPU, which has no TF32, the operands are
  rounded to TF32 first, so a CPU run has the same numerics as a GPU one;
* ``bf16``: the raw 0/1 masks, exact in bf16, times bf16 operands with fp32
  accumulation, and the standardisation folded in as rank-1 corrections::

      Xs_b W   = X_b (W/σ) − 1 (μᵀ (W/σ))
      Xs_bᵀ D  = (X_bᵀ D − μ (1ᵀ D)) / σ

  so only ``W/σ`` and ``D`` are rounded (to 8 bits of mantissa); the corrections
  use the same rounded operands, and the result equals the exact product with
  those operands up to fp32 summation order. CUDA multiplies bf16 by bf16 into
  fp32 (``torch.mm(..., out_dtype=torch.float32)``); the CPU holds the 0/1 masks
  as fp32 and rounds the operands the same way.

A bf16 batch also takes half the memory of a standardised fp32 one (the batch
cache holds more of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

import torch

__all__ = ["Precision", "Design", "DenseDesign", "MaskDesign", "make_design", "round_tf32", "tf32_matmul",
           "top_eigenvalue"]

Precision = Literal["fp32", "tf32", "bf16"]


class Design(Protocol):
    """One batch of standardised masks ``Xs_b [B, N]``, as the solver multiplies with it."""

    @property
    def rows(self) -> int: ...

    @property
    def cols(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def times(self, w: torch.Tensor) -> torch.Tensor:
        """``Xs_b @ w`` for ``w`` [N, A]: shape [B, A], in the compute dtype."""
        ...

    def t_times(self, d: torch.Tensor) -> torch.Tensor:
        """``Xs_bᵀ @ d`` for ``d`` [B, A]: shape [N, A], in the compute dtype."""
        ...


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded to the nearest TF32 value (10 explicit mantissa bits, ties away from zero)."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@contextmanager
def tf32_matmul() -> Iterator[None]:
    """CUDA fp32 matmuls in TF32 inside the block; the previous setting restored after it."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = before


class _Held:
    """The sizes of the one [B, N] matrix a design holds."""

    _held: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self._held.shape[0])

    @property
    def cols(self) -> int:
        return int(self._held.shape[1])

    @property
    def nbytes(self) -> int:
        return self._held.numel() * self._held.element_size()


class DenseDesign(_Held):
    """A batch kept standardised in the compute dtype (``fp32``, ``tf32`` or float64)."""

    def __init__(self, xs: torch.Tensor, *, tf32: bool = False) -> None:
        self._tf32 = tf32 and xs.dtype == torch.float32
        self._cuda = xs.device.type == "cuda"
        # On the CPU the TF32 rounding of the batch is done once, here.
        self._xs = round_tf32(xs) if self._tf32 and not self._cuda else xs
        self._held = self._xs

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self._tf32:
            return a @ b
        if self._cuda:
            with tf32_matmul():
                return a @ b
        return a @ round_tf32(b)

    def times(self, w: torch.Tensor) -> torch.Tensor:
        return self._mm(self._xs, w)

    def t_times(self, d: torch.Tensor) -> torch.Tensor:
        return self._mm(self._xs.T, d)


class MaskDesign(_Held):
    """A batch of raw 0/1 masks in bf16 with the standardisation as rank-1 corrections (``bf16``)."""

    def __init__(self, masks: torch.Tensor, mu: torch.Tensor, inv_sd: torch.Tensor) -> None:
        self._cuda = masks.device.type == "cuda"
        # 0 and 1 are exact in bf16; the CPU keeps them as fp32 (same values, a matmul it is fast at).
        self._x = masks.to(torch.bfloat16 if self._cuda else torch.float32)
        self._held = self._x
        self._mu = mu.to(torch.float32)
        self._inv_sd = inv_sd.to(torch.float32)

    def _mm(self, a: torch.Tensor, b_bf16: torch.Tensor) -> torch.Tensor:
        """``a @ b`` with bf16 operands and fp32 accumulation and output."""
        if self._cuda:
            return torch.mm(a, b_bf16, out_dtype=torch.float32)
        return a @ b_bf16.to(torch.float32)

    def times(self, w: torch.Tensor) -> torch.Tensor:
        v = (w * self._inv_sd[:, None]).to(torch.bfloat16)
        shift = self._mu @ v.to(torch.float32)  # [A]: μᵀ (W/σ) with the rounded operand
        return self._mm(self._x, v) - shift[None, :]

    def t_times(self, d: torch.Tensor) -> torch.Tensor:
        d16 = d.to(torch.bfloat16)
        total = d16.to(torch.float32).sum(0)  # [A]: 1ᵀ D with the rounded operand
        return (self._mm(self._x.T, d16) - self._mu[:, None] * total[None, :]) * self._inv_sd[:, None]


def make_design(masks: torch.Tensor, mu: torch.Tensor, inv_sd: torch.Tensor, *, precision: Precision,
                dtype: torch.dtype) -> Design:
    """A :class:`Design` for a batch of raw masks [B, N] and the fit rows' moments ``mu``, ``inv_sd`` [N].

    Parameters
    ----------
    masks : Tensor, shape [B, N]
        Raw masks (bool or 0/1 numbers).
    mu, inv_sd : Tensor, shape [N]
        Column means and ``1/σ`` (0 for constant columns).
    precision : {"fp32", "tf32", "bf16"}
        How the products are computed (see the module docstring).
    dtype : torch.dtype
        The compute dtype (float32; float64 only with ``fp32``).
    """
    if precision == "bf16":
        return MaskDesign(masks, mu, inv_sd)
    xs = (masks.to(dtype) - mu) * inv_sd
    return DenseDesign(xs, tf32=precision == "tf32")


def top_eigenvalue(apply: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iterations: int) -> float:
    """Largest eigenvalue of a symmetric PSD operator (``apply(v)`` for ``v`` [N, 1]) by power iteration from ``start``."""
    v = start / start.norm()
    value = 0.0
    for _ in range(iterations):
        w = apply(v)
        value = float(w.norm())
        if value == 0.0:
            return 0.0
        v = w / value
    return value

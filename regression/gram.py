"""The Gram engine: each λ step solved by accelerated proximal gradient on ``XsᵀXs / n``.

SAGA (:mod:`regression.epochs`) multiplies a minibatch of masks twice per step,
``4·n·N`` flops per target per epoch. When there are not many more features than
rows (``N ≤ 2n``: every published datamodel setting), the standardised Gram
matrix ``H = XsᵀXs / n`` [N, N] is cheaper to form once (one pass over the rows)
than a few SAGA epochs, and the gradient of the smooth part is then one product,
``H w − c`` (``2·N²`` flops per target), with ``c = Xsᵀ(y − ȳ)/n`` from the
moments. :mod:`regression.fista` solves each λ step on it.

**Precision.** ``H`` is formed from exact integer co-occurrence counts ``XᵀX``
(fp32 holds them exactly below 2²⁴ rows) and standardised in place
(``H = D (XᵀX − s sᵀ/n) D / n``, ``s`` the column sums, ``D = diag(1/σ)``). The
products are split around a reference point: ``H w_ref`` exactly (compute dtype),
and ``H (w − w_ref)`` for every iteration in the precision asked for (bf16
operands with fp32 accumulation, or TF32), so the reduced precision only touches
the change since the reference, whose error is that fraction of 2⁻⁹ (bf16). A
target keeps its reference across λ steps while it stays within a quarter of its
weights' size of it, and gets a new exact one when it moves further. bf16 runs at
the device's native matrix rate (AVX-512 BF16 / AMX on CPUs, tensor cores on
GPUs). Early on the path, when the changes of all targets together touch few
columns, only those rows of H are multiplied.

**Memory.** ``H`` and the raw counts it is refreshed from for the refit, plus a
bf16 copy: ``10·N²`` bytes (:func:`gram_bytes`), planned by
:mod:`regression.memory`. No SAGA table is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from regression.loader import Range, RowSource
from regression.moments import Moments
from regression.products import round_tf32, tf32_matmul, top_eigenvalue

__all__ = ["GramSystem", "build_gram", "choose_engine", "gram_bytes", "native_bf16", "resolve_precision"]

_POWER_ITERATIONS = 30
_LIPSCHITZ_SAFETY = 1.1
#: Features per row up to which the Gram engine is cheaper than SAGA: one Gram product
#: (2·N² flops per target) against a SAGA epoch's two passes (4·n·N).
_MAX_FEATURES_PER_ROW = 2.0
#: The share of the memory the plan may give the Gram matrices under ``engine="auto"``.
_GRAM_SHARE = 0.25
#: Below this share of columns in use, the in-step product gathers the rows of H it needs.
_SPARSE_SHARE = 0.6


def gram_bytes(n_features: int) -> int:
    """Bytes the Gram engine holds: H and the raw counts in fp32, and H's bf16 copy."""
    return 10 * n_features * n_features


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices at a native rate (else bf16 is emulated and slower)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, engine: str, device: torch.device, dtype: torch.dtype) -> str:
    """The products' precision for ``precision="auto"``: bf16 for the Gram engine on native-bf16 devices, else fp32."""
    if precision != "auto":
        return precision
    if engine == "gram" and dtype == torch.float32 and native_bf16(device):
        return "bf16"
    return "fp32"


def choose_engine(engine: str, *, n_rows: int, n_features: int, memory: int) -> Literal["saga", "gram"]:
    """``engine`` itself, or for ``"auto"``: gram when ``N ≤ 2·n`` and its matrices take at most a quarter of ``memory``."""
    if engine in ("saga", "gram"):
        return engine  # type: ignore[return-value]
    fits = gram_bytes(n_features) <= _GRAM_SHARE * memory
    return "gram" if fits and n_features <= _MAX_FEATURES_PER_ROW * n_rows else "saga"


@dataclass
class GramSystem:
    """The Gram matrix of one set of rows, standardised with their moments, and how it is multiplied.

    Attributes
    ----------
    counts : Tensor, shape [N, N]
        Raw ``XᵀX`` of the rows (kept to add rows to for the refit).
    colsum : Tensor, shape [N]
        Raw column sums of the rows.
    n : int
        The rows counted.
    hessian : Tensor, shape [N, N]
        ``H = XsᵀXs / n`` in the compute dtype.
    low : Tensor or None
        H in the reduced precision of the in-step products (None: fp32 throughout).
    precision : str
        ``fp32``, ``tf32`` or ``bf16``.
    lipschitz : float
        ``L̂``; the step is ``1/L̂``.
    """

    counts: torch.Tensor
    colsum: torch.Tensor
    n: int
    hessian: torch.Tensor
    low: torch.Tensor | None
    precision: str
    lipschitz: float

    @property
    def step(self) -> float:
        return 1.0 / self.lipschitz if self.lipschitz > 0 else 1.0

    def times_rows(self, w: torch.Tensor) -> torch.Tensor:
        """``w H`` for targets as rows ``w`` [A, N] (H is symmetric), in the compute dtype: the once-per-step product."""
        return w @ self.hessian

    def times(self, w: torch.Tensor) -> torch.Tensor:
        """``H w`` for targets as columns ``w`` [N, A], in the compute dtype."""
        return self.hessian @ w

    def times_change_rows(self, d: torch.Tensor, *, gather: bool = True) -> tuple[torch.Tensor, bool]:
        """``d H`` for a within-step change ``d`` [A, N] in the reduced precision, and whether rows of H were gathered.

        Early on the path the changes of all rows together touch few columns: then
        only those rows of H are multiplied (``gather``: look; once they touch most,
        the caller stops looking). bf16 accumulates in fp32; the CPU returns it
        rounded to bf16, which the caller adds to an fp32 gradient.
        """
        matrix = self.hessian if self.low is None else self.low
        if gather:
            used = (d != 0).any(0)
            n_used = int(used.sum())
            gather = n_used < _SPARSE_SHARE * d.shape[1]
            if gather:
                index = used.nonzero()[:, 0]
                d, matrix = d.index_select(1, index), matrix.index_select(0, index)
        if self.low is None:
            return d @ matrix, gather
        if self.precision == "tf32":
            if d.device.type == "cuda":
                with tf32_matmul():
                    return d @ matrix, gather
            return round_tf32(d) @ matrix, gather
        d16 = d.to(torch.bfloat16)
        if d.device.type == "cuda":
            return torch.mm(d16, matrix, out_dtype=torch.float32), gather
        return d16 @ matrix, gather

    def add_rows(self, source: RowSource, ranges: Sequence[Range], moments: Moments) -> GramSystem:
        """This system with ``ranges``' rows counted in too, standardised with ``moments`` (of all the rows)."""
        counts, colsum, n = self.counts, self.colsum, self.n
        self.hessian = self.low = None  # type: ignore[assignment]  # freed before the new ones are formed
        for masks, _ in source.iterate(list(ranges)):
            _count_into(counts, colsum, masks)
            n += int(masks.shape[0])
        return _standardised(counts, colsum, n, moments, self.precision)


def build_gram(source: RowSource, ranges: Sequence[Range], moments: Moments, dtype: torch.dtype,
               precision: str) -> GramSystem:
    """Count ``XᵀX`` over ``ranges`` (one pass) and standardise it with ``moments``."""
    n_features = source.n_features
    counts = torch.zeros((n_features, n_features), dtype=dtype, device=source.device)
    colsum = torch.zeros(n_features, dtype=dtype, device=source.device)
    n = 0
    for masks, _ in source.iterate(list(ranges)):
        _count_into(counts, colsum, masks)
        n += int(masks.shape[0])
    return _standardised(counts, colsum, n, moments, precision)


def _count_into(counts: torch.Tensor, colsum: torch.Tensor, masks: torch.Tensor) -> None:
    """Add a batch's ``XᵀX`` and column sums, exact integers (fp32 holds them below 2²⁴ rows).

    On a GPU, 0/1 masks are multiplied in bf16 with fp32 accumulation (exact, at
    the tensor-core rate); the CPU's bf16 products round their result to bf16, so
    it counts in fp32.
    """
    if masks.dtype == torch.bool and masks.device.type == "cuda" and counts.dtype == torch.float32:
        x16 = masks.to(torch.bfloat16)
        counts += torch.mm(x16.T, x16, out_dtype=torch.float32)
        colsum += masks.sum(0, dtype=counts.dtype)
        return
    x = masks.to(counts.dtype)
    counts.addmm_(x.T, x)
    colsum += x.sum(0)


def _standardised(counts: torch.Tensor, colsum: torch.Tensor, n: int, moments: Moments, precision: str) -> GramSystem:
    """``D (XᵀX − s sᵀ / n) D / n`` with ``s`` the column sums: H, built in place of a copy of the counts."""
    hessian = counts.clone()
    hessian.addr_(colsum, colsum, alpha=-1.0 / n)
    inv_sd = moments.inv_sd.to(hessian.dtype)
    hessian.mul_(inv_sd[:, None]).mul_(inv_sd[None, :]).div_(n)
    low: torch.Tensor | None = None
    if precision == "bf16":
        low = hessian.to(torch.bfloat16)
    elif precision == "tf32":
        low = hessian if hessian.device.type == "cuda" else round_tf32(hessian)
    return GramSystem(counts=counts, colsum=colsum, n=n, hessian=hessian, low=low, precision=precision,
                      lipschitz=_top_eigenvalue(hessian) * _LIPSCHITZ_SAFETY)


def _top_eigenvalue(h: torch.Tensor) -> float:
    """Largest eigenvalue of the symmetric PSD ``h`` by power iteration from a fixed start."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    start = torch.randn(h.shape[0], 1, generator=gen, dtype=torch.float64).to(h.dtype).to(h.device)
    return top_eigenvalue(lambda v: h @ v, start, _POWER_ITERATIONS)

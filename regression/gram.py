"""The Gram engine: each λ step solved by accelerated proximal gradient on ``XsᵀXs / n``.

SAGA (:mod:`regression.epochs`) multiplies a minibatch of masks twice per step,
``4·n·N`` flops per target per epoch. When there are not many more features than
rows (``N ≤ 2n``: every published datamodel setting), the standardised Gram
matrix ``H = XsᵀXs / n`` [N, N] is cheaper to form once (one pass over the rows)
than a few SAGA epochs, and the gradient of the smooth part is then one product,
``H w − c`` (``2·N²`` flops per target), with ``c = Xsᵀ(y − ȳ)/n`` from the
moments. On it each λ step runs FISTA (Beck and Teboulle 2009):

    w⁺ = prox_{ηλ}(z − η (H z − c));   z ← w⁺ + β (w⁺ − w)

with η = 1/L̂ (``L̂`` the top eigenvalue of H by power iteration, with a 1.1
margin: the step every proximal-gradient method is proven to converge with), the
momentum β of Nesterov's sequence, and O'Donoghue and Candès' adaptive restart
(momentum reset for a target whose step turned against its last move). A target
stops at a λ when its weights change by at most ``tol`` relative in one
iteration, the rule SAGA applies per epoch; ``max_epochs`` caps the iterations.

**Precision.** ``H`` is formed from exact integer co-occurrence counts ``XᵀX``
(fp32 holds them exactly below 2²⁴ rows) and standardised in place
(``H = D (XᵀX − n μμᵀ) D / n``, ``D = diag(1/σ)``). Within a λ step the iterates
move little, so the products are split: ``H w_ref`` once per step in the compute
dtype, and ``H (z − w_ref)`` for every iteration in the precision asked for (bf16
operands with fp32 accumulation, or TF32). The reduced precision then only
touches the change since the step began, a few per cent of the weights, so its
error is that fraction of 2⁻⁹ (bf16) — below ``tol`` — and bf16 runs at the
device's native matrix rate (AVX-512 BF16 / AMX on CPUs, tensor cores on GPUs).

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

__all__ = ["FIRST_STEP_FACTOR", "GramSystem", "References", "build_gram", "choose_engine", "gram_bytes", "native_bf16", "resolve_precision",
           "solve_gram_lambda"]

_POWER_ITERATIONS = 30
_LIPSCHITZ_SAFETY = 1.1
#: Features per row up to which the Gram engine is cheaper than SAGA: one Gram product
#: (2·N² flops per target) against a SAGA epoch's two passes (4·n·N).
_MAX_FEATURES_PER_ROW = 2.0
#: The share of the memory the plan may give the Gram matrices under ``engine="auto"``.
_GRAM_SHARE = 0.25
#: The first step tried, in units of the proven 1/L̂: the iterates are sparse, and the
#: curvature along sparse directions is about half the top eigenvalue of H (docs/benchmarks.md).
#: Backtracking halves it for a target whose step fails the descent test.
FIRST_STEP_FACTOR = 3.0
#: Relative rounding of the in-step products (bf16 and TF32 operands, the CPU's bf16 result).
_ROUNDING_UNIT = {"bf16": 2.0**-8, "tf32": 2.0**-10, "fp32": 2.0**-23}
_EXACT_UNIT = 2.0**-23
#: A row whose iterate is within this many ``tol`` of converging, and further than this
#: share of its size from its reference point, gets a new reference.
_REFRESH_CHANGE = 10.0
_REFRESH_DISTANCE = 0.25
#: Iterations at one λ after which a row still moving gets a smaller step.
_STALL = 25
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


@dataclass
class References:
    """Per target, the last exact reference point of its solves and the gradient there (std. coords)."""

    point: torch.Tensor
    gradient: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, like: torch.Tensor) -> References:
        """None yet, for weights shaped like ``like`` [N, T]."""
        return cls(point=torch.zeros_like(like), gradient=torch.zeros_like(like),
                   valid=torch.zeros(like.shape[1], dtype=torch.bool, device=like.device))


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


def solve_gram_lambda(
    system: GramSystem, c: torch.Tensor, weight: torch.Tensor, cols: torch.Tensor, lam: torch.Tensor,
    steps: torch.Tensor, *, tol: float, max_iter: int, l2: float, start: torch.Tensor | None = None,
    references: References | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """FISTA with per-target backtracking at fixed per-target λ until each target converges.

    Parameters
    ----------
    system : GramSystem
        H of the rows being fitted.
    c : Tensor, shape [N, T_all]
        ``Xsᵀ(y − ȳ)/n`` of the same rows.
    weight : Tensor, shape [N, T_all]
        Weights (std. coords); columns ``cols`` are overwritten with the solutions.
    cols : Tensor of int64, shape [A]
    lam : Tensor, shape [A]
    steps : Tensor, shape [T_all]
        Each target's step η; those of ``cols`` are halved in place where a step
        failed the descent test (never below the proven ``1/L̂``).
    start : Tensor, shape [N, A], optional
        Where to start instead of ``weight[:, cols]`` (an extrapolated warm start).
    references : References, optional
        Exact reference points kept from earlier solves: a target whose start is
        near its own reuses it instead of an exact product; every target's is
        stored back.

    Returns
    -------
    iterations : Tensor of int64, shape [A]
    converged : Tensor of bool, shape [A]
    products : int
        Target-rows multiplied by H (for the flop count).
    """
    device = weight.device
    count = cols.numel()
    iterations = torch.zeros(count, dtype=torch.int64, device=device)
    converged = torch.zeros(count, dtype=torch.bool, device=device)
    tiny = torch.finfo(weight.dtype).tiny
    proven = system.step * (1 + 1e-6)
    unit = _ROUNDING_UNIT.get(system.precision if system.low is not None else "fp32", _EXACT_UNIT)
    pos = torch.arange(count, device=device)
    # Targets as rows: every per-target reduction and compaction runs over contiguous memory.
    w = (weight.index_select(1, cols) if start is None else start).T.contiguous()
    c_rows = c.index_select(1, cols).T
    ref = w.clone()
    fresh = torch.ones(count, dtype=torch.bool, device=device)
    grad_ref = torch.empty_like(w)
    if references is not None:
        # A kept reference close to the start serves as well as a new one (the refresh rule below).
        kept_ref = references.point.index_select(1, cols).T
        distance = torch.linalg.vector_norm(w - kept_ref, ord=float("inf"), dim=1)
        size = torch.linalg.vector_norm(w, ord=float("inf"), dim=1)
        fresh = ~(references.valid.index_select(0, cols) & (distance <= _REFRESH_DISTANCE * size))
        reuse = (~fresh).nonzero()[:, 0]
        ref[reuse] = kept_ref[reuse]
        grad_ref[reuse] = references.gradient.index_select(1, cols[reuse]).T
    rows = fresh.nonzero()[:, 0]
    if rows.numel():
        grad_ref[rows] = system.times_rows(ref[rows]) - c_rows[rows]  # the exact gradient at the reference point
    # The gradient at w: grad_ref + H (w − ref), in the reduced precision for the reused references.
    g_w = grad_ref.clone() if rows.numel() == count else grad_ref + system.times_change_rows(w - ref)[0]
    eta = steps.index_select(0, cols)[:, None].clone()
    lam_col = lam[:, None]
    w_prev, g_prev = w, g_w
    t = torch.ones(count, 1, dtype=weight.dtype, device=device)
    products, gather = int(rows.numel()) + (count if rows.numel() < count else 0), True

    def keep_references(done: torch.Tensor | slice) -> None:
        if references is not None:
            references.point.index_copy_(1, cols[pos[done]], ref[done].T)
            references.gradient.index_copy_(1, cols[pos[done]], grad_ref[done].T)
            references.valid[cols[pos[done]]] = True
    for _ in range(max_iter):
        t_next = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        # The gradient is affine in w, so the one at the extrapolated z is the same extrapolation.
        z = torch.addcmul(w, w - w_prev, beta)
        g_z = torch.addcmul(g_w, g_w - g_prev, beta)
        u = torch.addcmul(z, g_z, eta, value=-1.0)
        thr = eta * lam_col
        w_new = u.sub_(u.clamp(-thr, thr))
        if l2:
            w_new.div_(1.0 + eta * l2)
        product, gather = system.times_change_rows(w_new - ref, gather=gather)
        g_new = grad_ref + product
        products += int(w.shape[0])
        iterations[pos] += 1
        step = w_new - z
        # Descent test of backtracking FISTA: the curvature along the step is at most 1/η,
        # up to what rounding the products can hide (|⟨step, error⟩| ≤ ‖step‖·u·‖H(z − ref)‖·2).
        curvature = torch.linalg.vecdot(step, g_new - g_z, dim=1)[:, None]
        step_sq = torch.linalg.vecdot(step, step, dim=1)[:, None]
        noise = (2 * unit) * step_sq.sqrt() * torch.linalg.vector_norm(product, dim=1, keepdim=True)
        diff = w_new - w
        scale = torch.linalg.vector_norm(w_new, ord=float("inf"), dim=1, keepdim=True).clamp_min(tiny)
        change = torch.linalg.vector_norm(diff, ord=float("inf"), dim=1, keepdim=True) / scale
        done = change <= tol
        # At the proven step (or once converged) the test holds up to rounding: accept.
        ok = ((curvature - noise) * eta <= step_sq) | (eta <= proven) | done
        # A row still moving after many iterations may be oscillating inside the rounding
        # slack of the test: it gets the next smaller step too.
        stalled = (iterations[pos] % _STALL == 0)[:, None] & (eta > proven) & ~done
        ok &= ~stalled
        all_ok = bool(ok.all())
        if not all_ok:
            eta = torch.where(ok, eta, torch.clamp(eta / 2, min=system.step))
        # Rejected rows stay put and restart; accepted ones move, with an adaptive restart where
        # the step ran against the last move (⟨z − w⁺, w⁺ − w⟩ > 0).
        restart = ~ok | (torch.linalg.vecdot(step, diff, dim=1)[:, None] < 0)
        w_prev, g_prev = w, g_w
        if all_ok:
            w, g_w = w_new, g_new
        else:
            w, g_w = torch.where(ok, w_new, w), torch.where(ok, g_new, g_w)
        t = torch.where(restart, torch.ones_like(t), t_next)
        if bool(restart.any()):
            w_prev, g_prev = torch.where(restart, w, w_prev), torch.where(restart, g_w, g_prev)
        done = (done & ok)[:, 0]
        near = (change[:, 0] <= _REFRESH_CHANGE * tol) & ~done
        if unit > _EXACT_UNIT and bool(near.any()):
            # The reduced-precision products err relative to ‖w − ref‖: near convergence, a
            # row that has moved far from its reference gets an exact one (one product).
            rows = near.nonzero()[:, 0]
            far = torch.linalg.vector_norm(w[rows] - ref[rows], ord=float("inf"), dim=1) > (
                _REFRESH_DISTANCE * scale[rows, 0])
            rows = rows[far]
            if rows.numel():
                exact = system.times_rows(w[rows]) - c_rows[pos[rows]]
                g_prev[rows] = g_prev[rows] + (exact - g_w[rows])
                g_w[rows] = exact
                grad_ref[rows] = exact
                ref[rows] = w[rows]
                products += int(rows.numel())
        if bool(done.any()):
            keep_references(done)
            weight.index_copy_(1, cols[pos[done]], w[done].T)
            steps.index_copy_(0, cols[pos[done]], eta[done, 0])
            converged[pos[done]] = True
            keep = ~done
            if not bool(keep.any()):
                return iterations, converged, products
            w, w_prev, g_w, g_prev, ref, grad_ref = (a[keep] for a in (w, w_prev, g_w, g_prev, ref, grad_ref))
            eta, lam_col, t, pos = eta[keep], lam_col[keep], t[keep], pos[keep]
    keep_references(slice(None))
    weight.index_copy_(1, cols[pos], w.T)
    steps.index_copy_(0, cols[pos], eta[:, 0])
    return iterations, converged, products

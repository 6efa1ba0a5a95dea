"""FISTA with per-target backtracking at one λ on the Gram engine's matrix H = XsᵀXs / n.

Each λ step of the Gram engine (:mod:`regression.gram`) runs FISTA (Beck and
Teboulle 2009), per target:

    w⁺ = prox_{ηλ}(z − η (H z − c));   z ← w⁺ + β (w⁺ − w)

with Nesterov's momentum β and O'Donoghue and Candès' adaptive restart
(momentum reset for a target whose step turned against its last move). The step
η is backtracked per target: it starts at ``FIRST_STEP_FACTOR / L̂`` (``L̂`` the
top eigenvalue of H by power iteration, with a 1.1 margin) because the iterates
are sparse and the curvature along sparse moves is well below ``L̂``; a step
whose curvature ``⟨Δ, HΔ⟩ / ‖Δ‖²`` exceeds ``1/η`` is refused and η halved, never
below the proven ``1/L̂``, and a target still moving after ``_STALL`` iterations
gets the next smaller step too. The products are taken at the iterates, so the
gradient at ``z`` is the same extrapolation of two known gradients (it is affine
in w) and the descent test costs no extra product. A target stops at a λ when its
weights change by at most the tolerance relative in one iteration, the rule SAGA
applies per epoch; ``max_epochs`` caps the iterations. Along the path each target
starts from its last two solutions extrapolated to the new λ.

The products with H are :class:`regression.gram.GramSystem`'s: an exact one at a
reference point, the reduced-precision ones for the change since.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from regression.gram import GramSystem

__all__ = ["FIRST_STEP_FACTOR", "References", "solve_gram_lambda"]

#: The first step tried, in units of the proven 1/L̂: the iterates are sparse, and the
#: curvature along sparse moves is well below the top eigenvalue of H (on the benchmark
#: sweep 3/L̂ needed fewer products than 2/L̂, and 4/L̂ no fewer than 3/L̂). Backtracking
#: halves it for a target whose step fails the descent test.
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


@dataclass
class References:
    """Per target, the last exact reference point of its solves and the gradient there (std. coords).

    Targets are rows (``point``, ``gradient``: [T, N]): the solver stores and gathers
    whole targets, which is a contiguous copy in this layout (a strided one, several
    times slower, in the weights' [N, T]).
    """

    point: torch.Tensor
    gradient: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, like: torch.Tensor) -> References:
        """None yet, for weights shaped like ``like`` [N, T]."""
        shape = (like.shape[1], like.shape[0])
        return cls(point=like.new_zeros(shape), gradient=like.new_zeros(shape),
                   valid=torch.zeros(like.shape[1], dtype=torch.bool, device=like.device))


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    """``‖x‖∞`` of each row of ``x`` [A, N], shape [A]: the same value as ``vector_norm(x, inf, dim=1)``.

    torch's infinity norm along a dimension is about 20x slower on the CPU than a max
    and a min (measured on [256, 4000] fp32), and the solver takes three per iteration.
    """
    return torch.maximum(x.amax(dim=1), x.amin(dim=1).neg())


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
        kept_ref = references.point.index_select(0, cols)
        distance = _max_abs(w - kept_ref)
        size = _max_abs(w)
        fresh = ~(references.valid.index_select(0, cols) & (distance <= _REFRESH_DISTANCE * size))
        reuse = (~fresh).nonzero()[:, 0]
        ref[reuse] = kept_ref[reuse]
        grad_ref[reuse] = references.gradient.index_select(0, cols[reuse])
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
            references.point.index_copy_(0, cols[pos[done]], ref[done])
            references.gradient.index_copy_(0, cols[pos[done]], grad_ref[done])
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
        scale = _max_abs(w_new)[:, None].clamp_min(tiny)
        change = _max_abs(diff)[:, None] / scale
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
            far = _max_abs(w[rows] - ref[rows]) > _REFRESH_DISTANCE * scale[rows, 0]
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

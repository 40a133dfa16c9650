r"""Fair projections of binary predictions, solved in torch on the tensors' device.

Given probabilities :math:`p_n` and linear constraints :math:`b_m + \sum_n A_{nm} q_n = 0` (the fairness
constraints of a linear-fractional statistic fixed to a target, see
:func:`fairret.functional.linear_fractional.fixed_constraint`), find the Bernoulli rows :math:`q_n \in [0, 1]`
closest to the predictions:

.. math:: q^\star = \arg\min_{q \in [0,1]^N} \tfrac1N \sum_n D(q_n \Vert p_n) \quad\text{s.t.}\quad b + A^\top q = 0.

The problem has as many dual variables as constraints (``M`` = groups × stacked statistics), so it is solved in
the dual by damped Newton steps: for a dual vector :math:`\lambda`, every row's minimiser
:math:`q_n(t_n) = \arg\min_q D(q \Vert p_n) + t_n q` with :math:`t = A\lambda` is known in closed form, the dual
gradient is the constraint residual and its Hessian is :math:`A^\top W A` with :math:`W = -\,dq/dt`. Each step
is limited to a trust region in the row multipliers and kept only if it raises the dual value (the region grows
after a kept step and shrinks after a rejected one). On accelerators and under ``torch.compile(fullgraph=True)``
the loop has a fixed length and never synchronises with the device; on CPU tensors it stops as soon as every
constraint holds to 1e-12 relative to its scale. Computation is in float64.

Divergences (per row, over the two-class distributions ``(1-q, q)`` and ``(1-p, p)``):

=================  ======================================================================
``kl``             :math:`\sum_c q_c \log(q_c / p_c)`
``js``             :math:`\tfrac12 KL(q \Vert m) + \tfrac12 KL(p \Vert m)`, :math:`m = (q + p)/2`
``tv``             :math:`\tfrac12 \sum_c |q_c - p_c| = |q - p|` (a linear program: its dual is smoothed by a
                   soft minimum over each row's vertices at a temperature lowered down to ``tv_eps``)
``squared_euclidean``  :math:`\sum_c (q_c - p_c)^2 = 2 (q - p)^2`
``chi_squared``    :math:`\sum_c (q_c - p_c)^2 / p_c = (q - p)^2 / (p (1 - p))`
=================  ======================================================================

If the constraints cannot be met inside ``[0, 1]`` the solver returns its last iterate; the residual is reported
by :func:`projection_residual`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .._distributed import all_reduce_sum, is_distributed

__all__ = ["DIVERGENCES", "project", "divergence_value", "projection_residual"]

DIVERGENCES = ("kl", "js", "tv", "squared_euclidean", "chi_squared")

_P_EPS = 1e-12


class _RowSolution(NamedTuple):
    q: torch.Tensor  # minimiser of D(q||p) + t q over [0, 1]
    w: torch.Tensor  # -dq/dt >= 0
    h: torch.Tensor  # D(q||p) + t q (the row's dual value)


def _clip01(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inside = (x > 0) & (x < 1)
    return x.clamp(0.0, 1.0), inside


def _row_kl(t, p, logit_p, log1mp, eps):
    # q = sigmoid(logit(p) - t); h = -log(1 - p + p e^{-t}) = -log(1 - p) - softplus(logit(p) - t). The constant
    # -log(1 - p) is left out: h only serves to compare step sizes.
    u = logit_p - t
    q = torch.sigmoid(u)
    return _RowSolution(q, q * (1 - q), -F.softplus(u))


def _js_value(q, p):
    m = 0.5 * (q + p)
    return 0.5 * (
        torch.xlogy(q, q) - torch.xlogy(q, m) + torch.xlogy(1 - q, 1 - q) - torch.xlogy(1 - q, 1 - m)
        + torch.xlogy(p, p) - torch.xlogy(p, m) + torch.xlogy(1 - p, 1 - p) - torch.xlogy(1 - p, 1 - m)
    )


def _row_js(t, p, logp, log1mp, eps):
    # D'(q) = 1/2 log(q (2-q-p) / ((1-q)(q+p))) = -t  =>  (r-1) q^2 + (2-p-r(1-p)) q - r p = 0, r = e^{-2t}
    r = torch.exp(-2 * t.clamp(-40, 40))
    b = 2 - p - r * (1 - p)
    disc = b * b + 4 * (r - 1) * r * p
    q = (2 * r * p / (b + disc.clamp_min(0).sqrt())).clamp(0.0, 1.0)
    qi = q.clamp(_P_EPS, 1 - _P_EPS)
    d2 = 0.5 * (1 / qi - 1 / (2 - qi - p) + 1 / (1 - qi) - 1 / (qi + p))
    h = _js_value(q, p) + t * q
    return _RowSolution(q, 1 / d2, h)


#: The quadratic divergences :math:`(q - p)^2 / (2 w(p))`: the scale :math:`w(p)` of each.
_QUADRATIC_SCALE: dict[str, Callable] = {
    "squared_euclidean": lambda p: torch.full_like(p, 0.25),
    "chi_squared": lambda p: 0.5 * p * (1 - p),
}


def _row_quadratic(scale_fn):
    # D = (q - p)^2 / (2 w)  => q = clip(p - w t), W = w inside the box
    def row(t, p, logp, log1mp, eps):
        w = scale_fn(p)
        q, inside = _clip01(p - w * t)
        h = (q - p) ** 2 / (2 * w) + t * q
        return _RowSolution(q, torch.where(inside, w, torch.zeros_like(w)), h)

    return row


def _row_tv(t, p, logp, log1mp, eps):
    # min_q |q - p| + t q is attained at a vertex v in {0, p, 1} with values {p, t p, 1 - p + t}. The dual is
    # smoothed by a soft minimum over the vertices at temperature eps: q is the softmin-weighted vertex mean,
    # W = Var(v) / eps, and h exceeds the exact row value by at most eps log 3.
    vals = torch.stack([p.expand_as(t), t * p, 1 - p + t])
    logits = -vals / eps
    wts = torch.softmax(logits, dim=0)
    q = wts[1] * p + wts[2]
    var = wts[1] * p * p + wts[2] - q * q
    h = -eps * torch.logsumexp(logits, dim=0)
    return _RowSolution(q, var.clamp_min(0) / eps, h)


_ROWS: dict[str, Callable] = {
    "kl": _row_kl,
    "js": _row_js,
    "tv": _row_tv,
    "squared_euclidean": _row_quadratic(_QUADRATIC_SCALE["squared_euclidean"]),
    "chi_squared": _row_quadratic(_QUADRATIC_SCALE["chi_squared"]),
}

_DEFAULT_ITERS = {"kl": 20, "js": 20, "tv": 12, "squared_euclidean": 20, "chi_squared": 20}
_TOL = 1e-12
_TV_SCHEDULE = (1.0, 0.3, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


def _check_divergence(divergence: str) -> None:
    if divergence not in _ROWS:
        raise ValueError(f"Expected argument `divergence` to be one of {DIVERGENCES}, but got {divergence!r}")


def project(
    prob: torch.Tensor,
    intercept: torch.Tensor,
    slope: torch.Tensor,
    divergence: str = "kl",
    *,
    n_iter: int | None = None,
    tv_eps: float = 1e-6,
    sync_dist: bool = False,
) -> torch.Tensor:
    r"""Project probabilities onto the set satisfying linear constraints, under a divergence.

    Args:
        prob: ``(N,)`` probabilities of the positive class (detached internally).
        intercept: ``(M,)`` constraint intercepts ``b``.
        slope: ``(N, M)`` constraint slopes ``A``.
        divergence: one of ``kl``, ``js``, ``tv``, ``squared_euclidean``, ``chi_squared``.
        n_iter: Newton steps (per smoothing level for ``tv``); a per-divergence default when None.
        tv_eps: final smoothing temperature of the total variation's dual.
        sync_dist: when a process group is initialised, every sum over rows (residual, Hessian, dual value) is
            all-reduced, so each rank solves the global-batch problem for its own rows. ``intercept`` must then
            already be the global one.

    Returns:
        ``(N,)`` projected probabilities ``q`` (float64, detached).

    Example:
        >>> import torch
        >>> p = torch.tensor([0.2, 0.4, 0.6, 0.8])
        >>> # constraint: mean of q over the first two rows equals 0.5 (= sum q_0 + q_1 - 1 = 0)
        >>> q = project(p, torch.tensor([-1.0]), torch.tensor([[1.0], [1.0], [0.0], [0.0]]))
        >>> round(float(q[:2].sum()), 6), bool(torch.allclose(q[2:], p[2:].double()))
        (1.0, True)
    """
    _check_divergence(divergence)
    row = _ROWS[divergence]
    p = prob.detach().to(torch.float64).clamp(_P_EPS, 1 - _P_EPS)
    a = slope.detach().to(torch.float64)
    b = intercept.detach().to(torch.float64)
    # Newton steps are invariant to rescaling the constraints, so they are used as given.
    red = all_reduce_sum if sync_dist else (lambda x: x)
    logp, log1mp = torch.log(p), torch.log1p(-p)
    if divergence == "kl":
        logp = logp - log1mp  # the KL rows take logit(p)
    lam = torch.zeros(a.shape[1], dtype=torch.float64, device=p.device)
    eye = torch.eye(a.shape[1], dtype=torch.float64, device=p.device)
    iters = _DEFAULT_ITERS[divergence] if n_iter is None else int(n_iter)
    schedule = _TV_SCHEDULE + (tv_eps,) if divergence == "tv" else (0.0,)
    if divergence == "tv":
        schedule = tuple(e for e in schedule if e >= tv_eps)
    at = a.T.contiguous()  # (M, N): row-major sweeps over samples
    # On CPU tensors reading a value costs no device synchronisation, so the loop stops once converged; on
    # accelerators and under torch.compile it runs the fixed number of steps.
    early_exit = p.device.type == "cpu" and not torch.compiler.is_compiling()
    tol = _TOL * (red(at.abs().sum(1)) + b.abs()) if early_exit else None
    # The quadratic divergences move q = clip(p - w(p) t) piecewise linearly in t: their trust region is measured
    # in q (no row's q moves by more than `radius` in probability; rows pinned at 0 or 1 by the box do not count),
    # so that rows with a tiny w (chi-squared on saturated probabilities, where t must reach ~1/w) are reached in a
    # few steps, not after ~log2(1/w) doublings.
    q_scale = _QUADRATIC_SCALE[divergence](p) if divergence in _QUADRATIC_SCALE else None
    for level, eps in enumerate(schedule):
        # Trust region in t-space (q-space for the quadratic divergences): no row multiplier moves by more than
        # `radius` in one step. A step that does not raise the (concave) dual value is rejected and the radius
        # shrinks; an accepted one widens it. All of this is tensor arithmetic: no host synchronisation, a fixed
        # number of steps.
        start = 30.0 * eps if divergence == "tv" else (8.0 if q_scale is None else 2.0)
        radius = torch.tensor(start, dtype=torch.float64, device=p.device)
        sol = row(lam @ at, p, logp, log1mp, eps)
        g_cur = red(sol.h.sum()) + lam @ b
        # the last smoothing level of the total variation polishes with more steps
        for _ in range(iters if level < len(schedule) - 1 or len(schedule) == 1 else 5 * iters):
            resid = b + red(at @ sol.q)
            if early_exit and bool((resid.abs() <= tol).all()):
                break
            hess = red((at * sol.w) @ a)
            ridge = 1e-12 * hess.diagonal().mean() + 1e-300
            delta = torch.linalg.solve(hess + ridge * eye, resid)
            step = delta @ at
            if q_scale is not None:  # how far each row's q moves in the full step; rows the box pins do not move
                free = p - q_scale * (lam @ at)  # q before the box
                step = (free - q_scale * step).clamp(0.0, 1.0) - free.clamp(0.0, 1.0)
            # a rank without rows (N = 0) moves nothing; the shape is known without reading data
            move = step.abs().amax() if step.numel() else torch.zeros((), dtype=torch.float64, device=p.device)
            if sync_dist and is_distributed():
                torch.distributed.all_reduce(move, op=torch.distributed.ReduceOp.MAX)
            cand = lam + delta * torch.clamp(radius / move.clamp_min(1e-300), max=1.0)
            new = row(cand @ at, p, logp, log1mp, eps)
            g_new = red(new.h.sum()) + cand @ b
            # ties within rounding count as progress, so the last digits of the residual can still be won
            accept = torch.isfinite(g_new) & (g_new >= g_cur - 1e-13 * g_cur.abs())
            lam = torch.where(accept, cand, lam)
            g_cur = torch.where(accept, g_new, g_cur)
            sol = _RowSolution(*(torch.where(accept, x, y) for x, y in zip(new, sol)))
            radius = torch.where(accept, radius * 2.0, radius * 0.25)
    return sol.q


def divergence_value(
    q: torch.Tensor,
    pred: torch.Tensor,
    divergence: str,
    *,
    pred_as_logit: bool,
    tv_eps: float = 1e-7,
) -> torch.Tensor:
    r"""Per-row ``D(q || p)``, differentiable in ``pred`` (``q`` is treated as a constant).

    Args:
        q: ``(N,)`` projected probabilities.
        pred: ``(N,)`` logits (``pred_as_logit=True``) or probabilities.
        divergence: the divergence name.
        pred_as_logit: whether ``pred`` holds logits; the KL divergence then uses ``logsigmoid`` for stability.
        tv_eps: pseudo-Huber smoothing :math:`\sqrt{d^2+\epsilon^2}-\epsilon` of the total variation, so that
            rows the projection leaves in place get a zero gradient rather than an arbitrary sign.

    Returns:
        ``(N,)`` divergences (average them for the loss), in ``pred``'s dtype, at least float32.

    Numerics: computed in float64 whatever ``pred``'s dtype (so float16 and bfloat16 inputs, and float32 logits
    whose sigmoid rounds to 0 or 1, are safe), in log space for logits: :math:`\log p` and :math:`\log(1-p)` are
    ``logsigmoid(±pred)``, finite for every finite logit, so the KL and JS values and gradients are finite however
    saturated the logit. Probabilities (``pred_as_logit=False``) are bounded to ``[1e-12, 1 - 1e-12]`` as in
    :func:`project`. The chi-squared divergence, whose weight :math:`1/(p(1-p))` grows without bound, bounds the
    probability to the same interval in both cases (a logit beyond :math:`\pm 27.6`): such a row's divergence is
    at most about :math:`10^{12}`, consistent with the projection (which uses the same bound), with zero
    gradient beyond it.
    """
    _check_divergence(divergence)
    out_dtype = torch.promote_types(pred.dtype, torch.float32)
    q = q.detach().to(torch.float64)
    x = pred.to(torch.float64)
    if pred_as_logit and divergence != "chi_squared":
        logp, log1mp = F.logsigmoid(x), F.logsigmoid(-x)
        p, p1m = torch.sigmoid(x), torch.sigmoid(-x)
    else:
        p = (torch.sigmoid(x) if pred_as_logit else x).clamp(_P_EPS, 1 - _P_EPS)
        p1m = 1 - p
        logp, log1mp = torch.log(p), torch.log1p(-p)
    if divergence == "kl":
        val = torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q) - q * logp - (1 - q) * log1mp
    elif divergence == "js":
        # the mixture m = (q + p) / 2 in log space: log m and log(1 - m) stay finite since log p and log(1 - p) are
        half = math.log(2.0)
        logm = torch.logaddexp(torch.log(q), logp) - half
        log1mm = torch.logaddexp(torch.log1p(-q), log1mp) - half
        val = 0.5 * (torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q) - q * logm - (1 - q) * log1mm
                     + p * logp + p1m * log1mp - p * logm - p1m * log1mm)
    elif divergence == "tv":
        val = ((q - p) ** 2 + tv_eps * tv_eps).sqrt() - tv_eps
    elif divergence == "squared_euclidean":
        val = 2 * (q - p) ** 2
    else:
        val = (q - p) ** 2 / (p * p1m)
    return val.to(out_dtype)


def projection_residual(q: torch.Tensor, intercept: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Constraint residual ``b + A^T q`` of a projection (zero when the constraints hold)."""
    return intercept.to(torch.float64) + slope.to(torch.float64).T @ q.to(torch.float64)

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

The total variation's temperatures are lowered level by level; each level starts from the better (higher dual
value) of the last solution and its linear extrapolation from the two levels before (the smoothed optimum moves
about linearly in the temperature), so that a level takes a few steps. On CPU tensors (outside
``torch.compile``, without ``sync_dist``) the linear program is first reduced to the *types* of rows, rows with
equal constraint coefficients (group memberships times the statistic's coefficients, e.g. the label): only a
type's total move counts, and its cost is that total's absolute value when all its rows move the same way. The
smoothed dual is solved on the types (weighted by their sizes), and each row of a type then covers the same
fraction of its room (``1 - p`` up, ``p`` down). With one-hot groups this is a handful of types whatever ``N``;
when most rows differ (continuous attributes), the rows are solved one by one.

On CPU tensors the solver's ops run single-threaded (:mod:`fairret._threads`): its loop is made of small ops,
each of which would otherwise end in a barrier across threads, and on a busy machine that barrier costs more than
the op.

If the constraints cannot be met inside ``[0, 1]`` the solver returns its last iterate; the residual is reported
by :func:`projection_residual`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Tuple

import torch
import torch.nn.functional as F

from .._distributed import all_reduce_sum, is_distributed
from .._threads import single_threaded

__all__ = ["DIVERGENCES", "project", "divergence_value", "projection_residual"]

DIVERGENCES = ("kl", "js", "tv", "squared_euclidean", "chi_squared")

_P_EPS = 1e-12


class _RowSolution(NamedTuple):
    q: torch.Tensor  # minimiser of D(q||p) + t q over [0, 1] (for ``tv``: of |u| + t u over [lo, hi])
    w: torch.Tensor  # -dq/dt >= 0
    h: torch.Tensor  # D(q||p) + t q (the row's dual value)


def _clip01(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inside = (x > 0) & (x < 1)
    return x.clamp(0.0, 1.0), inside


def _row_kl(t, data, eps):
    # q = sigmoid(logit(p) - t); h = -log(1 - p + p e^{-t}) = -log(1 - p) - softplus(logit(p) - t). The constant
    # -log(1 - p) is left out: h only serves to compare step sizes.
    u = data[0] - t
    q = torch.sigmoid(u)
    return _RowSolution(q, q * (1 - q), -F.softplus(u))


def _js_value(q, p):
    m = 0.5 * (q + p)
    return 0.5 * (
        torch.xlogy(q, q) - torch.xlogy(q, m) + torch.xlogy(1 - q, 1 - q) - torch.xlogy(1 - q, 1 - m)
        + torch.xlogy(p, p) - torch.xlogy(p, m) + torch.xlogy(1 - p, 1 - p) - torch.xlogy(1 - p, 1 - m)
    )


def _row_js(t, data, eps):
    # D'(q) = 1/2 log(q (2-q-p) / ((1-q)(q+p))) = -t  =>  (r-1) q^2 + (2-p-r(1-p)) q - r p = 0, r = e^{-2t}
    p = data[0]
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
    def row(t, data, eps):
        p = data[0]
        w = scale_fn(p)
        q, inside = _clip01(p - w * t)
        h = (q - p) ** 2 / (2 * w) + t * q
        return _RowSolution(q, torch.where(inside, w, torch.zeros_like(w)), h)

    return row


def _row_tv(t, data, eps):
    # In the move u = q - p, bounded by [lo, hi] = [-p, 1 - p]: min_u |u| + t u is attained at a vertex v in
    # {lo, 0, hi} with values {lo (t - 1), 0, hi (t + 1)}. The dual is smoothed by a soft minimum over the vertices
    # at temperature eps: u is the softmin-weighted vertex mean, W = Var(v) / eps, and h exceeds the exact row
    # value by at most eps log 3.
    lo, hi = data
    vals = torch.stack([lo * (t - 1), torch.zeros_like(t), hi * (t + 1)])
    logits = -vals / eps
    wts = torch.softmax(logits, dim=0)
    u = wts[0] * lo + wts[2] * hi
    var = wts[0] * lo * lo + wts[2] * hi * hi - u * u
    h = -eps * torch.logsumexp(logits, dim=0)
    return _RowSolution(u, var.clamp_min(0) / eps, h)


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
    p = prob.detach().to(torch.float64).clamp(_P_EPS, 1 - _P_EPS)
    a = slope.detach().to(torch.float64)
    b = intercept.detach().to(torch.float64)
    if p.device.type == "cpu" and not torch.compiler.is_compiling():
        # small ops in a loop: with one intra-op thread no op waits for a descheduled one (see fairret._threads)
        with single_threaded():
            return _solve(p, a, b, divergence, n_iter, tv_eps, sync_dist)
    return _solve(p, a, b, divergence, n_iter, tv_eps, sync_dist)


def _solve(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, divergence: str, n_iter: int | None, tv_eps: float,
           sync_dist: bool, by_type: bool = True) -> torch.Tensor:
    """:func:`project` on float64 inputs. ``by_type=False`` keeps the total variation on the rows themselves
    (what accelerators, ``torch.compile`` and ``sync_dist`` use; tests compare the two routes)."""
    red = all_reduce_sum if sync_dist else (lambda x: x)
    iters = _DEFAULT_ITERS[divergence] if n_iter is None else int(n_iter)
    schedule: Tuple[float, ...] = _TV_SCHEDULE + (tv_eps,) if divergence == "tv" else (0.0,)
    if divergence == "tv":
        schedule = tuple(e for e in schedule if e >= tv_eps)
    at = a.T.contiguous()  # (M, N): row-major sweeps over samples
    # On CPU tensors reading a value costs no device synchronisation, so the loop stops once converged; on
    # accelerators and under torch.compile it runs the fixed number of steps.
    early_exit = p.device.type == "cpu" and not torch.compiler.is_compiling()
    tol = _TOL * (red(at.abs().sum(1)) + b.abs()) if early_exit else None
    if divergence != "tv":
        logp = torch.log(p)
        data = (logp - torch.log1p(-p),) if divergence == "kl" else (p,)  # the KL rows take logit(p)
        # The quadratic divergences move q = clip(p - w(p) t) piecewise linearly in t: their trust region is
        # measured in q (see _newton).
        q_scale = _QUADRATIC_SCALE[divergence](p) if divergence in _QUADRATIC_SCALE else None
        return _newton(_ROWS[divergence], data, at, a, b, None, iters, schedule, tol, red, sync_dist, q_scale)
    # the total variation in the move u = q - p: constraints b + A^T p + A^T u = 0
    b_move = b + red(at @ p)
    types = _row_types(a) if by_type and early_exit and not (sync_dist and is_distributed()) else None
    if types is None:
        u = _newton(_row_tv, (-p, 1 - p), at, a, b_move, None, iters, schedule, tol, red, sync_dist)
        return (p + u).clamp(0.0, 1.0)
    # Rows with equal constraint coefficients form a type; only a type's total move counts (its cost is the
    # total's absolute value when all its rows move the same way), so the linear program is solved on the types:
    # one mean move v per type in [-mean p, mean (1 - p)], weighted by the type's size, then every row of the
    # type covers the same fraction of its room in that direction.
    inverse, counts, coef = types
    pmean = torch.bincount(inverse, weights=p, minlength=len(counts)) / counts
    lo, hi = -pmean, 1 - pmean
    v = _newton(_row_tv, (lo, hi), coef.T.contiguous(), coef, b_move, counts, iters, schedule, tol, red, False)
    up = (v / hi).clamp(0.0, 1.0).index_select(0, inverse)
    down = (v / lo).clamp(0.0, 1.0).index_select(0, inverse)
    return (p + up * (1 - p) - down * p).clamp(0.0, 1.0)


def _row_types(a: torch.Tensor):
    """Rows of ``a`` ``(N, M)`` grouped into types of equal rows: ``(inverse, counts, rows)``, or None when the
    rows are (nearly) all different or a hashing collision shows up (then the rows are solved one by one).

    A row's key is a fixed combination of its entries, computed column by column (so equal rows get equal keys);
    the grouping is checked row by row against the type's first row.
    """
    n, m = a.shape
    key = a[:, 0] * _KEY_WEIGHTS[0]
    for k in range(1, m):
        key = key + a[:, k] * _KEY_WEIGHTS[k % len(_KEY_WEIGHTS)] * (1.0 + k // len(_KEY_WEIGHTS))
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    if 2 * len(counts) > n:
        return None
    first = torch.full((len(counts),), n, dtype=torch.long).scatter_reduce_(0, inverse, torch.arange(n), "amin")
    coef = a.index_select(0, first)
    if not torch.equal(coef.index_select(0, inverse), a):
        return None
    return inverse, counts.to(a.dtype), coef


_KEY_WEIGHTS = tuple(math.sqrt(q) for q in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37))


def _newton(row: Callable, data: tuple, at: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            weights: torch.Tensor | None, iters: int, schedule: tuple, tol: torch.Tensor | None, red: Callable,
            sync_dist: bool, q_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Damped Newton steps on the dual of ``min sum_n w_n D_n(q_n) s.t. b + A^T (w q) = 0`` (``weights`` w, or 1):
    the rows' solutions ``q``. ``tol``: per-constraint tolerance of the early exit (None: fixed step count).
    ``q_scale``: the scale ``w(p)`` of a quadratic divergence (``data`` is then ``(p,)``), whose trust region is
    measured in q: no row's q moves by more than ``radius`` in probability (rows pinned at 0 or 1 by the box do not
    count), so that rows with a tiny w (chi-squared on saturated probabilities, where t must reach ~1/w) are
    reached in a few steps, not after ~log2(1/w) doublings."""
    aw = at if weights is None else at * weights  # (M, N)
    lam = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    eye = torch.eye(a.shape[1], dtype=torch.float64, device=a.device)

    def total(h: torch.Tensor) -> torch.Tensor:
        return red(h.sum() if weights is None else h @ weights)

    lam_prev: torch.Tensor  # the multipliers at the start of the previous level (set from level 1 on)
    lam_level: torch.Tensor  # the multipliers at the end of the previous level
    for level, eps in enumerate(schedule):
        # Trust region in t-space (q-space for the quadratic divergences): no row multiplier moves by more than
        # `radius` in one step. A step that does not raise the (concave) dual value is rejected and the radius
        # shrinks; an accepted one widens it. All of this is tensor arithmetic: no host synchronisation, a fixed
        # number of steps.
        start = 30.0 * eps if row is _row_tv else (8.0 if q_scale is None else 2.0)
        radius = torch.tensor(start, dtype=torch.float64, device=a.device)
        sol = row(lam @ at, data, eps)
        g_cur = total(sol.h) + lam @ b
        if level >= 2:
            # the smoothed optimum moves about linearly in the temperature: start from the extrapolation of the
            # last two levels' solutions when its dual value is higher
            ext = lam + (lam - lam_prev) * ((eps - schedule[level - 1]) / (schedule[level - 1] - schedule[level - 2]))
            sol_ext = row(ext @ at, data, eps)
            g_ext = total(sol_ext.h) + ext @ b
            better = torch.isfinite(g_ext) & (g_ext > g_cur)
            lam = torch.where(better, ext, lam)
            g_cur = torch.where(better, g_ext, g_cur)
            sol = _RowSolution(*(torch.where(better, x, y) for x, y in zip(sol_ext, sol)))
        lam_start = lam
        # the last smoothing level of the total variation polishes with more steps
        for _ in range(iters if level < len(schedule) - 1 or len(schedule) == 1 else 5 * iters):
            resid = b + red(aw @ sol.q)
            if tol is not None and bool((resid.abs() <= tol).all()):  # tol: set when early_exit
                break
            hess = red((aw * sol.w) @ a)
            ridge = 1e-12 * hess.diagonal().mean() + 1e-300
            delta = torch.linalg.solve(hess + ridge * eye, resid)
            step = delta @ at
            if q_scale is not None:  # how far each row's q moves in the full step; rows the box pins do not move
                free = data[0] - q_scale * (lam @ at)  # q before the box
                step = (free - q_scale * step).clamp(0.0, 1.0) - free.clamp(0.0, 1.0)
            # a rank without rows (N = 0) moves nothing; the shape is known without reading data
            move = step.abs().amax() if step.numel() else torch.zeros((), dtype=torch.float64, device=a.device)
            if sync_dist and is_distributed():
                torch.distributed.all_reduce(move, op=torch.distributed.ReduceOp.MAX)
            cand = lam + delta * torch.clamp(radius / move.clamp_min(1e-300), max=1.0)
            new = row(cand @ at, data, eps)
            g_new = total(new.h) + cand @ b
            # ties within rounding count as progress, so the last digits of the residual can still be won
            accept = torch.isfinite(g_new) & (g_new >= g_cur - 1e-13 * g_cur.abs())
            lam = torch.where(accept, cand, lam)
            g_cur = torch.where(accept, g_new, g_cur)
            sol = _RowSolution(*(torch.where(accept, x, y) for x, y in zip(new, sol)))
            radius = torch.where(accept, radius * 2.0, radius * 0.25)
        lam_prev = lam_start if level == 0 else lam_level
        lam_level = lam
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

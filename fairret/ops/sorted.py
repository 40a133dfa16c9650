r"""Exact O(n log n) distance covariance for a 1-D variable against a 1-D or a categorical one.

For 1-D ``x`` and ``y`` (exponent 1) every quantity of :math:`T_0 = \sum \hat A_{ij} \hat B_{ij}` and of its
gradient reduces to sorts, prefix sums and two-dimensional dominance sums (Huo and Székely 2016; Chaudhuri and Hu
2019 for the value):

* row sums :math:`a_{(i)\cdot} = (2i - n) x_{(i)} + S_n - 2 S_i` over sorted values;
* :math:`\sum_{ij} a_{ij} b_{ij} = 2 \sum_k \sum_{x_j < x_k} (x_k - x_j) |y_k - y_j|`, where for every ``k`` the sums
  over ``{j: x_j < x_k, y_j <= y_k}`` of ``1, y, x, xy`` are dominance sums. They are computed level by level over
  the bits of the y-ranks (a wavelet-tree sweep): at bit ``l`` a pair counts when both ranks agree above ``l`` and
  ``j`` has a 0 where ``k`` has a 1; within each group of equal high bits, an exclusive prefix sum in x order gives
  the sums, then a stable partition by the bit (prefix sums again, no sort) prepares the next level. O(n) per level,
  ``ceil(log2 n)`` levels;
* the gradient :math:`\partial T_0 / \partial x_k = 2 \sum_j \hat B_{kj}\,\mathrm{sign}(x_k - x_j)` needs
  :math:`\sum_j \mathrm{sign}(x_k - x_j)` (ranks), :math:`\sum_j \mathrm{sign}(x_k - x_j) b_{j\cdot}` (prefix sums)
  and :math:`\sum_j \mathrm{sign}(x_k - x_j) |y_k - y_j| = 2\,\mathrm{before}_k - b_{k\cdot} + \mathrm{tie}_k` with
  :math:`\mathrm{before}_k = \sum_{x_j < x_k} |y_k - y_j|` from the same dominance sums.

Ties in ``x`` or ``y`` are exact: ``x`` ties are excluded from every strict sum (their own |y| distances are added
separately), ``y`` ties contribute zero whichever side they are counted on.

For a categorical ``y`` with the discrete metric :math:`b_{ij} = w\,[g_i \ne g_j]` the same quantities come from
per-cell ranks and prefix sums of cell sizes.

All sums are in float64. Second derivatives (``create_graph=True``) fall back to the tiled backend's
differentiable recomputation (O(n²) time; :func:`fairret.ops.tiled.backward_grads`). The rank and run helpers
live in :mod:`fairret.ops._common`, which the tiled backend shares.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch

from ._common import _new_runs, _Prep, _row_sums, _runs, _sorted_row_sums, centring_divisors, sign_gradient
from .tiled import backward_grads

__all__ = ["product_sum_sorted", "dominance_sums", "is_categorical"]


def dominance_sums(ranks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Counts and sums ``out[k] = (#J_k, sum_{j in J_k} y_j)`` over ``J_k = {j < k : ranks[j] < ranks[k]}``.

    Args:
        ranks: ``(n,)`` a permutation of ``0..n-1`` (positions are the x order).
        y: ``(n,)`` values.

    Returns:
        ``(n, 2)``: the count and the sum for every position.
    """
    n = ranks.shape[0]
    out = torch.zeros(n, 2, dtype=y.dtype, device=y.device)
    if n < 2:
        return out
    levels = max(1, math.ceil(math.log2(n)))
    idx = torch.arange(n, device=ranks.device)
    # The arrangement (grouped by the high bits of the rank, x order within a group) carries its data along in
    # contiguous arrays: rank, y, and the count and sum found so far (the count exact in int64).
    # Since the ranks are a permutation, the group of prefix v at level l holds exactly the ranks
    # [v 2^(l+1), (v+1) 2^(l+1)): its start and its number of zero bits follow from the rank, without a scan.
    r, yv = ranks.long().clone(), y.clone()
    cnt = torch.zeros(n, dtype=torch.long, device=y.device)
    sm = torch.zeros_like(y)
    cz = torch.zeros(n + 1, dtype=torch.long, device=y.device)  # exclusive prefix counts of zero bits
    cy = torch.zeros(n + 1, dtype=y.dtype, device=y.device)  # exclusive prefix sums of y over zero bits
    for lvl in range(levels - 1, -1, -1):
        start = (r >> (lvl + 1)) << (lvl + 1)
        bit = (r >> lvl) & 1
        is0 = bit == 0
        torch.cumsum(is0, 0, out=cz[1:])
        torch.cumsum(torch.where(is0, yv, 0.0), 0, out=cy[1:])
        zb = cz[:-1] - cz[start]  # zero bits before me in my group
        cnt += zb * bit
        sm += (cy[:-1] - cy[start]) * bit
        # stable partition of every group by the bit: zeros first, then ones, x order kept
        new_pos = torch.where(is0, start + zb, (n - start).clamp_(max=1 << lvl) + idx - zb)
        r = torch.empty_like(r).index_copy_(0, new_pos, r)
        yv = torch.empty_like(yv).index_copy_(0, new_pos, yv)
        cnt = torch.empty_like(cnt).index_copy_(0, new_pos, cnt)
        sm = torch.empty_like(sm).index_copy_(0, new_pos, sm)
    # after the last level the arrangement is sorted by rank: slot i holds the element of rank i
    pos = torch.empty_like(idx).index_copy_(0, ranks.long(), idx)
    out[:, 0].index_copy_(0, pos, cnt.to(y.dtype))
    out[:, 1].index_copy_(0, pos, sm)
    return out


def _continuous_parts(x: torch.Tensor, y: torch.Tensor):
    """Row sums and, per sample (original order), ``T_k = sum_j sign(x_k - x_j) |y_k - y_j|``.

    Also ``S_ab = sum_ij a_ij b_ij = 2 sum_k x_k T_k`` (antisymmetry of the sign), so the dominance sums need only
    the channels ``1`` and ``y``.
    """
    pr = _Prep(x, y)
    o = pr.order
    xs, ys = pr.xs, y[o]
    n = pr.n
    # distinct y-ranks in x order; how y ties are broken does not matter (they add |y_k - y_j| = 0)
    ysorted, yorder = torch.sort(ys)
    ranks = torch.empty_like(yorder).index_copy_(0, yorder, torch.arange(n, device=x.device))
    lo_c, lo_y = dominance_sums(ranks, ys).unbind(1)
    cnt = pr.less
    sy, _ = pr.strict_prefix(ys)
    before = ys * (2 * lo_c - cnt) - 2 * lo_y + sy
    # within x-tie groups: sum of |y_k - y_j| (ys is descending inside a group, so use -ys ascending)
    w = -ys
    cs = torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
    idx = torch.arange(n, device=x.device)
    i_in = (idx - pr.tstart + 1).to(xs.dtype)
    m = (pr.tend - pr.tstart).to(xs.dtype)
    tie = (2 * i_in - m) * w + (cs[pr.tend] - cs[pr.tstart]) - 2 * (cs[idx + 1] - cs[pr.tstart])
    b_row_x = torch.empty_like(ys).index_copy_(0, yorder, _sorted_row_sums(ysorted))  # in x order
    t_sorted = 2 * before - b_row_x + tie
    s_ab = 2 * (xs * t_sorted).sum()
    a_row_x = _sorted_row_sums(xs)
    unsort = lambda v: torch.empty_like(v).index_copy_(0, o, v)  # noqa: E731
    return s_ab, unsort(a_row_x), unsort(b_row_x), unsort(t_sorted), pr


def is_categorical(y: torch.Tensor) -> bool:
    """True when ``y`` is ``(n, G)`` with exactly one nonzero per row, all nonzeros equal (scaled one-hot)."""
    if y.ndim != 2 or y.shape[1] < 2:
        return False
    nz = y != 0
    if not bool((nz.sum(1) == 1).all()):
        return False
    vals = y[nz]
    return bool((vals == vals[0]).all())


def _centred_sum(s_ab: torch.Tensor, a_row: torch.Tensor, b_row: torch.Tensor, unbiased: bool) -> torch.Tensor:
    r""":math:`T_0 = \sum \hat A_{ij} \hat B_{ij}` from ``s_ab`` :math:`= \sum a_{ij} b_{ij}` and the row sums:
    :math:`s_{ab} - 2 \sum_i a_{i\cdot} b_{i\cdot} / r + a_{\cdot\cdot} b_{\cdot\cdot} / t` (``r``, ``t`` from
    :func:`~fairret.ops._common.centring_divisors`)."""
    r, t = centring_divisors(a_row.shape[0], unbiased)
    return s_ab - 2 * (a_row * b_row).sum() / r + a_row.sum() * b_row.sum() / t


def _t0_and_grad(x: torch.Tensor, y: torch.Tensor, unbiased: bool, want_grad: bool, categorical: bool):
    """T_0 for 1-D x against y (1-D or scaled one-hot), and dT_0/dx (in x's original order)."""
    n = x.shape[0]
    if categorical:
        a_row = _row_sums(x)
        g = y.argmax(1)
        scale = y[0, g[0]].abs() * math.sqrt(2.0)  # distance between two one-hot rows of value v: v * sqrt(2)
        counts = torch.bincount(g, minlength=y.shape[1]).to(x.dtype)
        b_row = scale * (n - counts[g])
        # sum_ij a_ij [g_i != g_j] = a_tot - sum over cells of their within-cell distance totals
        key_order = torch.argsort(x, stable=True)
        key_order = key_order[torch.argsort(g[key_order], stable=True)]  # by cell, then x
        xs, gs = x[key_order], g[key_order]
        cstart, cend = _runs(_new_runs(gs))
        cs = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
        idx = torch.arange(n, device=x.device)
        i_in = (idx - cstart + 1).to(x.dtype)
        m = (cend - cstart).to(x.dtype)
        within_row = (2 * i_in - m) * xs + (cs[cend] - cs[cstart]) - 2 * (cs[idx + 1] - cs[cstart])
        s_ab = scale * (a_row.sum() - within_row.sum())
    else:
        s_ab, a_row, b_row, t_cont, pr = _continuous_parts(x, y[:, 0])
    t0 = _centred_sum(s_ab, a_row, b_row, unbiased)
    if not want_grad:
        return t0, None
    if categorical:
        pr = _Prep(x, None)
        # T_k = scale * (sum_j sign(x_k - x_j) - sum_{j in own cell} sign(x_k - x_j))
        s_all = torch.empty_like(x)
        s_all[pr.order] = pr.less - pr.greater
        tstart, tend = _runs(_new_runs(gs, xs))  # ties of x within a cell
        s_in = torch.empty_like(x)
        s_in[key_order] = (tstart - cstart).to(x.dtype) - (cend - tend).to(x.dtype)
        t_k = scale * (s_all - s_in)
    else:
        t_k = t_cont
    return t0, sign_gradient(pr, t_k, b_row, unbiased)


class _SortedProductSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unbiased: bool, categorical: bool, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x64 = x.detach()[:, 0].to(torch.float64)
            x64 = x64 - x64.mean()
            y64 = y.detach().to(torch.float64)
            t0, gx = _t0_and_grad(x64, y64, unbiased, x.requires_grad, categorical)
            gy = None
            if y.requires_grad:
                if categorical:
                    raise ValueError("The `sorted` backend treats a categorical attribute as data; it cannot be "
                                     "differentiated (detach it or use backend='tiled')")
                y1 = y64[:, 0] - y64[:, 0].mean()
                _, gy = _t0_and_grad(y1, x64.unsqueeze(1), unbiased, True, False)
        ctx.unbiased = unbiased
        ctx.grad_vars = [k for k, v in enumerate((x, y)) if v.requires_grad]
        partials = [g.unsqueeze(1) for g in (gx, gy) if g is not None]
        ctx.save_for_backward(x, y, *partials)
        return t0.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, y, *partials = ctx.saved_tensors
        return (None, None, *backward_grads(grad_out, (x, y), partials, 0.0, ctx.unbiased, ctx.grad_vars))


def _categorical_pair(y: torch.Tensor, z: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """:math:`T_0` of two scaled one-hot variables (data, no gradient) from cell counts: O(n + G·H)."""
    n = y.shape[0]
    gy, gz = y.argmax(1), z.argmax(1)
    sy = float(y[0, gy[0]].abs()) * math.sqrt(2.0)
    sz = float(z[0, gz[0]].abs()) * math.sqrt(2.0)
    ny = torch.bincount(gy, minlength=y.shape[1]).double()
    nz = torch.bincount(gz, minlength=z.shape[1]).double()
    joint = torch.zeros(y.shape[1], z.shape[1], dtype=torch.float64, device=y.device)
    joint.index_put_((gy, gz), torch.ones(n, dtype=torch.float64, device=y.device), accumulate=True)
    # sum_ij [gy_i != gy_j][gz_i != gz_j] = n^2 - sum ny^2 - sum nz^2 + sum joint^2
    s_ab = sy * sz * (n * n - (ny**2).sum() - (nz**2).sum() + (joint**2).sum())
    return _centred_sum(s_ab, sy * (n - ny[gy]), sz * (n - nz[gz]), unbiased)


def sorted_applicable(xs: List[torch.Tensor], c: float) -> Tuple[bool, str]:
    """Whether :func:`product_sum_sorted` can compute ``T_c`` for these variables, and why not."""
    if len(xs) != 2 or c != 0:
        return False, "it handles two variables without JdCov's constant (dCov/dCor and CCdCov)"
    one_d = [x.shape[1] == 1 for x in xs]
    # a categorical variable is taken as data: one that needs a gradient (e.g. saturated one-hot predictions)
    cat = [x.shape[1] > 1 and not x.requires_grad and is_categorical(x) for x in xs]
    if all(one_d) or (one_d[0] and cat[1]) or (cat[0] and one_d[1]):
        return True, ""
    if all(cat) and not any(x.requires_grad for x in xs):
        return True, ""
    if any(x.shape[1] > 1 and x.requires_grad and is_categorical(x) for x in xs):
        return False, "it takes a categorical variable as data and cannot differentiate it (detach it)"
    return False, ("it needs a 1-D variable against a 1-D or a categorical (scaled one-hot) one; got shapes "
                   f"{[tuple(x.shape) for x in xs]}")


def product_sum_sorted(xs: List[torch.Tensor], unbiased: bool) -> torch.Tensor:
    """:math:`T_0` of two variables: a 1-D one against a 1-D or a scaled one-hot ``(n, G)`` one (either order),
    or two one-hot ones (as data)."""
    x, y = xs
    if x.shape[1] > 1 and y.shape[1] > 1:
        return _categorical_pair(x.detach().double(), y.detach().double(), unbiased).to(x.dtype)
    if x.shape[1] > 1:  # T_0 is symmetric: put the 1-D variable first
        x, y = y, x
    return _SortedProductSum.apply(bool(unbiased), y.shape[1] > 1, x, y)

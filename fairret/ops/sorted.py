r"""Exact O(n log n) distance covariance for a 1-D variable against a 1-D or a categorical one.

For 1-D ``x`` and ``y`` (exponent 1) every quantity of :math:`T_0 = \sum \hat A_{ij} \hat B_{ij}` and of its
gradient reduces to sorts, prefix sums and two-dimensional dominance sums (Huo and Székely 2016; Chaudhuri and Hu
2019 for the value):

* row sums :math:`a_{(i)\cdot} = (2i - n) x_{(i)} + S_n - 2 S_i` over sorted values;
* :math:`\sum_{ij} a_{ij} b_{ij} = 2 \sum_k \sum_{x_j < x_k} (x_k - x_j) |y_k - y_j|`, where for every ``k`` the sums
  over ``{j: x_j < x_k, y_j <= y_k}`` of ``1`` and ``y`` are dominance sums. They are computed level by level over
  the bits of the y-ranks (a wavelet-tree sweep): at bit ``l`` a pair counts when both ranks agree above ``l`` and
  ``j`` has a 0 where ``k`` has a 1; within each group of equal high bits, a prefix count in x order gives the
  count, a stable partition by the bit (prefix sums again, no sort) prepares the next level and prefix sums of y
  in that new arrangement give the sums. O(n) per level, ``ceil(log2 n)`` levels;
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

Speed and memory (n = 10^6 is the intended scale): sorts are radix sorts of integer keys of the inputs' own
precision (:func:`~fairret.ops._common.sort_order`); the sweep works on int32 arrays with buffers allocated once;
everything runs in x order and only the gradient is put back in the original order; arrays are released as soon
as they are used. Every op is single-threaded (:mod:`fairret._threads`: no barrier after every op, which under a
competing load costs more than the op); the dominance sums split into two halves that run in two threads when
:func:`torch.get_num_threads` allows, with the same result either way.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .._threads import run_parallel, single_threaded, worker_count
from ._common import _new_runs, _Prep, _runs, _sorted_row_sums, centring_divisors, sign_gradient, sort_order
from .tiled import backward_grads

__all__ = ["product_sum_sorted", "dominance_sums", "is_categorical"]


def dominance_sums(ranks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Counts and sums ``out[k] = (#J_k, sum_{j in J_k} y_j)`` over ``J_k = {j < k : ranks[j] < ranks[k]}``.

    The positions split into two halves: the first half's contributions to the second come from prefix sums over
    the ranks, and each half is a problem of its own (:func:`_dominance_levels`, on the ranks within the half);
    the halves run in parallel threads (:mod:`fairret._threads`). The split depends only on ``n``.

    Args:
        ranks: ``(n,)`` a permutation of ``0..n-1`` (positions are the x order), int64.
        y: ``(n,)`` values.

    Returns:
        ``(n, 2)``: the count and the sum for every position.

    Example:
        >>> import torch
        >>> dominance_sums(torch.tensor([2, 0, 1, 3]), torch.tensor([1.0, 2.0, 4.0, 8.0]))
        tensor([[0., 0.],
                [0., 0.],
                [1., 2.],
                [3., 7.]])
    """
    n = ranks.shape[0]
    if n < _SPLIT_MIN:
        cnt, sm = _dominance_levels(ranks, y)
        return torch.stack([cnt.to(y.dtype), sm], 1)
    h = n // 2
    # first-half elements below each rank: their count (also the rank within the first half) and y sum
    below = torch.zeros(n + 1, dtype=torch.int32, device=y.device)
    mark = torch.zeros(n, dtype=torch.int32, device=y.device).index_fill_(0, ranks[:h], 1)
    torch.cumsum(mark, 0, dtype=torch.int32, out=below[1:])
    del mark
    ybelow = torch.zeros(n + 1, dtype=y.dtype, device=y.device)
    torch.cumsum(torch.zeros_like(y).scatter_(0, ranks[:h], y[:h]), 0, out=ybelow[1:])
    cross = below.index_select(0, ranks)  # for the first half: its rank within the half
    del below
    cross_y = ybelow.index_select(0, ranks[h:])
    del ybelow
    second = ranks[h:] - cross[h:]
    halves = run_parallel([lambda: _dominance_levels(cross[:h], y[:h]), lambda: _dominance_levels(second, y[h:])],
                          worker_count(2))
    del second
    out = torch.empty(n, 2, dtype=y.dtype, device=y.device)
    out[:h, 0], out[:h, 1] = halves[0]
    out[h:, 0] = halves[1][0] + cross[h:]
    out[h:, 1] = halves[1][1] + cross_y
    return out


#: From this many positions :func:`dominance_sums` splits its work in two halves.
_SPLIT_MIN = 1 << 16


def _dominance_levels(ranks: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`dominance_sums` level by level over the bits of the ranks: the count (integers) and the sum."""
    n = ranks.shape[0]
    it = torch.int32 if n < 2**30 else torch.int64  # narrow integers: half the memory traffic
    if n < 2:
        return torch.zeros(n, dtype=it, device=y.device), torch.zeros_like(y)
    levels = max(1, math.ceil(math.log2(n)))
    dev = y.device
    # The arrangement (grouped by the high bits of the rank, x order within a group) carries its data along in
    # contiguous arrays: rank, y, and the count and sum found so far; each level writes them to a second set.
    # Since the ranks are a permutation, the group of prefix v at level l holds exactly the ranks
    # [v 2^(l+1), (v+1) 2^(l+1)) and starts at that position; every group before it is full, so it is preceded
    # by exactly start/2 one bits. Every temporary has a buffer, allocated once.
    idx = torch.arange(n, dtype=it, device=dev)
    r, yv = ranks.to(it, copy=True), y.clone()
    cnt, sm = torch.zeros(n, dtype=it, device=dev), torch.zeros_like(y)
    r2, yv2, cnt2, sm2 = (torch.empty_like(t) for t in (r, yv, cnt, sm))
    ones = torch.zeros(n + 1, dtype=it, device=dev)  # exclusive prefix counts of one bits
    csum = torch.zeros(n + 1, dtype=y.dtype, device=dev)  # exclusive prefix sums of y, new arrangement
    start, bit, ob, zb, dest = (torch.empty(n, dtype=it, device=dev) for _ in range(5))
    at = torch.empty(n, dtype=torch.int64, device=dev)  # scatter wants int64 positions
    for lvl in range(levels - 1, -1, -1):
        torch.bitwise_right_shift(r, lvl + 1, out=start).bitwise_left_shift_(lvl + 1)
        torch.bitwise_right_shift(r, lvl, out=bit).bitwise_and_(1)
        torch.cumsum(bit, 0, dtype=it, out=ones[1:])
        torch.sub(ones[:-1], torch.bitwise_right_shift(start, 1, out=ob), out=ob)  # one bits before me in my group
        torch.sub(idx, start, out=zb).sub_(ob)  # zero bits before me in my group
        # stable partition of every group by the bit: zeros to start + zb, ones after the group's
        # nz = min(2^l, n - start) zeros, to start + nz + ob
        torch.neg(start, out=dest).add_(n).clamp_(max=1 << lvl)
        dest.add_(ob).sub_(zb).mul_(bit).add_(start).add_(zb)
        at.copy_(dest)
        r2.scatter_(0, at, r)
        yv2.scatter_(0, at, yv)
        cnt.add_(torch.mul(zb, bit, out=ob))
        cnt2.scatter_(0, at, cnt)
        # the zeros before me in my group are now the group's first zb elements: their y sum from prefix sums
        # of the new arrangement (zero for the zeros themselves: start + zb * bit = start). yv (moved) and sm2
        # (written below) serve as scratch.
        torch.cumsum(yv2, 0, out=csum[1:])
        torch.index_select(csum, 0, ob.add_(start), out=yv)
        torch.index_select(csum, 0, start, out=sm2)
        sm.add_(yv.sub_(sm2))
        sm2.scatter_(0, at, sm)
        r, yv, cnt, sm, r2, yv2, cnt2, sm2 = r2, yv2, cnt2, sm2, r, yv, cnt, sm
    # after the last level the arrangement is sorted by rank: slot i holds the element of rank i
    at.copy_(ranks)
    return cnt.index_select(0, at), sm.index_select(0, at)


def _tie_sums(ys: torch.Tensor, pr: _Prep) -> torch.Tensor:
    """``sum_j |y_k - y_j|`` over the other members of ``k``'s x-tie group (x order; y descending within a group):
    nonzero only for tied elements, so it is computed on those alone."""
    out = torch.zeros_like(ys)
    if not pr.ties:
        return out
    w = -ys.index_select(0, pr.tpos)  # ascending within each group
    gstart, gend = pr.tgroup
    m = len(pr.tpos)
    cs = torch.zeros(m + 1, dtype=ys.dtype, device=ys.device)
    torch.cumsum(w, 0, out=cs[1:])
    i_in = (torch.arange(m, device=ys.device) - gstart + 1).to(ys.dtype)
    size = (gend - gstart).to(ys.dtype)
    lo = cs.index_select(0, gstart)
    tie = (2 * i_in - size) * w + (cs.index_select(0, gend) - lo) - 2 * (cs[1:] - lo)
    return out.index_copy_(0, pr.tpos, tie)


def _column64(v: torch.Tensor) -> torch.Tensor:
    """A float64 copy of a column, centred on its mean (distances are unchanged; the sums lose less to rounding)."""
    v64 = v.to(torch.float64, copy=True)
    return v64.sub_(v64.mean())


def _continuous_parts(xr: torch.Tensor, yr: torch.Tensor, unbiased: bool):
    """``T_0`` of two 1-D columns (any floating dtype; sums in float64), and in x order the row sums of ``y``'s
    distances and ``T_k = sum_j sign(x_k - x_j) |y_k - y_j|``.

    ``S_ab = sum_ij a_ij b_ij = 2 sum_k x_k T_k`` (antisymmetry of the sign), so the dominance sums need only the
    channels ``1`` and ``y``. Arrays are released as soon as they are used (this path runs at n = 10^6 and more).
    """
    x = _column64(xr)
    pr = _Prep(x, yr, xr)
    del x
    o = pr.order
    n = pr.n
    ys = _column64(yr).index_select(0, o)
    # distinct y-ranks in x order; how y ties are broken does not matter (they add |y_k - y_j| = 0)
    yorder = sort_order(yr.index_select(0, o))
    ranks = torch.empty_like(yorder).scatter_(0, yorder, torch.arange(n, device=ys.device))
    b_row = torch.empty_like(ys).scatter_(0, yorder, _sorted_row_sums(ys.index_select(0, yorder)))
    del yorder
    lo = dominance_sums(ranks, ys)
    del ranks
    # T_k = 2 before_k - b_k. + tie_k, before_k = sum over x_j < x_k of |y_k - y_j|
    t = ys * (2 * lo[:, 0] - pr.less(ys.dtype))
    t -= 2 * lo[:, 1]
    del lo
    t += pr.strict_prefix(ys)[0]
    t *= 2
    t -= b_row
    t += _tie_sums(ys, pr)
    del ys
    s_ab = 2 * (pr.xs * t).sum()
    return _centred_sum(s_ab, _sorted_row_sums(pr.xs), b_row, unbiased), b_row, t, pr


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


def _t0_and_grad(xr: torch.Tensor, yr: torch.Tensor, unbiased: bool, want_grad: bool, categorical: bool):
    """T_0 for a 1-D column ``xr`` against ``yr`` (a 1-D column, or scaled one-hot rows), and dT_0/dx (in x's
    original order, float64)."""
    n = xr.shape[0]
    if not categorical:
        t0, b_row, t_k, pr = _continuous_parts(xr, yr, unbiased)
        if not want_grad:
            return t0, None
        return t0, pr.unsort(sign_gradient(pr, t_k, b_row, unbiased))
    x = _column64(xr)
    pr = _Prep(x, None, xr)
    del x
    xs = pr.xs
    g = yr.argmax(1)
    scale = yr[0, g[0]].abs().to(torch.float64) * math.sqrt(2.0)  # two one-hot rows of value v: v * sqrt(2) apart
    g = g.index_select(0, pr.order)  # cells, in x order
    counts = torch.bincount(g, minlength=yr.shape[1]).to(torch.float64)
    b_row = scale * (n - counts.index_select(0, g))
    # sum_ij a_ij [g_i != g_j] = a_tot - sum over cells of their within-cell distance totals, the latter
    # 2 sum_i (2 i - m - 1) x_(i) over each cell's sorted values (i = 1..m): cells in x order by a stable sort
    by_cell = torch.argsort(g.to(torch.int32), stable=True)
    xc, gc = xs.index_select(0, by_cell), g.index_select(0, by_cell)
    del g
    cstart, cend = _runs(_new_runs(gc))
    weight = (2 * torch.arange(n, device=xs.device) - cstart - cend + 1).to(torch.float64)
    within = 2 * (weight * xc).sum()
    del weight
    a_row = _sorted_row_sums(xs)
    t0 = _centred_sum(scale * (a_row.sum() - within), a_row, b_row, unbiased)
    del a_row
    if not want_grad:
        return t0, None
    # T_k = scale * (sum_j sign(x_k - x_j) - sum_{j in own cell} sign(x_k - x_j))
    tstart, tend = _runs(_new_runs(gc, xc))  # ties of x within a cell
    del gc, xc
    own = (tstart - cstart).sub_(cend - tend).to(torch.float64)
    del tstart, tend, cstart, cend
    t_k = pr.signs(torch.float64).sub_(torch.empty_like(own).scatter_(0, by_cell, own)).mul_(scale)
    del own, by_cell
    return t0, pr.unsort(sign_gradient(pr, t_k, b_row, unbiased))


class _SortedProductSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unbiased: bool, categorical: bool, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), single_threaded():
            xr = x.detach()[:, 0]
            yr = y.detach() if categorical else y.detach()[:, 0]
            t0, gx = _t0_and_grad(xr, yr, unbiased, x.requires_grad, categorical)
            gy = None
            if y.requires_grad:
                if categorical:
                    raise ValueError("The `sorted` backend treats a categorical attribute as data; it cannot be "
                                     "differentiated (detach it or use backend='tiled')")
                _, gy = _t0_and_grad(yr, xr, unbiased, True, False)
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

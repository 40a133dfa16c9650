r"""Pieces of the distance-covariance algebra that several backends of :mod:`fairret.ops` share.

* the centring constants: :math:`\hat A_{ij} = a_{ij} - (a_{i\cdot} + a_{\cdot j}) / r + a_{\cdot\cdot} / t` with
  ``(r, t)`` from :func:`centring_divisors` (the matrices of :func:`fairret.ops.reference.centre`);
* the closed form of the row sums of :math:`P^{(m)} = \prod_{k \ne m} (c - \hat A^{(k)})` for at most two
  variables (:func:`p_rows_closed_form`);
* the rank and run helpers of the O(n log n) sums over a sorted 1-D variable (:class:`_Prep`, :func:`_runs`,
  :func:`_row_sums`) and the gradient :math:`2 \sum_j \hat B_{kj}\,\mathrm{sign}(x_k - x_j)` built from them
  (:func:`sign_gradient`), used by :mod:`fairret.ops.sorted` and by the tiled backend's one-sweep pair.

This module imports nothing else from :mod:`fairret.ops`, so every backend can import it.

Example:
    >>> import torch
    >>> from fairret.ops._common import centring_divisors
    >>> from fairret.ops.reference import centre, pairwise_distances
    >>> x = torch.randn(6, 2, dtype=torch.float64)
    >>> a = pairwise_distances(x)
    >>> r, t = centring_divisors(6, unbiased=False)
    >>> rows = a.sum(1, keepdim=True)
    >>> bool(torch.allclose(a - rows / r - rows.T / r + a.sum() / t, centre(a, unbiased=False)))
    True
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["centring_divisors", "p_rows_closed_form", "sign_gradient", "sort_order"]


def centring_divisors(n: int, unbiased: bool) -> Tuple[int, int]:
    r"""The divisors ``(r, t)`` of the centring :math:`\hat A_{ij} = a_{ij} - (a_{i\cdot} + a_{\cdot j})/r +
    a_{\cdot\cdot}/t`: ``(n - 2, (n - 1)(n - 2))`` for U-centring (off the diagonal), ``(n, n²)`` for double
    centring."""
    if unbiased:
        return n - 2, (n - 1) * (n - 2)
    return n, n * n


def p_rows_closed_form(n: int, d: int, c: float, unbiased: bool,
                       device: torch.device) -> Optional[torch.Tensor]:
    r"""Row sums of :math:`P^{(m)} = \prod_{k \ne m} (c - \hat A^{(k)})` over ``j`` (``j != i`` for U) when
    ``d <= 2`` variables make them constant (float64 ``(n,)``); None for ``d >= 3`` (they need a sweep).

    Centred rows sum to zero, so with two variables :math:`\sum_j (c - \hat A_{ij}) = \mathrm{count} \cdot c`;
    with one, :math:`P = 1` and the sum is the count of terms (``n``, or ``n - 1`` for U).
    """
    if d > 2:
        return None
    count = n - 1 if unbiased else n
    full = float(count * c) if d == 2 else float(count)
    return torch.full((n,), full, dtype=torch.float64, device=device)


def sort_order(v: torch.Tensor) -> torch.Tensor:
    """Ascending order of a 1-D floating-point tensor (a stable sort: ties keep their index order).

    Sorts order-preserving integer keys (the float's bits, with the non-sign bits flipped for negative numbers) of
    the same width, which torch sorts by radix: on CPU 2-3x faster than comparing floats (float32: 4-byte keys).
    ``-0.0`` sorts just before ``0.0``; callers treat equal values as ties wherever it matters.
    """
    bits = _KEY_BITS.get(v.dtype)
    if bits is None:
        return torch.sort(v, stable=True).indices
    key = v.contiguous().view(bits[0])
    key = key ^ ((key >> bits[1]) & bits[2])
    return torch.sort(key, stable=True).indices


_KEY_BITS = {torch.float64: (torch.int64, 63, 2**63 - 1), torch.float32: (torch.int32, 31, 2**31 - 1),
             torch.float16: (torch.int16, 15, 2**15 - 1), torch.bfloat16: (torch.int16, 15, 2**15 - 1)}


def _runs(new: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Given ``new[i]`` = "element i starts a run" (``new[0]`` True), each element's run start and run end
    (one past the last element)."""
    n = new.shape[0]
    starts = new.nonzero().squeeze(1)
    run = torch.cumsum(new, 0).sub_(1)
    ends = torch.cat([starts[1:], starts.new_full((1,), n)])
    return starts.index_select(0, run), ends.index_select(0, run)


def _new_runs(*keys: torch.Tensor) -> torch.Tensor:
    """Run starts of sorted keys (a run continues while every key is equal)."""
    n = keys[0].shape[0]
    new = torch.zeros(n, dtype=torch.bool, device=keys[0].device)
    new[0] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def _sorted_row_sums(vs: torch.Tensor) -> torch.Tensor:
    """``sum_j |v_i - v_j|`` for values already sorted ascending: :math:`(2i - n) v_{(i)} + S_n - 2 S_i`."""
    n = vs.shape[0]
    cs = torch.cumsum(vs, 0)
    i = torch.arange(1, n + 1, dtype=vs.dtype, device=vs.device)
    return (2 * i - n) * vs + cs[-1] - 2 * cs


def _row_sums(v: torch.Tensor) -> torch.Tensor:
    """``sum_j |v_i - v_j|`` of a 1-D tensor in O(n log n) (out-of-place, so differentiable)."""
    order = sort_order(v.detach())
    return torch.zeros_like(v).scatter(0, order, _sorted_row_sums(v[order]))


class _Prep:
    """x order (ties: y descending), strict-x prefix structure and tie groups.

    ``keys``: values in the same order as ``x`` to sort by (e.g. the input before its conversion to float64:
    float32 keys sort faster); ``x`` is what the sums use. Arrays are in x order unless said otherwise. Tie groups
    are kept only for the tied elements (``tpos``, their positions; ``tstart``/``tend``, their group's start and
    end, one past its last element), which are usually few.
    """

    def __init__(self, x: torch.Tensor, y: Optional[torch.Tensor], keys: Optional[torch.Tensor] = None):
        n = x.shape[0]
        self.order = sort_order(x if keys is None else keys)
        xs = x.index_select(0, self.order)
        self.xs, self.n = xs, n
        eq = xs[1:] == xs[:-1]
        self.ties = n > 1 and bool(eq.any())
        if not self.ties:
            return
        tied = torch.zeros(n, dtype=torch.bool, device=x.device)
        tied[1:] |= eq
        tied[:-1] |= eq
        self.tpos = tied.nonzero().squeeze(1)
        del tied
        if y is not None:  # order each tie group by y descending, re-sorting only the tied elements
            sub = self.order[self.tpos]
            o1 = torch.argsort(-y[sub], stable=True)
            o2 = torch.argsort(xs[self.tpos][o1], stable=True)
            self.order[self.tpos] = sub[o1[o2]]
        new = torch.ones(len(self.tpos), dtype=torch.bool, device=x.device)
        new[1:] = ~eq[self.tpos[1:] - 1]  # a tied element starts a group unless it equals its predecessor
        gstart, gend = _runs(new)  # in positions of tpos
        self.tgroup = (gstart, gend)
        self.tstart = self.tpos.index_select(0, gstart)
        self.tend = self.tpos.index_select(0, gend - 1) + 1

    def less(self, dtype: torch.dtype) -> torch.Tensor:
        """``#{j: x_j < x_k}``."""
        out = torch.arange(self.n, dtype=dtype, device=self.xs.device)
        if self.ties:
            out[self.tpos] = self.tstart.to(dtype)
        return out

    def signs(self, dtype: torch.dtype) -> torch.Tensor:
        r""":math:`\sum_j \mathrm{sign}(x_k - x_j) = \#\{x_j < x_k\} - \#\{x_j > x_k\}`."""
        out = torch.arange(1 - self.n, self.n, 2, dtype=dtype, device=self.xs.device)
        if self.ties:
            out[self.tpos] = (self.tstart + self.tend - self.n).to(dtype)
        return out

    def strict_prefix(self, v_sorted: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sum over x_j < x_k, sum over x_j > x_k) of values given in x order."""
        cs = torch.zeros(self.n + 1, dtype=v_sorted.dtype, device=v_sorted.device)
        torch.cumsum(v_sorted, 0, out=cs[1:])
        lo, hi = cs[:-1].clone(), cs[-1] - cs[1:]
        if self.ties:
            lo[self.tpos] = cs.index_select(0, self.tstart)
            hi[self.tpos] = cs[-1] - cs.index_select(0, self.tend)
        return lo, hi

    def unsort(self, v: torch.Tensor) -> torch.Tensor:
        """Values given in x order, back in the original order."""
        return torch.empty_like(v).scatter_(0, self.order, v)


def sign_gradient(pr: _Prep, t_k: torch.Tensor, b_row: torch.Tensor, unbiased: bool) -> torch.Tensor:
    r""":math:`\partial T_0 / \partial x_k = 2 \sum_j \hat B_{kj}\,\mathrm{sign}(x_k - x_j)` for a 1-D ``x``, from
    ``t_k`` :math:`= \sum_j b_{kj}\,\mathrm{sign}(x_k - x_j)` and the row sums ``b_row`` of the other variable's
    distances, all in x order (the result too): the centring terms need only ranks
    (:math:`\sum_j \mathrm{sign}(x_k - x_j)`) and prefix sums of ``b_row`` in x order
    (:math:`\sum_j \mathrm{sign}(x_k - x_j)\, b_{j\cdot}`)."""
    s_k = pr.signs(b_row.dtype)
    lo, hi = pr.strict_prefix(b_row)
    r, t = centring_divisors(pr.n, unbiased)
    return 2 * (t_k - b_row * s_k / r - (lo - hi) / r + b_row.sum() * s_k / t)

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

__all__ = ["centring_divisors", "p_rows_closed_form", "sign_gradient"]


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


def _runs(new: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Given ``new[i]`` = "element i starts a run" (``new[0]`` True), each element's run start and run end
    (one past the last element)."""
    n = new.shape[0]
    idx = torch.arange(n, device=new.device)
    start = torch.cummax(torch.where(new, idx, torch.zeros_like(idx)), 0).values
    is_end = torch.cat([new[1:], torch.ones(1, dtype=torch.bool, device=new.device)])
    end = torch.flip(torch.cummin(torch.flip(torch.where(is_end, idx + 1, torch.full_like(idx, n)), [0]), 0).values,
                     [0])
    return start, end


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
    vs, order = torch.sort(v)
    return torch.zeros_like(v).scatter(0, order, _sorted_row_sums(vs))


class _Prep:
    """x order (ties: y descending), strict-x prefix structure and tie groups."""

    def __init__(self, x: torch.Tensor, y: Optional[torch.Tensor]):
        n = x.shape[0]
        xs, self.order = torch.sort(x)  # ties are ordered below where it matters
        if y is not None and n > 1:
            tied = torch.zeros(n, dtype=torch.bool, device=x.device)
            eq = xs[1:] == xs[:-1]
            tied[1:] |= eq
            tied[:-1] |= eq
            if bool(tied.any()):
                # ties in x: order each tie group by y descending, re-sorting only the tied elements
                pos = tied.nonzero().squeeze(1)
                sub = self.order[pos]
                o1 = torch.argsort(-y[sub], stable=True)
                o2 = torch.argsort(xs[pos][o1], stable=True)
                self.order = self.order.clone()
                self.order[pos] = sub[o1[o2]]
        self.xs = xs
        self.n = n
        self.tstart, self.tend = _runs(_new_runs(xs))  # each x-tie group's start and end (in x order)
        self.less = self.tstart.to(x.dtype)  # #{x_j < x_k}
        self.greater = (n - self.tend).to(x.dtype)  # #{x_j > x_k}

    def strict_prefix(self, v_sorted: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sum over x_j < x_k, sum over x_j > x_k) of values given in x order."""
        cs = torch.cat([v_sorted.new_zeros(1), torch.cumsum(v_sorted, 0)])
        return cs[self.tstart], cs[-1] - cs[self.tend]


def sign_gradient(pr: _Prep, t_k: torch.Tensor, b_row: torch.Tensor, unbiased: bool) -> torch.Tensor:
    r""":math:`\partial T_0 / \partial x_k = 2 \sum_j \hat B_{kj}\,\mathrm{sign}(x_k - x_j)` for a 1-D ``x``
    (original order), from ``t_k`` :math:`= \sum_j b_{kj}\,\mathrm{sign}(x_k - x_j)` and the row sums ``b_row`` of
    the other variable's distances: the centring terms need only ranks (:math:`\sum_j \mathrm{sign}(x_k - x_j)`)
    and prefix sums of ``b_row`` in x order (:math:`\sum_j \mathrm{sign}(x_k - x_j)\, b_{j\cdot}`)."""
    n = pr.n
    o = pr.order
    s_k = torch.empty_like(b_row).index_copy_(0, o, pr.less - pr.greater)
    lo, hi = pr.strict_prefix(b_row[o])
    q_k = torch.empty_like(b_row).index_copy_(0, o, lo - hi)
    r, t = centring_divisors(n, unbiased)
    return 2 * (t_k - b_row * s_k / r - q_k / r + b_row.sum() * s_k / t)

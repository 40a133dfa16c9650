r"""Pieces of the distance-covariance algebra that several backends of :mod:`fairret.ops` share: the rank and run
helpers of the O(n log n) sums over a sorted 1-D variable (:class:`_Prep`, :func:`_runs`, :func:`_row_sums`), used by
:mod:`fairret.ops.sorted` and by the tiled backend's one-sweep pair.

This module imports nothing else from :mod:`fairret.ops`, so every backend can import it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__: list = []


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

r"""The pure-torch reference of the pairwise-distance core (dense, O(n²) memory).

Everything else in :mod:`fairret.ops` must agree with these functions; tests and benchmarks import them.

The core quantity of the distance-covariance family is, for variables :math:`X^{(1)}, \dots, X^{(d)}` observed on
the same :math:`n` rows, with :math:`a^{(k)}_{ij} = \lVert x^{(k)}_i - x^{(k)}_j \rVert` and :math:`\hat A^{(k)}`
its double-centred (V) or U-centred (U) version,

.. math:: T_c = \sum_{(i,j)} \prod_k \big(c - \hat A^{(k)}_{ij}\big),

summed over all pairs (V) or over :math:`i \ne j` (U). Then :math:`\mathrm{dCov}^2_n = T_0(x, y)/n^2`,
:math:`\Omega_n = T_0(x, y)/(n(n-3))` and JdCov² follows from :math:`T_c` (Chakraborty and Zhang's
:math:`\hat U = -\hat A` sign convention).

Distances have finite gradients everywhere: at coincident points the gradient is 0 (double ``where``), and the
second derivative is finite too.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["pairwise_distances", "centre", "product_sum_dense"]


def pairwise_distances(x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` ``(n, p)`` and of ``z`` ``(m, p)`` (default ``x``).

    The gradient at coincident rows is 0, never NaN.
    """
    z = x if z is None else z
    if x.shape[1] == 1:
        return (x - z.T).abs()
    diff = x.unsqueeze(1) - z.unsqueeze(0)
    sq = (diff * diff).sum(-1)
    pos = ~(sq <= 0)  # NaN stays NaN (a NaN coordinate must not read as a zero distance)
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def centre(a: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Double-centred (V) or U-centred (U, zero diagonal) version of a symmetric ``(n, n)`` matrix."""
    n = a.shape[0]
    if not unbiased:
        r = a.mean(1, keepdim=True)
        return a - r - r.T + a.mean()
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    a = a.masked_fill(eye, 0.0)
    r = a.sum(1, keepdim=True)
    out = a - r / (n - 2) - r.T / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    return out.masked_fill(eye, 0.0)


def product_sum_dense(xs: Sequence[torch.Tensor], c: float, unbiased: bool) -> torch.Tensor:
    r""":math:`T_c = \sum \prod_k (c - \hat A^{(k)}_{ij})` over all pairs (V) or ``i != j`` (U), dense.

    Args:
        xs: ``d`` tensors of shape ``(n, p_k)`` (each is centred on its column means first: distances are
            translation invariant, and this keeps float32 precision).
        c: the JdCov constant (0 for distance covariance).
        unbiased: U-centring (sum over ``i != j``) instead of double centring.
    """
    n = xs[0].shape[0]
    prod = None
    for x in xs:
        x = x - x.mean(0, keepdim=True).detach()
        term = c - centre(pairwise_distances(x), unbiased)
        prod = term if prod is None else prod * term
    if unbiased:
        prod = prod.masked_fill(torch.eye(n, dtype=torch.bool, device=prod.device), 0.0)
    return prod.sum()

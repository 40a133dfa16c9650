r"""Projection losses: the divergence between the predictions and their fair projection (fairret 0.1.3 API).

The fair projection is the distribution closest to the predictions (under the loss's divergence) among those
whose per-group statistic equals the target (by default the overall statistic of the predictions):

.. math:: q^\star = \arg\min_{q} \tfrac1N \sum_n D(q_n \Vert p_n) \;\;\text{s.t.}\;\; \gamma_k(q) = c \;\forall k,

and the loss is :math:`\tfrac1N \sum_n D(q^\star_n \Vert p_n)` with :math:`q^\star` held constant. Unlike
fairret 0.1.3 (cvxpy/SCS on the CPU, fixed to the first batch size, rows renormalised to sum 2), the projection
is solved exactly in torch on the predictions' device for any batch size, by Newton's method on its small dual
(:func:`fairret.functional.project`), without host synchronisation.

Predictions must be binary ``(N, 1)`` (logits by default, or probabilities with ``pred_as_logit=False``). The
projection and the divergence are computed in float64 whatever the input dtype, the divergence of logits in log
space (finite value and gradient for saturated logits; see :func:`fairret.functional.divergence_value` for the
bound the chi-squared divergence uses); the loss comes back in the input's dtype, at least float32. An empty batch
gives 0.

Example:
    >>> import torch
    >>> from fairret.statistic import PositiveRate
    >>> from fairret.loss import KLProjectionLoss
    >>> logits = torch.tensor([[-1.0], [0.5], [0.0], [2.0]], requires_grad=True)
    >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> loss = KLProjectionLoss(PositiveRate())(logits, sens)
    >>> round(loss.item(), 5)
    0.03749
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .._distributed import all_reduce_sum
from ..functional import linear_fractional as F
from ..functional import projection as P
from ..statistic import LinearFractionalStatistic
from .._validation import to_probabilities
from ._common import check_target_shape, prepare_inputs, target_tensor
from .base import FairnessLoss

__all__ = [
    "ProjectionLoss",
    "KLProjectionLoss",
    "JensenShannonProjectionLoss",
    "TotalVariationProjectionLoss",
    "SquaredEuclideanProjectionLoss",
    "ChiSquaredProjectionLoss",
]


class ProjectionLoss(FairnessLoss):
    """Divergence between predictions and their fair projection.

    Args:
        statistic: the linear-fractional statistic (or stack) fixed to the target in the constraints.
        divergence: ``kl``, ``js``, ``tv``, ``squared_euclidean`` or ``chi_squared`` (set by the subclasses).
        n_iter: Newton steps of the dual solver (per smoothing level for ``tv``); None for the default.
        sync_dist: solve the global-batch projection under ``torch.distributed`` (sums all-reduced).
        validate_args: also check values: ``pred`` and ``sens`` finite, and probabilities in [0, 1] when
            ``pred_as_logit=False`` (off by default: the checks synchronise with the device; see
            :mod:`fairret._validation`).
        **legacy_kwargs: fairret 0.1.3's ``force_proj_normalized``, ``proj_eps`` and cvxpy solver options are
            accepted and ignored (the projection is exact and rows always sum to 1).
    """

    divergence: str = "kl"

    def __init__(self, statistic: LinearFractionalStatistic, *, divergence: Optional[str] = None,
                 n_iter: Optional[int] = None, sync_dist: bool = True, validate_args: bool = False,
                 **legacy_kwargs: Any):
        super().__init__()
        if not isinstance(statistic, LinearFractionalStatistic):
            raise TypeError(f"Expected argument `statistic` to be a LinearFractionalStatistic, but got "
                            f"{type(statistic).__name__}")
        if divergence is not None:
            P._check_divergence(divergence)
            self.divergence = divergence
        if n_iter is not None and (not isinstance(n_iter, int) or n_iter < 1):
            raise ValueError(f"Expected argument `n_iter` to be a positive integer, but got {n_iter!r}")
        unknown = set(legacy_kwargs) - {"force_proj_normalized", "proj_eps", "solver", "warm_start", "max_iters",
                                        "ignore_dpp", "verbose", "eps"}
        if unknown:
            raise TypeError(f"Unexpected keyword arguments for {type(self).__name__}: {sorted(unknown)}")
        self.statistic = statistic
        self.n_iter = n_iter
        self.sync_dist = sync_dist
        self.validate_args = validate_args

    def project(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                target_statistic: Optional[torch.Tensor] = None, **stat_kwargs: Any) -> torch.Tensor:
        """The fair projection ``q`` of shape ``(N, 1)``: the probability of the positive class per row."""
        raw, prob, sens = prepare_inputs(pred, sens, pred_as_logit, self.validate_args, probabilities=True)
        if raw.shape[1] != 1:
            raise ValueError(f"Expected argument `pred` to have shape (N, 1) for a projection loss (binary "
                             f"predictions), but got {tuple(raw.shape)}; use NormLoss or LSELoss for multiclass")
        # probabilities in float64 from the raw input: a float32 sigmoid rounds logits beyond ~17 to exactly 1
        p64 = to_probabilities(raw.detach().to(torch.float64)) if pred_as_logit else raw.detach().to(torch.float64)
        s64 = sens.detach().to(torch.float64)
        target = target_tensor(target_statistic, p64)
        if target is None:
            # the overall statistic only: without sens the group sums are not computed
            sums = self.statistic.sums(p64, None, *stat_args, sync_dist=self.sync_dist, **stat_kwargs)
            target = sums.overall_values().detach()
        coefs = self.statistic.coefficients(p64, *stat_args, **stat_kwargs)
        coefs = tuple(c.detach() if isinstance(c, torch.Tensor) else c for c in coefs)
        if target_statistic is not None:
            check_target_shape(target, F._stat_shape(coefs, p64))
        intercept, slope = F.fixed_constraint(target, s64, *coefs, like=p64)
        if self.sync_dist:
            intercept = all_reduce_sum(intercept)
        q = P.project(p64[:, 0], intercept.reshape(-1), slope.reshape(slope.shape[0], intercept.numel()),
                      self.divergence, n_iter=self.n_iter, sync_dist=self.sync_dist)
        return q.unsqueeze(1)

    def forward(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                target_statistic: Optional[torch.Tensor] = None, **stat_kwargs: Any) -> torch.Tensor:
        """Mean divergence between the predictions and their fair projection (a scalar tensor)."""
        q = self.project(pred, sens, *stat_args, pred_as_logit=pred_as_logit, target_statistic=target_statistic,
                         **stat_kwargs)
        raw = pred.unsqueeze(-1) if pred.ndim == 1 else pred
        per_row = P.divergence_value(q[:, 0], raw[:, 0], self.divergence, pred_as_logit=pred_as_logit)
        # an empty batch (N = 0 on every rank) gives 0: no row is away from its projection
        n = torch.tensor(float(per_row.shape[0]), dtype=per_row.dtype, device=per_row.device)
        total = per_row.sum()
        if self.sync_dist:
            total, n = all_reduce_sum(total), all_reduce_sum(n)
        return total / n.clamp_min(1.0)


class KLProjectionLoss(ProjectionLoss):
    """Kullback-Leibler divergence ``KL(q* || p)`` to the fair projection (an I-projection)."""

    divergence = "kl"


class JensenShannonProjectionLoss(ProjectionLoss):
    """Jensen-Shannon divergence to the fair projection."""

    divergence = "js"


class TotalVariationProjectionLoss(ProjectionLoss):
    """Total variation distance ``|q* - p|`` to the fair projection (0.1.3's torch value was twice this)."""

    divergence = "tv"


class SquaredEuclideanProjectionLoss(ProjectionLoss):
    """Squared Euclidean distance ``sum_c (q*_c - p_c)^2 = 2 (q* - p)^2`` to the fair projection, per row."""

    divergence = "squared_euclidean"


class ChiSquaredProjectionLoss(ProjectionLoss):
    """Pearson chi-squared divergence ``sum_c (q*_c - p_c)^2 / p_c`` to the fair projection."""

    divergence = "chi_squared"

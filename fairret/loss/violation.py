r"""Violation losses: penalise the gaps between per-group statistics and a target (fairret 0.1.3 API).

For a linear-fractional statistic :math:`\gamma_k` and target :math:`c` (by default the overall statistic, held
constant), the violation is :math:`v_k = |\gamma_k / c - 1|` (the absolute gap :math:`|\gamma_k - c|` where
:math:`c = 0`). :class:`NormLoss` returns :math:`\lVert v \rVert_p` and :class:`LSELoss` the smooth maximum
:math:`\log\sum_k e^{v_k} - \log S`, each summed over stacked statistics and classes.

Small and awkward batches: a group with a zero denominator in the batch (absent, or without the samples the
statistic conditions on) has no defined statistic and contributes nothing (0.1.3 added a constant 1 with no
gradient); a single-group batch therefore gives 0 when that group's statistic equals the target; all-equal
predictions give 0. With ``momentum`` set, the target and the group denominators are exponential moving averages
over batches (see :class:`ViolationLoss`).

Under ``torch.distributed`` the numerator and denominator sums are all-reduced with gradient (``sync_dist=True``,
the default), so every rank's loss is the global-batch loss and the gradient w.r.t. each rank's predictions is
the global-batch gradient.

Example:
    >>> import torch
    >>> from fairret.statistic import PositiveRate
    >>> from fairret.loss import NormLoss
    >>> logits = torch.tensor([[-1.0], [0.5], [0.0], [2.0]], requires_grad=True)
    >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> loss = NormLoss(PositiveRate())(logits, sens)
    >>> round(loss.item(), 4)
    0.4308
    >>> loss.backward(); bool(torch.isfinite(logits.grad).all())
    True
"""
from __future__ import annotations

import abc
from typing import Any, Optional

import torch

from .._distributed import all_reduce_sum
from ..functional import linear_fractional as F
from ..statistic import LinearFractionalStatistic, Statistic
from ._common import prepare_inputs, target_tensor
from .base import FairnessLoss

__all__ = ["ViolationLoss", "NormLoss", "LSELoss"]


class ViolationLoss(FairnessLoss):
    """Base of losses that penalise the violation vector of a statistic.

    Args:
        statistic: the statistic; a :class:`~fairret.statistic.LinearFractionalStatistic` (or a stack) gets the
            overall statistic as default target, any other :class:`~fairret.statistic.Statistic` needs
            ``target_statistic`` at call time.
        momentum: if set (in ``(0, 1]``), keep exponential moving averages across batches of the overall
            statistic (the target) and of each group's per-sample denominator, and use them in place of the
            batch values: ``gamma_k = num_k / (N * running_denom_k)``. Gradients then flow through the numerators
            only. Groups with a zero denominator in the batch still contribute nothing.
        sync_dist: all-reduce the statistic's sums across ranks when a process group is initialised.
        validate_args: also check that ``pred`` and ``sens`` are finite (off by default: the check synchronises
            with the device; see :mod:`fairret._validation`).
    """

    def __init__(self, statistic: Statistic, *, momentum: Optional[float] = None, sync_dist: bool = True,
                 validate_args: bool = False):
        super().__init__()
        if not isinstance(statistic, Statistic):
            raise TypeError(f"Expected argument `statistic` to be a fairret Statistic, but got "
                            f"{type(statistic).__name__}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise ValueError(f"Expected argument `momentum` to be None or a number in (0, 1], but got {momentum!r}")
        self.statistic = statistic
        self.momentum = momentum
        self.sync_dist = sync_dist
        self.validate_args = validate_args
        self.register_buffer("running_target", None)
        self.register_buffer("running_denom", None)

    @abc.abstractmethod
    def penalize_violation(self, violation: torch.Tensor) -> torch.Tensor:
        """Reduce the violation tensor ``(..., S)`` to a scalar."""
        raise NotImplementedError

    def violation(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                  target_statistic: Optional[torch.Tensor] = None, **stat_kwargs: Any) -> torch.Tensor:
        """The violation tensor ``(K, C, S)`` (zeros for groups without a defined statistic)."""
        raw, prob, sens = prepare_inputs(pred, sens, pred_as_logit, self.validate_args)
        target = target_tensor(target_statistic, prob)
        if not isinstance(self.statistic, LinearFractionalStatistic):
            if target is None:
                raise ValueError(f"Was initialized with a statistic of type {type(self.statistic).__name__}, but no "
                                 f"`target_statistic` was given. Use a LinearFractionalStatistic or pass one.")
            stats = self.statistic(prob, sens, *stat_args, **stat_kwargs)
            return F.statistic_violation(stats, target if target.ndim < stats.ndim else target[..., None])

        sums = self.statistic.sums(prob, sens, *stat_args, sync_dist=self.sync_dist, **stat_kwargs)
        den = sums.denom
        if target is None or self.momentum is not None:
            overall = sums.overall_values().detach()
        if self.momentum is not None:
            n = torch.tensor(float(prob.shape[0]), dtype=prob.dtype, device=prob.device)
            n = all_reduce_sum(n) if self.sync_dist else n
            den = self._running_denominators(den.detach() / n, overall, sums.valid) * n
            if target is None:
                target = self.running_target
        if target is None:
            target = overall
        stats, valid = F._lf_compute(sums.num, den)
        return F.statistic_violation(stats, target.detach().unsqueeze(-1), valid & sums.valid)

    def _running_denominators(self, den_rate: torch.Tensor, overall: torch.Tensor, present: torch.Tensor
                              ) -> torch.Tensor:
        m = float(self.momentum)
        with torch.no_grad():
            if self.running_denom is None or self.running_denom.shape != den_rate.shape:
                self.running_denom = den_rate.clone()
                self.running_target = overall.clone()
            elif self.training:
                upd = (1 - m) * self.running_denom + m * den_rate
                # A group absent from this batch (``present``: the batch's valid-group mask) keeps its running
                # denominator.
                self.running_denom = torch.where(present, upd, self.running_denom)
                self.running_target = (1 - m) * self.running_target + m * overall
        return self.running_denom

    def forward(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                target_statistic: Optional[torch.Tensor] = None, **stat_kwargs: Any) -> torch.Tensor:
        """Penalised violation of the statistic's parity.

        Args:
            pred: ``(N, 1)`` logits (or probabilities / regression outputs with ``pred_as_logit=False``), or
                ``(N, C)`` multiclass logits (softmax) or probabilities.
            sens: ``(N, S)`` sensitive matrix.
            *stat_args: arguments of the statistic (usually the label).
            pred_as_logit: apply a sigmoid (one column) or softmax (several) first.
            target_statistic: target value(s); default the overall statistic (held constant).
            **stat_kwargs: keyword arguments of the statistic.

        Returns:
            A scalar tensor.
        """
        return self.penalize_violation(self.violation(pred, sens, *stat_args, pred_as_logit=pred_as_logit,
                                                      target_statistic=target_statistic, **stat_kwargs))


class NormLoss(ViolationLoss):
    """The p-norm of the violation vector (over groups), summed over stacked statistics and classes.

    Args:
        statistic: the statistic whose parity is penalised.
        p: order of the norm (default 1; ``float('inf')`` for the maximum).
        **kwargs: ``momentum``, ``sync_dist``, ``validate_args`` as in :class:`ViolationLoss`.
    """

    def __init__(self, statistic: Statistic, p: float = 1, **kwargs: Any):
        super().__init__(statistic, **kwargs)
        if not isinstance(p, (int, float)) or p < 1:
            raise ValueError(f"Expected argument `p` to be a number >= 1, but got {p!r}")
        self.p = p

    def penalize_violation(self, violation: torch.Tensor) -> torch.Tensor:
        return F.norm_penalty(violation, self.p)


class LSELoss(ViolationLoss):
    """Log-sum-exp of the violation vector minus ``log S``: a smooth maximum violation."""

    def penalize_violation(self, violation: torch.Tensor) -> torch.Tensor:
        return F.lse_penalty(violation)

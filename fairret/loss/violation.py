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
from typing import Any, Optional, Tuple

import torch

from .._distributed import all_reduce_sum
from ..functional import linear_fractional as F
from ..statistic import LinearFractionalStatistic, Statistic
from ._common import check_target_shape, prepare_inputs, target_tensor
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
            only. Groups with a zero denominator in the batch still contribute nothing. Updates a batch leaves
            undefined (absent groups, empty batches, a TPR batch without positives, non-finite values) are
            skipped. The averages are buffers: ``load_state_dict`` restores them, into a fresh module too.
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

    def penalize(self, violation: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """Reduce the violation tensor knowing which groups have a defined statistic (``valid``, or None when
        every group counts); by default :meth:`penalize_violation` of the violations alone, whose absent groups
        are 0."""
        return self.penalize_violation(violation)

    def violation(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                  target_statistic: Optional[torch.Tensor] = None, **stat_kwargs: Any) -> torch.Tensor:
        """The violation tensor ``(K, C, S)`` (zeros for groups without a defined statistic)."""
        return self._violation(pred, sens, *stat_args, pred_as_logit=pred_as_logit,
                               target_statistic=target_statistic, **stat_kwargs)[0]

    def _violation(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                   target_statistic: Optional[torch.Tensor] = None, **stat_kwargs: Any
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The violation tensor and the mask of groups with a defined statistic (None: all of them)."""
        raw, prob, sens = prepare_inputs(pred, sens, pred_as_logit, self.validate_args)
        target = target_tensor(target_statistic, prob)
        if not isinstance(self.statistic, LinearFractionalStatistic):
            if target is None:
                raise ValueError(f"Was initialized with a statistic of type {type(self.statistic).__name__}, but no "
                                 f"`target_statistic` was given. Use a LinearFractionalStatistic or pass one.")
            stats = self.statistic(prob, sens, *stat_args, **stat_kwargs)
            return F.statistic_violation(stats, target if target.ndim < stats.ndim else target[..., None]), None

        sums = self.statistic.sums(prob, sens, *stat_args, sync_dist=self.sync_dist, **stat_kwargs)
        if target is not None:
            check_target_shape(target, sums.overall_num.shape)
        den = sums.denom
        if target is None or self.momentum is not None:
            overall = sums.overall_values().detach()
        if self.momentum is not None:
            n = torch.tensor(float(prob.shape[0]), dtype=prob.dtype, device=prob.device)
            n = all_reduce_sum(n) if self.sync_dist else n
            overall_ok = F._lf_valid(sums.overall_denom.detach())
            den = self._update_running(den.detach() / n, overall, sums.valid, overall_ok) * n
            if target is None:
                # a target not defined by any batch yet (NaN): this batch's own overall statistic
                target = torch.where(torch.isnan(self.running_target), overall, self.running_target)
        if target is None:
            target = overall
        stats, valid = F._lf_compute(sums.num, den)
        valid = valid & sums.valid
        return F.statistic_violation(stats, target.detach().unsqueeze(-1), valid), valid

    def _update_running(self, den_rate: torch.Tensor, overall: torch.Tensor, present: torch.Tensor,
                        overall_ok: torch.Tensor) -> torch.Tensor:
        """Update the moving averages with this batch where its values are defined; return ``running_denom``.

        Undefined updates are skipped, entry by entry, with tensor operations only (no host synchronisation): a
        group absent from the batch (``present`` False) or with a non-finite denominator keeps its running
        denominator, and the target keeps its value where the batch's overall statistic is undefined (an empty
        batch, a TPR batch without positives) or non-finite. Until its first defined batch a running denominator
        is 0 (the group counts as absent) and the running target NaN (the batch's own overall statistic is used).
        Non-finite batches thus never poison the averages: their loss is non-finite through the numerators, and
        a step skipped by e.g. a gradient scaler leaves no trace.
        """
        m = float(self.momentum)
        with torch.no_grad():
            ok = present & torch.isfinite(den_rate)
            target_ok = overall_ok & torch.isfinite(overall)
            if self.running_denom is None or self.running_denom.shape != den_rate.shape:
                self.running_denom = torch.where(ok, den_rate, torch.zeros_like(den_rate))
                self.running_target = torch.where(target_ok, overall, torch.full_like(overall, float("nan")))
            elif self.training:
                seen = F._lf_valid(self.running_denom)
                upd = torch.where(seen, (1 - m) * self.running_denom + m * den_rate, den_rate)
                self.running_denom = torch.where(ok, upd, self.running_denom)
                known = ~torch.isnan(self.running_target)
                upd = torch.where(known, (1 - m) * self.running_target + m * overall, overall)
                self.running_target = torch.where(target_ok, upd, self.running_target)
        return self.running_denom

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The running buffers are created by the first batch; a fresh module loading a checkpoint that has them
        # materialises them first, so that a strict load_state_dict resumes them (instead of "Unexpected key(s)").
        for name in ("running_target", "running_denom"):
            key = prefix + name
            if key in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        return self.penalize(*self._violation(pred, sens, *stat_args, pred_as_logit=pred_as_logit,
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
    """Log-sum-exp of the violation vector minus ``log S``: a smooth maximum violation.

    Only groups with a defined statistic enter, in the sum and in ``S`` (absent groups contribute nothing).
    """

    def penalize_violation(self, violation: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.lse_penalty(violation, valid)

    def penalize(self, violation: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        return F.lse_penalty(violation, valid)

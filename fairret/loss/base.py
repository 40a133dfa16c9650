"""Abstract base of fairness losses (fairrets), fairret 0.1.3 compatible."""
from __future__ import annotations

import abc
from typing import Any

import torch

from ..statistic.base import Statistic


class FairnessLoss(abc.ABC, torch.nn.Module):
    """A differentiable fairness loss ``loss(pred, sens, *stat_args, pred_as_logit=True, **stat_kwargs)``.

    Every loss has this call signature; :attr:`requires_labels` says whether ``stat_args`` (the label) are needed.
    """

    @property
    def requires_labels(self) -> bool:
        """Whether ``forward`` needs statistic arguments (the label) after ``sens``.

        The loss's ``statistic`` decides (:attr:`fairret.statistic.Statistic.requires_labels`); a loss without
        one, such as the dependence losses, takes none. A subclass that needs labels otherwise overrides this.

        Example:
            >>> from fairret.loss import CCdCovLoss, NormLoss
            >>> from fairret.statistic import PositiveRate, TruePositiveRate
            >>> NormLoss(TruePositiveRate()).requires_labels, NormLoss(PositiveRate()).requires_labels
            (True, False)
            >>> CCdCovLoss().requires_labels
            False
        """
        statistic = getattr(self, "statistic", None)
        return isinstance(statistic, Statistic) and statistic.requires_labels

    @abc.abstractmethod
    def forward(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, pred_as_logit: bool = True,
                **stat_kwargs: Any) -> torch.Tensor:
        """Compute the loss as a scalar tensor."""
        raise NotImplementedError

"""Abstract base of all statistics (fairret 0.1.3 compatible)."""
from __future__ import annotations

import abc
from typing import Any

import torch


class Statistic(abc.ABC, torch.nn.Module):
    """A statistic of predictions computed for every sensitive column.

    Subclasses implement ``forward(pred, sens, *stat_args, **stat_kwargs)`` returning one value per column of
    ``sens`` (shape ``(S,)``; see the subclasses for multiclass and stacked shapes).
    """

    @abc.abstractmethod
    def forward(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, **stat_kwargs: Any) -> torch.Tensor:
        """Compute the statistic for each sensitive column."""
        raise NotImplementedError

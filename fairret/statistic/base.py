"""Abstract base of all statistics (fairret 0.1.3 compatible)."""
from __future__ import annotations

import abc
import inspect
from typing import Any

import torch


def requires_arguments(signature: inspect.Signature, skip: int) -> bool:
    """Whether ``signature`` has a required parameter (no default, not ``*args``/``**kwargs``) after its first
    ``skip`` parameters."""
    params = list(signature.parameters.values())[skip:]
    return any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


class Statistic(abc.ABC, torch.nn.Module):
    """A statistic of predictions computed for every sensitive column.

    Subclasses implement ``forward(pred, sens, *stat_args, **stat_kwargs)`` returning one value per column of
    ``sens`` (shape ``(S,)``; see the subclasses for multiclass and stacked shapes).
    """

    @property
    def requires_labels(self) -> bool:
        """Whether the statistic needs arguments after ``sens`` (the label): callers such as
        :class:`~fairret.lightning.FairnessRegularizer` read this instead of trying a call.

        Here: whether ``forward`` has a required parameter after ``pred`` and ``sens``; linear-fractional
        statistics answer from their coefficient methods. A subclass may override it.
        """
        return requires_arguments(inspect.signature(self.forward), 2)

    @abc.abstractmethod
    def forward(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, **stat_kwargs: Any) -> torch.Tensor:
        """Compute the statistic for each sensitive column."""
        raise NotImplementedError

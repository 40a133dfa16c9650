"""Shared preparation of predictions and targets for the linear-fractional losses."""
from __future__ import annotations

from typing import Any, Optional

import torch

from .._validation import check_finite, check_probability, prepare_pred, prepare_sens, to_probabilities


def prepare_inputs(pred: torch.Tensor, sens: torch.Tensor, pred_as_logit: bool, validate_args: bool,
                   probabilities: bool = False):
    """Validate inputs and return ``(raw (N, C), prob (N, C), sens (N, S))``.

    ``prob`` is :func:`~fairret._validation.to_probabilities` of logits, or ``pred`` itself.
    """
    raw = prepare_pred(pred)
    if sens is None:
        raise ValueError("Expected argument `sens` to be a (N, S) tensor, but got None")
    sens = prepare_sens(sens, raw)
    if validate_args:
        check_finite(raw, "pred")
        check_finite(sens, "sens")
        if not pred_as_logit and probabilities:
            check_probability(raw, "pred")
    prob = to_probabilities(raw) if pred_as_logit else raw
    return raw, prob, sens


def target_tensor(target_statistic: Optional[Any], like: torch.Tensor) -> Optional[torch.Tensor]:
    """A user-given target as a detached ``(K, C)``-broadcastable tensor, or None."""
    if target_statistic is None:
        return None
    t = torch.as_tensor(target_statistic, dtype=like.dtype, device=like.device).detach()
    if t.ndim == 0:
        return t.reshape(1, 1)
    if t.ndim == 1:
        return t.reshape(-1, 1)
    return t

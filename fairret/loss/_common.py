"""Shared preparation of predictions and targets for the linear-fractional losses."""
from __future__ import annotations

from typing import Any, Optional, Tuple

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


def check_target_shape(target: torch.Tensor, shape: Tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless a user-given target broadcasts to the statistic's ``(K, C)`` shape without
    enlarging it (a target of shape ``(5,)`` for one statistic would otherwise count the loss five times)."""
    try:
        ok = torch.broadcast_shapes(tuple(target.shape), tuple(shape)) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"Expected argument `target_statistic` to be a number or to broadcast to the statistic's "
                         f"shape (K stacked statistics, C classes) = {tuple(shape)}, but got shape "
                         f"{tuple(target.shape)}")


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

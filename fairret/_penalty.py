"""The penalty a trainer integration adds to the task loss, shared by the Lightning and Hugging Face callbacks.

* :func:`compute_penalty`: ``loss(pred, sens[, labels], pred_as_logit=...)`` in float32 (at least) outside
  autocast, checked to be a scalar;
* :func:`weighted_penalty`: ``λ · penalty`` with the DDP gradient correction of a global-batch (``sync_dist``)
  loss: under DDP a fairret loss with ``sync_dist=True`` computes the *global-batch* penalty on every rank and gives
  each rank the global-batch gradient of its own rows; DDP then averages over ranks, which would divide the
  penalty's parameter gradient by the world size. The returned term has the value ``λ · penalty`` and the gradient
  ``world_size · λ · ∇penalty``, so the averaged gradient equals the single-process full-batch gradient. A loss with
  ``sync_dist=False`` (or any custom callable) is a per-rank term and is averaged like the task loss.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ._distributed import is_distributed

__all__ = ["compute_penalty", "weighted_penalty", "gradient_scale"]


def compute_penalty(loss: Callable[..., torch.Tensor], pred: torch.Tensor, sens: Any, labels: Any = None,
                    pred_as_logit: bool = True) -> torch.Tensor:
    """``loss(pred, sens[, labels], pred_as_logit=...)`` in float32 (at least) outside autocast, checked scalar.

    This is the computation the callbacks add to the training loss; tests and users adding the penalty by hand
    in ``training_step`` call it to get the identical term.

    Example:
        >>> from fairret.loss import NormLoss
        >>> from fairret.statistic import PositiveRate
        >>> sens = torch.tensor([[1., 0.], [0., 1.]])
        >>> compute_penalty(NormLoss(PositiveRate()), torch.tensor([0., 0.]), sens)
        tensor(0.)
    """
    if pred.ndim == 1:
        pred = pred.unsqueeze(1)
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    args = () if labels is None else (labels,)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        value = loss(pred, sens, *args, pred_as_logit=pred_as_logit)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"Expected the penalty of argument `loss` ({type(loss).__name__}) to be a scalar tensor, but "
                         f"it returned {shape}")
    return value


def gradient_scale(loss: Any) -> int:
    """World size for a global-batch (``sync_dist``) loss under DDP, else 1 (see the module docstring)."""
    if getattr(loss, "sync_dist", False) and is_distributed():
        return torch.distributed.get_world_size()
    return 1


def weighted_penalty(loss: Any, penalty: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam · penalty`` whose gradient is multiplied by :func:`gradient_scale` (its value is not)."""
    term = lam * penalty
    scale = gradient_scale(loss)
    if scale != 1:
        term = term + (scale - 1) * (term - term.detach())
    return term

"""Global-batch reductions under ``torch.distributed``.

Sums of per-sample terms (the numerators and denominators of linear-fractional statistics) are all-reduced with
gradient, so that every rank's loss equals the full-batch loss and every rank's gradient equals the full-batch
gradient of its own samples. Nothing happens without an initialised process group of more than one rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "all_reduce_sum"]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all ranks, with gradient when ``x`` requires it.

    The backward of a sum all-reduce is again a sum all-reduce of the incoming gradients: each rank receives the
    gradient of the total loss (summed over ranks' identical copies) with respect to its local part. Because every
    rank computes the same global loss, the summed gradient is ``world_size`` times the single-process one; it is
    divided back here so that each rank's gradient equals the single-process full-batch gradient.
    """
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank holds the same global loss, so the gradient reaching the reduced sum is the same on every
        # rank: the local part's gradient is that gradient itself (d sum / d x_local = 1).
        return grad

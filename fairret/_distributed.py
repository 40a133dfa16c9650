"""Global-batch reductions under ``torch.distributed``.

Sums of per-sample terms (the numerators and denominators of linear-fractional statistics) are all-reduced with
gradient, so that every rank's loss equals the full-batch loss and every rank's gradient equals the full-batch
gradient of its own samples. Nothing happens without an initialised process group of more than one rank.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "all_reduce_sum", "all_gather_rows"]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all ranks, with gradient when ``x`` requires it.

    Every rank computes the same global loss from the reduced sum, so the gradient reaching the sum is the same on
    every rank, and the local part's gradient is that gradient itself (``d sum / d x_local = 1``): the backward
    passes it through unchanged, with no communication and no division, and each rank's gradient is the
    single-process full-batch gradient with respect to its own rows. (The general rule, a sum all-reduce of the
    incoming gradients, would give ``world_size`` times that here, since every rank's copy is identical.)
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


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank order), with gradient back to the local rows; ranks may differ in N.

    As with :func:`all_reduce_sum`, every rank then computes the same global loss, so the gradient reaching the
    local rows is the global-batch gradient of those rows; no communication is needed in backward.
    """
    if not is_distributed():
        return x
    return _AllGatherRows.apply(x)


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        world = dist.get_world_size()
        n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        counts = [int(s) for s in sizes]
        biggest = max(counts)
        padded = x.new_zeros((biggest, *x.shape[1:]))
        padded[: x.shape[0]] = x.detach()
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        rank = dist.get_rank()
        ctx.offset, ctx.n = sum(counts[:rank]), x.shape[0]
        return torch.cat([p[:s] for p, s in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.offset: ctx.offset + ctx.n]

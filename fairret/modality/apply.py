"""Appliers: scale the gradients of parameter groups and head slices, scale a feature's gradient, add GE noise.

Example:
    >>> import torch
    >>> x = torch.ones(3, requires_grad=True)
    >>> scale_grad(x, 0.25).sum().backward()
    >>> x.grad
    tensor([0.2500, 0.2500, 0.2500])
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = ["scale_grad", "ScaleGrad", "HeadSlice", "scale_parameter_gradients", "gradient_std", "add_gradient_noise",
           "noise_generator"]

#: A slice of a fusion head's weight (and optionally bias) owned by one modality: ``(weight, columns)``.
HeadSlice = Tuple[torch.nn.Parameter, slice]


class ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``k`` (a float or a broadcastable tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: Union[float, torch.Tensor]) -> torch.Tensor:  # noqa: D401
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = ctx.k
        if isinstance(k, torch.Tensor):
            k = k.to(grad.dtype)
        return grad * k, None


def scale_grad(x: torch.Tensor, k: Union[float, torch.Tensor]) -> torch.Tensor:
    """``x`` in the forward pass, ``k · dL/dx`` in the backward pass (feature-level modulation, AGM)."""
    return ScaleGrad.apply(x, k)


def scale_parameter_gradients(groups: Mapping[str, Iterable[torch.nn.Parameter]], coefficients: Mapping[str, float],
                              head_slices: Optional[Mapping[str, Sequence[HeadSlice]]] = None) -> None:
    """Multiply in place the ``.grad`` of each modality's parameters (and of its head slices) by its coefficient.

    A parameter listed under two modalities gets both factors; missing gradients are skipped.
    """
    for name, params in groups.items():
        k = float(coefficients[name])
        for p in params:
            if p.grad is not None:
                p.grad.mul_(k)
    for name, slices in (head_slices or {}).items():
        k = float(coefficients[name])
        for param, cols in slices:
            if param.grad is not None:
                if param.grad.ndim == 1:  # a bias shared by all modalities has no slice: refuse silently wrong use
                    raise ValueError(f"Head slice of modality {name!r} points at a 1-D tensor; give the weight and "
                                     f"its input columns")
                param.grad[:, cols].mul_(k)


def noise_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator seeded by ``(seed, step)``: every rank draws the same noise at the same optimiser step."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63 - 1))
    return gen


def gradient_std(p: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """Standard deviation of a parameter's gradient as a 0-d tensor on its device (no host synchronisation);
    ``None`` without a gradient or with fewer than two entries."""
    g = p.grad
    return g.std() if g is not None and g.numel() >= 2 else None


def add_gradient_noise(params: Iterable[torch.nn.Parameter], generator: torch.Generator,
                       stds: Optional[Mapping[int, Optional[torch.Tensor]]] = None) -> None:
    """Add ``N(0, s^2)`` to every gradient tensor in place, ``s`` = ``stds[id(p)]`` or the gradient's own std.

    One standard normal draw per gradient entry from ``generator`` (in the order of ``params``; tensors without
    a std are skipped), scaled on the device: no host synchronisation, so it stays cheap on GPUs.
    """
    for p in params:
        g = p.grad
        if g is None:
            continue
        std = stds.get(id(p)) if stds is not None else gradient_std(p)
        if std is None:
            continue
        noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
        g.addcmul_(noise, std.to(g.dtype))

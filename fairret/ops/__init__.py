r"""The pairwise-distance core of the distance-covariance family, behind one dispatch point.

Backends of :func:`product_sum` (the quantity :math:`T_c = \sum \prod_k (c - \hat A^{(k)}_{ij})`, see
:mod:`fairret.ops.reference`):

========== =====================================================================================================
``dense``  the pure-torch reference: ``n x n`` matrices, any dtype, autograd to any order; the test oracle
``tiled``  O(n·tile) memory, two sweeps over tiles evaluated in float64 on centred tiles, gradient partials fused
           into the value sweep, exact second derivatives
``sorted`` exact O(n log n) value and gradient for a 1-D variable against a 1-D or a categorical (scaled
           one-hot) one (:mod:`fairret.ops.sorted`), ties included
``cuda``   custom CUDA kernels (:mod:`fairret.ops.cuda`): one fused O(n)-memory sweep for the value and the
           gradient partials, built on first use with NVRTC (or nvcc) and used only after a self-check against
           ``tiled`` on the same device; :func:`cuda_status` says why not
``auto``   ``dense`` up to :data:`DENSE_MAX_N` rows; above, for CUDA tensors the kernels when they built and passed
           their self-check on that device and accept the inputs (:data:`CUDA_MIN_N`), otherwise ``sorted``
           where it applies, else ``tiled``; never raises for lack of a backend (checking for one-hot columns
           reads the data)
========== =====================================================================================================
"""
from __future__ import annotations

from typing import Sequence

import torch

from .cuda import cuda_status, kernel_limits, product_sum_cuda
from .reference import pairwise_distances, product_sum_dense
from .sorted import product_sum_sorted, sorted_applicable
from .tiled import DEFAULT_TILE, product_sum_tiled

__all__ = ["BACKENDS", "DENSE_MAX_N", "cuda_status", "check_backend", "resolve_backend", "product_sum",
           "pairwise_distances", "product_sum_dense", "product_sum_tiled", "product_sum_sorted", "product_sum_cuda", "sorted_applicable",
           "CUDA_MIN_N"]

#: The one list of backend names; each is described in this module's docstring. Every ``backend=`` argument
#: (functionals, losses, metrics) is checked against it by :func:`check_backend`.
BACKENDS = ("auto", "dense", "tiled", "sorted", "cuda")

#: Up to this many rows ``auto`` uses the dense backend (its n x n matrices are small and it is fastest there).
DENSE_MAX_N = 1024


#: From this many rows ``auto`` sends CUDA tensors to the kernels. Provisional: it equals :data:`DENSE_MAX_N`
#: because the crossover against ``dense``/``tiled`` on a GPU has not been measured yet.
CUDA_MIN_N = DENSE_MAX_N + 1


def check_backend(backend: str) -> str:
    """Raise ``ValueError`` unless ``backend`` is one of :data:`BACKENDS`; whether it can run is decided by
    :func:`resolve_backend` on the data."""
    if backend not in BACKENDS:
        raise ValueError(f"Expected argument `backend` to be one of {BACKENDS}, but got {backend!r}")
    return backend


def resolve_backend(backend: str, xs: Sequence[torch.Tensor], c: float = 0.0) -> str:
    """The backend that will run: ``auto`` resolved; an explicit one checked (raises with the reason)."""
    check_backend(backend)
    if backend == "auto":
        if xs[0].shape[0] <= DENSE_MAX_N:
            return "dense"
        if xs[0].is_cuda and xs[0].shape[0] >= CUDA_MIN_N:
            grad_vars = [k for k, x in enumerate(xs) if x.requires_grad]
            if kernel_limits(xs, grad_vars)[0] and cuda_status(xs[0].device)[0]:
                return "cuda"
        return "sorted" if sorted_applicable(list(xs), c)[0] else "tiled"
    if backend == "sorted":
        ok, why = sorted_applicable(list(xs), c)
        if not ok:
            raise ValueError(f"The `sorted` backend cannot run: {why}; use backend='tiled' or 'auto'")
    if backend == "cuda":
        if not all(x.is_cuda for x in xs):
            raise ValueError("The `cuda` backend needs CUDA tensors; use backend='tiled' or 'auto' for CPU tensors")
        ok, why = cuda_status(xs[0].device)
        if not ok:
            raise ValueError(f"The `cuda` backend cannot run: {why}")
    return backend


#: Input dtypes evaluated in float32 by :func:`product_sum`.
_HALF = (torch.float16, torch.bfloat16)


def product_sum(xs: Sequence[torch.Tensor], c: float, unbiased: bool, backend: str = "auto",
                tile: int = DEFAULT_TILE) -> torch.Tensor:
    r""":math:`T_c` over all pairs (V) or ``i != j`` (U) with the chosen backend.

    float16 and bfloat16 inputs are evaluated in float32, and the sum comes back in float32: :math:`T_c` is of
    order :math:`n^2 c^d` and the measures subtract that from it, so in bfloat16 (8 significant bits) a JdCov of
    -0.011 would round to 0. The callers cast their final value back to the input dtype.
    """
    xs = [x.float() if x.dtype in _HALF else x for x in xs]
    which = resolve_backend(backend, xs, c)
    if which == "dense":
        return product_sum_dense(xs, c, unbiased)
    if which == "sorted":
        return product_sum_sorted(list(xs), unbiased)
    if which == "cuda":
        return product_sum_cuda(xs, c, unbiased)
    return product_sum_tiled(xs, c, unbiased, tile)

r"""The ``cuda`` backend: custom CUDA kernels for the pairwise-distance core, wrapped as a torch op.

The kernels (``cuda/dcov_kernels.cuh``, shipped in the wheel as ``fairret/_cuda_src``) run one thread per row
``i`` over every row ``j`` (tiles of rows staged in shared memory), never holding an ``n x n`` buffer, with
double accumulation. Three modes (see the header of the ``.cuh``): distance row sums of several variables at once,
the row sums of :math:`P^{(m)} = \prod_{k \ne m} (c - \hat A^{(k)})` (JdCov with three or more variables), and the
fused sweep that returns :math:`T_c = \sum \prod_k (c - \hat A^{(k)}_{ij})` (dCov/dCor V and U, JdCov, CCdCov) and,
in the same pass, the per-row gradient partials :math:`2 \sum_j G_{ij} (x_i - x_j)/a_{ij}` of one variable
(the same algebra as :mod:`fairret.ops.tiled`).

Build on first use, cached for the process: NVRTC through ``torch.cuda._compile_kernel`` (no nvcc needed), else
``torch.utils.cpp_extension.load`` with nvcc (``cuda/dcov_ext.cu``, cached in ``~/.cache/torch_extensions``).
``FAIRRET_CUDA_BUILD=nvrtc|nvcc|off`` forces one route or none. :func:`cuda_status` says whether the kernels
can run and, if not, why; ``backend="auto"`` then stays on the torch backends.

The op ``torch.ops.fairret.dcov_product_sum`` (``torch.library.custom_op`` with ``register_fake`` and
``register_autograd``) runs the kernels on CUDA tensors. On CPU tensors the same op runs
:func:`modes_reference`, a dense pure-torch implementation of the kernels' three modes: the orchestration
(centring, the closed forms for two variables, the autograd formula, ``opcheck``, ``torch.compile``) is thereby
tested without a GPU, and ``tests/test_cuda_kernels.py`` checks the ``.cuh`` itself, compiled for the CPU with
``cuda/emulate_host.h``, against the same reference. Double backward (``create_graph=True``) recomputes the
gradient with the differentiable torch operations of :func:`fairret.ops.tiled.differentiable_grads` (the
backward is :func:`fairret.ops.tiled.backward_grads`, shared with the torch backends).

Example:
    >>> import torch
    >>> from fairret.ops.cuda import product_sum_cuda
    >>> from fairret.ops.reference import product_sum_dense
    >>> x, y = torch.randn(50, 1, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    >>> bool(torch.allclose(product_sum_cuda([x, y], 0.0, True), product_sum_dense([x, y], 0.0, True)))
    True
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._common import centring_divisors, p_rows_closed_form
from .tiled import backward_grads

__all__ = ["product_sum_cuda", "cuda_status", "kernel_limits", "source_dir", "modes_reference", "THREADS",
           "MAX_VARS", "MAX_COLS", "MAX_GRAD_COLS", "SHARED_LIMIT"]

#: Limits compiled into the kernels (``FDC_MAX_*`` in the ``.cuh``).
MAX_VARS, MAX_COLS, MAX_GRAD_COLS = 8, 128, 16
#: Threads per block.
THREADS = 256
#: Dynamic shared memory per block the launches stay under (no opt-in attribute needed).
SHARED_LIMIT = 48 * 1024
#: Largest tile of rows staged in shared memory.
MAX_TILE = 256

Launcher = Callable[..., None]


def source_dir() -> Path:
    """Folder of the CUDA sources: ``fairret/_cuda_src`` in a wheel, the repository's ``cuda/`` in a checkout."""
    pkg = Path(__file__).resolve().parent.parent
    for cand in (pkg / "_cuda_src", pkg.parent / "cuda"):
        if (cand / "dcov_kernels.cuh").is_file():
            return cand
    raise FileNotFoundError(f"fairret's CUDA sources (dcov_kernels.cuh) are in neither {pkg / '_cuda_src'} nor "
                            f"{pkg.parent / 'cuda'}")


def shared_bytes(tsize: int, tile: int, p: int, d: int, threads: int) -> int:
    """Dynamic shared memory of a launch (``FDC_SHARED_BYTES`` in the ``.cuh``)."""
    return (tsize * tile * p + 7) // 8 * 8 + 8 * (tile * (d + 1) + threads)


def choose_tile(tsize: int, p: int, d: int, threads: int = THREADS, limit: int = SHARED_LIMIT) -> int:
    """The largest tile (rows staged per step, at most :data:`MAX_TILE`) whose launch fits in ``limit`` bytes."""
    tile = MAX_TILE
    while tile > 1 and shared_bytes(tsize, tile, p, d, threads) > limit:
        tile //= 2
    return tile


def kernel_limits(xs: Sequence[torch.Tensor], grad_vars: Sequence[int] = ()) -> Tuple[bool, str]:
    """Whether the kernels accept these variables (count, widths, dtype), and why not."""
    if len(xs) > MAX_VARS:
        return False, f"{len(xs)} variables (the kernels take at most {MAX_VARS})"
    cols = sum(x.shape[1] for x in xs)
    if cols > MAX_COLS:
        return False, f"{cols} columns in all (the kernels take at most {MAX_COLS})"
    wide = [m for m in grad_vars if xs[m].shape[1] > MAX_GRAD_COLS]
    if wide:
        return False, f"a differentiated variable with {xs[wide[0]].shape[1]} columns (at most {MAX_GRAD_COLS})"
    if xs[0].dtype not in (torch.float32, torch.float64):
        return False, f"dtype {xs[0].dtype} (float32 or float64 only)"
    if xs[0].shape[0] < 4:
        return False, f"n = {xs[0].shape[0]} rows (at least 4)"
    return True, ""


# --- building the kernels ------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_BUILT: dict = {}


def _build_nvrtc() -> Launcher:
    src = (source_dir() / "dcov_kernels.cuh").read_text()
    kernels = {torch.float32: torch.cuda._compile_kernel(src, "fdc_kernel_f32"),
               torch.float64: torch.cuda._compile_kernel(src, "fdc_kernel_f64")}

    def launch(X, n, P, d, off, rs, tot, pr, prtot, c, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        kernels[X.dtype](grid=(grid, 1, 1), block=(threads, 1, 1),
                         args=[X, n, P, d, off, rs, tot, pr, float(prtot), float(c), unbiased, gm, mode, tile, out,
                               out2], shared_mem=shared)

    return launch


def _build_nvcc() -> Launcher:
    from torch.utils.cpp_extension import load

    src = source_dir()
    ext = load(name="fairret_dcov_ext", sources=[str(src / "dcov_ext.cu")], extra_include_paths=[str(src)],
               extra_cuda_cflags=["-O3"], verbose=False)

    def launch(X, n, P, d, off, rs, tot, pr, prtot, c, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        ext.launch(X, n, P, d, off, rs, tot, pr, float(prtot), float(c), unbiased, gm, mode, tile, out, out2, grid,
                   threads, shared)

    return launch


def _launcher() -> Tuple[Optional[Launcher], str]:
    """The CUDA launcher (built once per process) or None with the reason."""
    with _LOCK:
        if "result" in _BUILT:
            return _BUILT["result"]
        route = os.environ.get("FAIRRET_CUDA_BUILD", "auto").lower()
        result: Tuple[Optional[Launcher], str]
        if route == "off":
            result = (None, "disabled by FAIRRET_CUDA_BUILD=off")
        elif not torch.cuda.is_available():
            result = (None, "CUDA is not available in this torch build or machine")
        else:
            errors = []
            result = (None, "")
            routes = {"auto": ("nvrtc", "nvcc"), "nvrtc": ("nvrtc",), "nvcc": ("nvcc",)}.get(route)
            if routes is None:
                result = (None, f"FAIRRET_CUDA_BUILD={route!r} is none of nvrtc, nvcc, off")
                routes = ()
            for r in routes:
                try:
                    if r == "nvrtc" and not hasattr(torch.cuda, "_compile_kernel"):
                        raise RuntimeError("torch.cuda._compile_kernel is missing in this torch")
                    result = ((_build_nvrtc if r == "nvrtc" else _build_nvcc)(), f"built with {r}")
                    break
                except Exception as err:  # any build failure means: fall back, and say why
                    errors.append(f"{r}: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")
            if result[0] is None and errors:
                result = (None, "the kernels failed to build (" + "; ".join(errors) + ")")
        _BUILT["result"] = result
        return result


def cuda_status() -> Tuple[bool, str]:
    """Whether the CUDA kernels can run here (building them on first call), and why not / how they were built."""
    launch, why = _launcher()
    return launch is not None, why


# --- the kernels' contract in pure torch (CPU op, and the oracle of the emulated-kernel tests) ---------------------
def modes_reference(X, n, P, d, off, rs, tot, pr, prtot, c, unbiased, gm, mode, tile, out, out2, grid, threads,
                    shared) -> None:
    """Dense float64 torch implementation of the three kernel modes, with the launcher's signature (writes ``out``
    and ``out2``; ``tile``, ``grid``, ``threads`` and ``shared`` only matter to the kernels)."""
    offs = [int(v) for v in off.tolist()]
    eye = torch.eye(n, dtype=torch.bool, device=X.device)
    dists, factors = [], []
    for k in range(d):
        xk = X[:, offs[k]:offs[k + 1]]
        diff = xk.unsqueeze(1) - xk.unsqueeze(0)
        a = (diff * diff).sum(-1).sqrt().to(torch.float64)  # in X's dtype first, as the kernels do
        if unbiased:
            a = a.masked_fill(eye, 0.0)
        dists.append(a)
        if mode != 0:
            factors.append(c - (a - rs[k][:, None] - rs[k][None, :] + tot[k]))
    if mode == 0:
        out[: n * d] = torch.stack([a.sum(1) for a in dists], 1).reshape(-1)
        return
    keep = (~eye).to(torch.float64) if unbiased else torch.ones(n, n, dtype=torch.float64, device=X.device)
    other = torch.ones(n, n, dtype=torch.float64, device=X.device)
    for k, f in enumerate(factors):
        if k != gm:
            other = other * f
    if mode == 1:
        out[:n] = (other * keep).sum(1)
        return
    prod = other * factors[gm] if gm >= 0 else other
    rows = (prod * keep).sum(1)
    blocks = (n + threads - 1) // threads
    pad = torch.zeros(blocks * threads, dtype=torch.float64, device=X.device)
    pad[:n] = rows
    out[:blocks] = pad.reshape(blocks, threads).sum(1)
    if gm >= 0:
        g = ((pr[:, None] - prtot) + pr[None, :] - other) * keep
        a = dists[gm]
        w = torch.where(a > 0, 2.0 * g / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(a))
        xg = X[:, offs[gm]:offs[gm + 1]].to(torch.float64)
        out2[: n * xg.shape[1]] = (xg * w.sum(1, keepdim=True) - w @ xg).reshape(-1)


# --- orchestration (shared by the CUDA and the CPU implementation of the op) ----------------------------------------
def _forward(xs: Sequence[torch.Tensor], c: float, unbiased: bool, grad_vars: Sequence[int], launch: Launcher,
             threads: int = THREADS, tile: Optional[int] = None) -> List[torch.Tensor]:
    """``[T_c, *partials]`` through ``launch`` (the kernels, :func:`modes_reference`, or the CPU emulation of the
    kernels in the tests, which use few threads and small tiles to exercise partial tiles and the reduction)."""
    n, d = xs[0].shape[0], len(xs)
    dt, dev = xs[0].dtype, xs[0].device
    xp = [x - x.to(torch.float64).mean(0, keepdim=True).to(dt) for x in xs]
    X = torch.cat(xp, dim=1).contiguous()
    widths = [x.shape[1] for x in xs]
    P = sum(widths)
    off = torch.tensor([0] + list(torch.tensor(widths).cumsum(0).tolist()), dtype=torch.int32, device=dev)
    tile = choose_tile(X.element_size(), P, d, threads) if tile is None else tile
    grid = (n + threads - 1) // threads
    shared = shared_bytes(X.element_size(), tile, P, d, threads)
    f64 = dict(dtype=torch.float64, device=dev)
    dummy = torch.zeros(1, **f64)

    def run(mode, rs, tot, pr, prtot, gm, out, out2):
        launch(X, n, P, d, off, rs, tot, pr, float(prtot), float(c), int(bool(unbiased)), int(gm), mode, tile, out,
               out2, grid, threads, shared)

    rows = torch.empty(n * d, **f64)
    run(0, dummy, dummy, dummy, 0.0, -1, rows, dummy)
    rows = rows.reshape(n, d)
    rd, td = centring_divisors(n, unbiased)
    s, norm = 1.0 / rd, 1.0 / td
    rs = (rows * s).T.contiguous()
    tot = (rows.sum(0) * norm).contiguous()
    totals = torch.empty(grid, **f64)
    grads: List[torch.Tensor] = []
    for m in grad_vars:
        prow = p_rows_closed_form(n, d, c, unbiased, dev)
        if prow is None:
            prow = torch.empty(n, **f64)
            run(1, rs, tot, dummy, 0.0, m, prow, dummy)
        g = torch.empty(n * widths[m], **f64)
        run(2, rs, tot, (prow * s).contiguous(), float(prow.sum() * norm), m, totals, g)
        grads.append(g.reshape(n, widths[m]))
    if not grad_vars:
        run(2, rs, tot, dummy, 0.0, -1, totals, dummy)
    return [totals.sum(), *grads]


@torch.library.custom_op("fairret::dcov_product_sum", mutates_args=())
def _dcov_product_sum(xs: List[torch.Tensor], c: float, unbiased: bool, grad_vars: List[int]) -> List[torch.Tensor]:
    """``[T_c (float64 scalar), dT_c/dx_m for m in grad_vars (float64)]``; CPU tensors: dense reference modes."""
    return _forward(xs, c, unbiased, grad_vars, modes_reference)


@_dcov_product_sum.register_kernel("cuda")
def _dcov_product_sum_cuda(xs, c, unbiased, grad_vars):
    launch, why = _launcher()
    if launch is None:
        raise RuntimeError(f"fairret's CUDA kernels cannot run: {why}")
    return _forward(xs, c, unbiased, grad_vars, launch)


@_dcov_product_sum.register_fake
def _dcov_product_sum_fake(xs, c, unbiased, grad_vars):
    out = [xs[0].new_empty((), dtype=torch.float64)]
    return out + [xs[m].new_empty(xs[m].shape, dtype=torch.float64) for m in grad_vars]


def _setup_context(ctx, inputs, output):
    xs, c, unbiased, grad_vars = inputs
    ctx.c, ctx.unbiased, ctx.grad_vars, ctx.d = c, unbiased, list(grad_vars), len(xs)
    ctx.save_for_backward(*xs, *output[1:])


def _backward(ctx, grads_out):
    saved = ctx.saved_tensors
    xs, partials = saved[: ctx.d], saved[ctx.d:]
    return backward_grads(grads_out[0], xs, partials, ctx.c, ctx.unbiased, ctx.grad_vars), None, None, None


_dcov_product_sum.register_autograd(_backward, setup_context=_setup_context)


def product_sum_cuda(xs: Sequence[torch.Tensor], c: float, unbiased: bool) -> torch.Tensor:
    r""":math:`T_c` like :func:`fairret.ops.reference.product_sum_dense`, through the kernels' op.

    Gradients flow to the variables that require them (the op returns their partials in the same sweep).
    """
    xs = [x.unsqueeze(1) if x.ndim == 1 else x for x in xs]
    grad_vars = [k for k, x in enumerate(xs) if x.requires_grad]
    ok, why = kernel_limits(xs, grad_vars)
    if not ok:
        raise ValueError(f"The `cuda` backend cannot take these inputs: {why}; use backend='tiled' or 'auto'")
    total = torch.ops.fairret.dcov_product_sum(list(xs), float(c), bool(unbiased), grad_vars)[0]
    return total.to(xs[0].dtype)

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
``FAIRRET_CUDA_BUILD=nvrtc|nvcc|off`` forces one route or none.

Self-verification: the first use on a device (in a process) also runs :func:`self_check` there: the kernels as
built, on the fixed problems of :data:`SELF_CHECK_PROBLEMS` (each mode, float32 and float64, odd sizes, partial
tiles, ties, U and V, values and gradient partials), against the ``tiled`` backend on the same device, within
:data:`SELF_CHECK_RTOL`. Only kernels that pass are used. :func:`cuda_status` says whether the kernels can be
used on a device and, if not, why (the build error, or the first mismatch: dtype, size, statistic, output, error
and the kernel mode that first differs); ``backend="auto"`` then stays on the torch backends and
``backend="cuda"`` raises with that text.

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
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._common import centring_divisors, p_rows_closed_form
from .tiled import backward_grads, product_sum_tiled

__all__ = ["product_sum_cuda", "cuda_status", "self_check", "kernel_limits", "source_dir", "modes_reference",
           "SELF_CHECK_PROBLEMS", "SELF_CHECK_RTOL", "kernel_flops", "THREADS", "MAX_VARS", "MAX_COLS",
           "MAX_GRAD_COLS", "SHARED_LIMIT"]

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


def kernel_flops(n: int, widths: Sequence[int], grad_vars: Sequence[int] = (), unbiased: bool = False) -> int:
    """Floating-point operations the kernels execute for one :func:`product_sum_cuda` call (for throughput figures).

    Per ordered pair ``(i, j)`` (``n^2`` pairs, ``n(n - 1)`` for U; each pair is evaluated from both ends): a
    distance costs ``3 p + 1`` (differences, squares and sums, a square root); mode 0 adds 1 (the row sum); modes 1
    and 2 add 4 per variable for the centred factor, the products of the factors and the accumulation; the gradient
    partials add ``5 + 3 p_m``. Distances are evaluated in the inputs' dtype and everything after them in double,
    so a fraction of an FP32 peak computed from this count is an indicator, not a bound.

    Example:
        >>> kernel_flops(1000, (1, 8), grad_vars=(0,))  # mode 0, then the fused sweep with the partials of x
        77000000
    """
    d = len(widths)
    dist = [3 * p + 1 for p in widths]
    pairs = n * (n - 1) if unbiased else n * n
    per_pair = sum(t + 1 for t in dist)  # mode 0
    sweep = sum(t + 4 for t in dist) + max(d - 2, 0) + 1  # mode 2 without partials
    for m in grad_vars:
        if d > 2:
            per_pair += sum(t + 4 for k, t in enumerate(dist) if k != m) + 1  # mode 1
        per_pair += sweep + (d - 2) + 5 + 3 * widths[m]
    if not grad_vars:
        per_pair += sweep
    return per_pair * pairs


# --- building the kernels ------------------------------------------------------------------------------------------
_LOCK = threading.RLock()
#: Built launchers: ``("nvrtc", device index)`` or ``("nvcc",)`` -> (launcher or None, how built / why not).
_BUILT: dict = {}
#: Per device index: (launcher or None, status text) after the build and the self-check.
_CHECKED: dict = {}


def _build_nvrtc(index: int) -> Launcher:
    """The kernels compiled by NVRTC for device ``index`` and loaded into its context."""
    src = (source_dir() / "dcov_kernels.cuh").read_text()
    with torch.cuda.device(index):
        kernels = {torch.float32: torch.cuda._compile_kernel(src, "fdc_kernel_f32"),
                   torch.float64: torch.cuda._compile_kernel(src, "fdc_kernel_f64")}

    def launch(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        with torch.cuda.device(X.device):  # the module lives in this device's context
            kernels[X.dtype](grid=(int(grid), 1, 1), block=(int(threads), 1, 1),
                             args=[X, int(n), int(P), int(d), off, rs, consts, pr, int(unbiased), int(gm), int(mode),
                                   int(tile), out, out2],
                             shared_mem=int(shared), stream=torch.cuda.current_stream(X.device))

    return launch


def _build_nvcc() -> Launcher:
    """The torch extension of ``dcov_ext.cu`` (compiled by nvcc once per machine, loaded once per process)."""
    from torch.utils.cpp_extension import load

    src = source_dir()
    ext = load(name="fairret_dcov_ext", sources=[str(src / "dcov_ext.cu")], extra_include_paths=[str(src)],
               extra_cuda_cflags=["-O3"], verbose=False)

    def launch(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        ext.launch(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared)

    return launch


def _route() -> Tuple[Tuple[str, ...], str]:
    """The build routes to try (in order) and, when there are none, why."""
    route = os.environ.get("FAIRRET_CUDA_BUILD", "auto").lower()
    if route == "off":
        return (), "disabled by FAIRRET_CUDA_BUILD=off"
    routes = {"auto": ("nvrtc", "nvcc"), "nvrtc": ("nvrtc",), "nvcc": ("nvcc",)}.get(route)
    if routes is None:
        return (), f"FAIRRET_CUDA_BUILD={route!r} is none of nvrtc, nvcc, off"
    if not torch.cuda.is_available():
        return (), "CUDA is not available in this torch build or machine"
    return routes, ""


def _build(index: int) -> Tuple[Optional[Launcher], str]:
    """The launcher for device ``index`` (built once per process and device) or None with the reason."""
    routes, why = _route()
    if not routes:
        return None, why
    with _LOCK:
        errors = []
        for r in routes:
            key = ("nvrtc", index) if r == "nvrtc" else ("nvcc",)
            if key not in _BUILT:
                try:
                    if r == "nvrtc" and not hasattr(torch.cuda, "_compile_kernel"):
                        raise RuntimeError("torch.cuda._compile_kernel is missing in this torch")
                    _BUILT[key] = (_build_nvrtc(index) if r == "nvrtc" else _build_nvcc(), f"built with {r}")
                except Exception as err:  # any build failure means: fall back, and say why
                    _BUILT[key] = (None, f"{r}: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
                                   if str(err).strip() else f"{r}: {type(err).__name__}")
            if _BUILT[key][0] is not None:
                return _BUILT[key]
            errors.append(_BUILT[key][1])
        return None, "the kernels failed to build (" + "; ".join(errors) + ")"


def _device_index(device) -> int:
    if device is None:
        return torch.cuda.current_device()
    device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if device.type != "cuda":
        raise ValueError(f"Expected argument `device` to be a CUDA device, but got {device}")
    return torch.cuda.current_device() if device.index is None else device.index


def _usable(device=None) -> Tuple[Optional[Launcher], str]:
    """The launcher for ``device`` if the kernels built there and passed :func:`self_check` on it (both done once
    per process and device), else None; and the status text."""
    routes, why = _route()
    if not routes:
        return None, why
    index = _device_index(device)
    with _LOCK:
        if index not in _CHECKED:
            launch, how = _build(index)
            if launch is None:
                _CHECKED[index] = (None, how)
            else:
                ok, report = self_check(launch, torch.device("cuda", index))
                _CHECKED[index] = (launch if ok else None, f"{how}; {report}")
        return _CHECKED[index]


def cuda_status(device=None) -> Tuple[bool, str]:
    """Whether the CUDA kernels can be used on ``device`` (default: the current CUDA device), and why not, or how
    they were built and verified.

    The first call for a device builds the kernels and runs :func:`self_check` against the ``tiled`` backend on that
    device; only kernels that pass are used (by ``backend="auto"``, which otherwise stays on the torch backends, and
    by ``backend="cuda"``, which otherwise raises with this text). Both results are kept for the process.

    Example:
        >>> from fairret.ops import cuda_status
        >>> ok, why = cuda_status()
        >>> ok or bool(why)  # without CUDA: False and the reason
        True
    """
    launch, why = _usable(device)
    return launch is not None, why


# --- self-verification ---------------------------------------------------------------------------------------------
#: The fixed problems of :func:`self_check`: ``(n, widths of the variables, differentiated variables, c, unbiased)``.
#: Every problem has ties (repeated values in the first variable, coincident rows in the last); rows are float32
#: values, so the float32 and float64 runs see the same data and share one float64 reference.
SELF_CHECK_PROBLEMS = (
    (300, (1, 8), (0,), 0.0, False),      # 1-D predictions against 8-D attributes, V: two blocks, a partial tile
    (37, (2, 3), (0, 1), 0.0, True),      # U; both variables differentiated, fewer rows than a block
    (61, (1, 2, 3), (0, 2), 1.0, False),  # three variables (mode 1: the row sums of P), c = 1
    (259, (1, 64), (), 0.0, True),        # value only, U; 65 columns shrink the tile (several, the last partial)
)
#: Tolerances of :func:`self_check`: the largest error of a value or of a gradient entry, relative to the
#: reference value or the gradient's largest entry (the kernels evaluate distances in the inputs' dtype and
#: accumulate in double: measured errors are about 1e-7 in float32 and 1e-14 in float64).
SELF_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}

_MODE_NAMES = {0: "mode 0 (distance row sums)", 1: "mode 1 (row sums of P)",
               2: "mode 2 (fused sweep: block totals and gradient partials)"}


def _self_check_data(n: int, widths: Sequence[int], seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, w, generator=g, dtype=torch.float64, device="cpu") for w in widths]
    for x in xs[1:]:  # dependence keeps T_c away from 0, so relative errors mean something
        x[:, 0] += xs[0][:, 0]
    k = n // 5
    xs[0][:k] = xs[0][k:2 * k].clone()  # repeated values (ties) in the first variable
    xs[-1][-(n // 6):] = xs[-1][0].clone()  # coincident rows in the last: zero distances
    return [x.float().double() for x in xs]


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |got - ref| over the largest |ref| (NaN if anything is not finite)."""
    got, ref = got.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(got).all()):
        return float("nan")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def _poisoned(launch: Launcher) -> Launcher:
    """``launch`` with its outputs set to NaN first: an entry a kernel fails to write cannot pass."""
    def run(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        out.fill_(float("nan"))
        out2.fill_(float("nan"))
        launch(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared)

    return run


def _diagnose(xs, c, unbiased, grad_vars, launch: Launcher, threads: int) -> str:
    """The first launch whose outputs differ from :func:`modes_reference` by more than the tolerance, or the worst."""
    tol = SELF_CHECK_RTOL[xs[0].dtype]
    found = {"worst": (-1.0, ""), "first": ""}

    def both(X, n, P, d, off, rs, consts, pr, unbiased_, gm, mode, tile, out, out2, grid, threads_, shared):
        ref, ref2 = out.clone().fill_(float("nan")), out2.clone().fill_(float("nan"))
        modes_reference(X, n, P, d, off, rs, consts, pr, unbiased_, gm, mode, tile, ref, ref2, grid, threads_,
                        shared)
        out.fill_(float("nan"))
        out2.fill_(float("nan"))
        launch(X, n, P, d, off, rs, consts, pr, unbiased_, gm, mode, tile, out, out2, grid, threads_, shared)
        bad = False
        for name, a, b in (("output", out, ref), ("gradient partials", out2, ref2)):
            both_nan = torch.isnan(a) & torch.isnan(b)
            err = _rel_err(torch.where(both_nan, 0.0, a), torch.where(both_nan, 0.0, b))
            text = (f"{_MODE_NAMES[mode]}{f' for variable {gm}' if gm >= 0 else ''}, {name}: relative error "
                    f"{err:.1e}")
            if not err <= found["worst"][0]:
                found["worst"] = (err, text)
            if not err <= tol:
                bad = True
                found["first"] = found["first"] or text
        if bad:  # later launches take this one's results as inputs: let them start from the contract's
            out.copy_(ref)
            out2.copy_(ref2)

    try:
        _forward(xs, c, unbiased, grad_vars, both, threads)
    except Exception as err:  # noqa: BLE001 - a diagnosis must not raise
        return found["first"] or f"{type(err).__name__} while comparing launch by launch"
    return found["first"] or found["worst"][1]


def self_check(launch: Launcher, device: torch.device, threads: int = THREADS) -> Tuple[bool, str]:
    """Run ``launch`` (the kernels as built) on :data:`SELF_CHECK_PROBLEMS` in float32 and float64 on ``device``
    and compare value and gradient partials with the ``tiled`` backend (float64) there.

    Returns ``(True, summary)`` when every error is within :data:`SELF_CHECK_RTOL`, else ``(False, the first
    mismatch)``: dtype, size, statistic, which output, the error, and the kernel mode whose launch first differs
    from the kernels' torch contract (:func:`modes_reference`). Outputs are set to NaN before each launch, so an
    unwritten entry fails. A launch that raises is a failure too (its error is quoted). Runs with autocast off and
    outside inference mode, whatever the caller's context, so that the reference is computed as intended.
    """
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            return _self_check(launch, device, threads)
    except Exception as err:  # noqa: BLE001 - whatever stops the check, the kernels are not used
        return False, (f"self-check against the tiled backend could not run on {device}: {type(err).__name__}: "
                       f"{str(err).strip()[:300]}")


def _self_check(launch: Launcher, device: torch.device, threads: int) -> Tuple[bool, str]:
    t0 = time.perf_counter()
    worst = {dt: 0.0 for dt in SELF_CHECK_RTOL}
    checked = _poisoned(launch)
    for seed, (n, widths, grad_vars, c, unbiased) in enumerate(SELF_CHECK_PROBLEMS):
        data = _self_check_data(n, widths, seed)
        ref_in = [x.to(device).requires_grad_(k in grad_vars) for k, x in enumerate(data)]
        ref = product_sum_tiled(ref_in, c, unbiased)
        ref_grads = torch.autograd.grad(ref, [ref_in[m] for m in grad_vars]) if grad_vars else ()
        for dt in (torch.float64, torch.float32):
            xs = [x.to(device=device, dtype=dt) for x in data]
            what = (f"{str(dt).replace('torch.', '')}, n = {n}, widths {tuple(widths)}, "
                    f"{'U' if unbiased else 'V'}-statistic, c = {c:g}")
            try:
                with torch.no_grad():
                    got = _forward(xs, c, unbiased, list(grad_vars), checked, threads)
                errs = [("value", _rel_err(got[0], ref))]
                errs += [(f"gradient of variable {m}", _rel_err(g, r))
                         for m, g, r in zip(grad_vars, got[1:], ref_grads)]
            except Exception as err:  # noqa: BLE001 - a kernel that fails is refused, with its error
                return False, (f"self-check against the tiled backend failed on {device}: {what}: the launch raised "
                               f"{type(err).__name__}: {str(err).strip()[:300]}")
            tol = SELF_CHECK_RTOL[dt]
            for name, err in errs:
                if not err <= tol:
                    where = _diagnose(xs, c, unbiased, list(grad_vars), launch, threads)
                    return False, (f"self-check against the tiled backend failed on {device}: {what}: {name}: "
                                   f"relative error {err:.1e} > tolerance {tol:.0e}"
                                   + (f"; first differing launch: {where}" if where else ""))
                worst[dt] = max(worst[dt], err)
    secs = time.perf_counter() - t0
    return True, (f"verified against the tiled backend on {device} in {secs:.2f} s ({len(SELF_CHECK_PROBLEMS)} "
                  "problems in float32 and float64; largest relative errors "
                  + ", ".join(f"{str(dt).replace('torch.', '')} {worst[dt]:.0e} (tolerance {SELF_CHECK_RTOL[dt]:.0e})"
                              for dt in SELF_CHECK_RTOL) + ")")


# --- the kernels' contract in pure torch (CPU op, and the oracle of the emulated-kernel tests) ---------------------
def modes_reference(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads,
                    shared) -> None:
    """Dense float64 torch implementation of the three kernel modes, with the launcher's signature (writes ``out``
    and ``out2``; ``tile``, ``grid``, ``threads`` and ``shared`` only matter to the kernels; ``consts`` is
    ``[tot_0 .. tot_{d-1}, c, prtot]``)."""
    offs = [int(v) for v in off.tolist()]
    if mode != 0:
        tot, c, prtot = consts[:d], consts[d], consts[d + 1]
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
    kernels in the tests, which use few threads and small tiles to exercise partial tiles and the reduction).
    Nothing here waits for the device: the double scalars go to the kernels in a device buffer."""
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
    dummy = torch.zeros(1, **f64)  # placeholder for a buffer the mode does not read or write

    def run(mode, rs, consts, pr, gm, out, out2):
        launch(X, n, P, d, off, rs, consts, pr, int(bool(unbiased)), int(gm), mode, tile, out, out2, grid, threads,
               shared)

    rows = torch.empty(n * d, **f64)
    run(0, dummy, dummy, dummy, -1, rows, dummy)
    rows = rows.reshape(n, d)
    rd, td = centring_divisors(n, unbiased)
    s, norm = 1.0 / rd, 1.0 / td
    rs = (rows * s).T.contiguous()
    tot = rows.sum(0) * norm
    cval = torch.full((1,), float(c), **f64)
    totals = torch.empty(grid, **f64)
    grads: List[torch.Tensor] = []
    for m in grad_vars:
        prow = p_rows_closed_form(n, d, c, unbiased, dev)
        if prow is None:
            prow = torch.empty(n, **f64)
            run(1, rs, torch.cat([tot, cval, torch.zeros(1, **f64)]), dummy, m, prow, dummy)
        g = torch.empty(n * widths[m], **f64)
        consts = torch.cat([tot, cval, (prow.sum() * norm).reshape(1)])
        run(2, rs, consts, (prow * s).contiguous(), m, totals, g)
        grads.append(g.reshape(n, widths[m]))
    if not grad_vars:
        run(2, rs, torch.cat([tot, cval, torch.zeros(1, **f64)]), dummy, -1, totals, dummy)
    return [totals.sum(), *grads]


@torch.library.custom_op("fairret::dcov_product_sum", mutates_args=())
def _dcov_product_sum(xs: List[torch.Tensor], c: float, unbiased: bool, grad_vars: List[int]) -> List[torch.Tensor]:
    """``[T_c (float64 scalar), dT_c/dx_m for m in grad_vars (float64)]``; CPU tensors: dense reference modes."""
    return _forward(xs, c, unbiased, grad_vars, modes_reference)


@_dcov_product_sum.register_kernel("cuda")
def _dcov_product_sum_cuda(xs, c, unbiased, grad_vars):
    launch, why = _usable(xs[0].device)
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

"""The ``cuda`` backend.

Without a GPU: the kernels of ``cuda/dcov_kernels.cuh`` compiled for the CPU (``cuda/emulate_host.h``: each CUDA
thread an OS thread, ``__syncthreads`` a barrier) give the same row sums, totals and gradient partials as the
dense float64 reference, through the same orchestration as on a GPU; the op (``opcheck``, autograd, double
backward, ``torch.compile``) runs on CPU tensors with the kernels' pure-torch contract; the dispatch falls back
with a reason; nvcc compiles the sources when it is present. With a GPU (marked ``gpu``): the real kernels
against the float64 references at the sizes of the issue.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from fairret.ops import CUDA_MIN_N, product_sum, resolve_backend
from fairret.ops import cuda as K
from fairret.ops.reference import product_sum_dense
from fairret.ops.tiled import product_sum_tiled

import cuda_emulation  # tests/cuda_emulation.py (tests/ is on sys.path through conftest.py)

CUDA_DIR = Path(__file__).resolve().parent.parent / "cuda"


# --- the kernels compiled for the CPU ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emulation_lib(tmp_path_factory):
    try:
        return cuda_emulation.build(tmp_path_factory.mktemp("emu"))
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def emulated(emulation_lib):
    return cuda_emulation.launcher(emulation_lib)


CASES = [  # (n, widths of the variables, which variables require grad)
    (4, (1, 1), (0,)),
    (13, (1, 3), (0,)),
    (37, (2, 5), (0, 1)),
    (29, (1, 2, 3), (0,)),
    (23, (1, 1, 2, 4), (0, 2)),
]


@pytest.mark.parametrize("n,widths,grad_vars", CASES)
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("c", [0.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_kernels_equal_dense_reference(emulated, n, widths, grad_vars, unbiased, c, dtype):
    g = torch.Generator().manual_seed(n * 7 + len(widths))
    xs64 = [torch.randn(n, w, generator=g, dtype=torch.float64) for w in widths]
    xs64[-1][: n // 3] = xs64[-1][0].clone()  # ties: coincident rows (zero distances, zero-gradient convention)
    xs = [x.to(dtype) for x in xs64]
    got = K._forward(xs, c, unbiased, grad_vars, emulated, threads=4, tile=3)
    ref_in = [x.clone().requires_grad_(k in grad_vars) for k, x in enumerate(xs64)]
    ref = product_sum_dense(ref_in, c, unbiased)
    ref_grads = torch.autograd.grad(ref, [ref_in[k] for k in grad_vars])
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    scale = max(1.0, abs(ref.item()))
    torch.testing.assert_close(got[0] / scale, ref.detach() / scale, **tol)
    for p, r in zip(got[1:], ref_grads):
        gs = max(1.0, r.abs().max().item())
        torch.testing.assert_close(p / gs, r / gs, **tol)


def test_emulated_kernels_equal_the_torch_contract(emulated):
    """Mode by mode, with the block size and tile the GPU uses (one block of 256 threads, a partial tile)."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(300, w, generator=g, dtype=torch.float64) for w in (1, 3, 2)]
    a = K._forward(xs, 0.5, True, [0, 1], emulated, threads=256)
    b = K._forward(xs, 0.5, True, [0, 1], K.modes_reference, threads=256)
    for u, v in zip(a, b):  # equal up to summation order
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10 * max(1.0, v.abs().max().item()))


# --- the self-check that gates the kernels on first use ------------------------------------------------------------
def test_self_check_passes_through_the_emulated_kernels_with_guard_pages(emulation_lib):
    """The check the kernels must pass on a device, run on the CPU build of the same source with the GPU's block
    size and tiles; every buffer sits before an inaccessible page, so an out-of-bounds read or write crashes the
    (separate) process instead of passing."""
    r = subprocess.run([sys.executable, str(Path(cuda_emulation.__file__)), str(emulation_lib)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(CUDA_DIR.parent)}, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stdout.startswith("verified against the tiled backend on cpu")
    assert "float64" in r.stdout and "float32" in r.stdout


def _mutant(emulated, name):
    """Launchers that are wrong in one way each (the real emulated kernels underneath)."""
    def launch(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        if name == "ignores_unbiased":
            unbiased = 0
        if name == "raises":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if name == "unwritten" and mode == 0:  # leaves the last row sum unwritten
            scratch = out.clone()
            emulated(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, scratch, out2, grid, threads, shared)
            out[:-1] = scratch[:-1]
            return
        emulated(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared)
        if name == "total_off" and mode == 2:
            out[0] *= 1.001
        if name == "last_partial_row" and mode == 2 and gm >= 0:
            out2[-(out2.numel() // n):] = 0.0
        if name == "float32_partials" and mode == 2 and gm >= 0 and X.dtype == torch.float32:
            out2 *= 1.0 + 1e-4

    return launch


@pytest.mark.parametrize("name,expected", [
    ("total_off", r"float64, n = 300, widths \(1, 8\), V-statistic, c = 0: value: relative error 1\.\de-03 > "
                  r"tolerance 1e-09; first differing launch: mode 2 \(fused sweep: block totals and gradient partials\)"
                  r" for variable 0, output"),
    ("last_partial_row", r"float64, n = 300, widths \(1, 8\), V-statistic, c = 0: gradient of variable 0: relative "
                         r"error \d\.\de-0\d > tolerance 1e-09; first differing launch: mode 2 .* gradient partials"),
    ("ignores_unbiased", r"float64, n = 37, widths \(2, 3\), U-statistic, c = 0: value: .*first differing launch: "
                         r"mode 2 \(fused sweep"),  # row sums include a_ii = 0 either way
    ("float32_partials", r"float32, n = 300, widths \(1, 8\), V-statistic, c = 0: gradient of variable 0: relative "
                         r"error 1\.0e-04 > tolerance 1e-05"),
    ("unwritten", r"float64, n = 300, .*: value: relative error nan > tolerance 1e-09; first differing launch: mode 0 "
                  r"\(distance row sums\), output: relative error nan"),
    ("raises", r"float64, n = 300, .*: the launch raised RuntimeError: CUDA error: an illegal memory access"),
])
def test_self_check_refuses_a_wrong_launcher_and_says_where(emulated, name, expected):
    ok, why = K.self_check(_mutant(emulated, name), torch.device("cpu"))
    assert not ok
    assert why.startswith("self-check against the tiled backend failed on cpu: ")
    assert re.search(expected, why), why


MUTANTS = {  # one-line changes to the kernels' source, each a plausible bug
    "ties": ("if (gm >= 0 && agm > 0.0) {", "if (gm >= 0) {"),  # no zero-distance convention: division by 0
    "reduction": ("for (int s = blockDim.x / 2; s > 0; s >>= 1)", "for (int s = blockDim.x / 4; s > 0; s >>= 1)"),
    "diagonal": ("if (unbiased && j == i) continue;", "if (unbiased && j == i + 1) continue;"),
    "partial_tile": ("const int jn = (n - j0) < tile ? (n - j0) : tile;",
                     "const int jn = (n - j0) < tile ? (n - j0 - 1) : tile;"),
    "float32_sqrt": ("{ return sqrtf(v); }", "{ return sqrtf(v) * (1.0f + 3e-5f); }"),
}


@pytest.mark.parametrize("name", [pytest.param(m, marks=[] if m == "ties" else [pytest.mark.slow]) for m in MUTANTS])
def test_self_check_refuses_mutant_kernels(tmp_path, name):
    src = (CUDA_DIR / "dcov_kernels.cuh").read_text()
    old, new = MUTANTS[name]
    assert src.count(old) == 1
    try:
        lib = cuda_emulation.build(tmp_path, src.replace(old, new))
    except FileNotFoundError as err:
        pytest.skip(str(err))
    ok, why = K.self_check(cuda_emulation.launcher(lib), torch.device("cpu"))
    assert not ok and "self-check against the tiled backend failed" in why, why
    if name == "float32_sqrt":
        assert "float32" in why


@pytest.mark.slow
def test_guard_pages_catch_an_out_of_bounds_read(tmp_path):
    """The guard-page run itself can fail: a kernel that reads the centring terms in mode 0, where the caller passes a
    1-element placeholder, crashes it."""
    src = (CUDA_DIR / "dcov_kernels.cuh").read_text()
    old = "if (centred) for (int k = 0; k < d; ++k) rsi[k]"
    assert src.count(old) == 1
    try:
        lib = cuda_emulation.build(tmp_path, src.replace(old, "for (int k = 0; k < d; ++k) rsi[k]"))
    except FileNotFoundError as err:
        pytest.skip(str(err))
    r = subprocess.run([sys.executable, str(Path(cuda_emulation.__file__)), str(lib)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(CUDA_DIR.parent)}, timeout=600)
    assert r.returncode == -11, (r.returncode, r.stdout[-2000:])  # SIGSEGV


def test_self_check_ignores_the_callers_inference_mode_and_autocast(emulated):
    """The first use may come from a metric under inference mode or a loss under autocast (Lightning does both);
    the check must still compute its float64 reference and its gradients, and pass (under inference mode alone the
    reference's gradient fails: its inputs cannot require grad)."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ok, why = K.self_check(emulated, torch.device("cpu"))
    assert ok, why


def test_self_check_that_cannot_run_refuses_the_kernels(monkeypatch, emulated):
    monkeypatch.setattr(K, "product_sum_tiled", lambda *a: (_ for _ in ()).throw(MemoryError("no room")))
    assert K.self_check(emulated, torch.device("cpu")) == (
        False, "self-check against the tiled backend could not run on cpu: MemoryError: no room")


def test_status_builds_and_checks_once_per_device_and_keeps_the_reason(monkeypatch):
    calls = []

    def fake_check(launch, device):
        calls.append(device)
        return (device.index == 0, "verified (fake)" if device.index == 0 else "self-check ... failed (fake)")

    monkeypatch.setattr(K, "_route", lambda: (("nvrtc",), ""))
    monkeypatch.setattr(K, "_build", lambda index: (lambda *a: None, "built with nvrtc"))
    monkeypatch.setattr(K, "_device_index", lambda device: int(device))
    monkeypatch.setattr(K, "self_check", fake_check)
    monkeypatch.setattr(K, "_CHECKED", {})
    assert K.cuda_status(0) == (True, "built with nvrtc; verified (fake)")
    assert K.cuda_status(0) == (True, "built with nvrtc; verified (fake)")
    assert K.cuda_status(1) == (False, "built with nvrtc; self-check ... failed (fake)")
    assert K.cuda_status(1)[0] is False
    assert [d.index for d in calls] == [0, 1]
    x = torch.randn(8, 1, dtype=torch.float64)
    monkeypatch.setattr(K, "_usable", lambda device: (None, "built with nvrtc; self-check ... failed (fake)"))
    with pytest.raises(RuntimeError, match=r"fairret's CUDA kernels cannot run: built with nvrtc; self-check"):
        K._dcov_product_sum_cuda([x, x], 0.0, False, [])


def test_a_failed_build_is_reported_and_not_checked(monkeypatch):
    monkeypatch.setattr(K, "_route", lambda: (("nvrtc", "nvcc"), ""))
    monkeypatch.setattr(K, "_BUILT", {})
    monkeypatch.setattr(K, "_CHECKED", {})
    monkeypatch.setattr(K, "_device_index", lambda device: 0)

    def broken(*args):
        raise RuntimeError("NVRTC compilation failed: error: identifier \"x\" is undefined\nmore")

    monkeypatch.setattr(K, "_build_nvrtc", broken)
    monkeypatch.setattr(K, "_build_nvcc", broken)
    monkeypatch.setattr(K, "self_check", lambda *a: pytest.fail("a kernel that did not build was checked"))
    ok, why = K.cuda_status()
    assert not ok
    assert why == ('the kernels failed to build (nvrtc: RuntimeError: NVRTC compilation failed: error: identifier "x" '
                   'is undefined; nvcc: RuntimeError: NVRTC compilation failed: error: identifier "x" is undefined)')


# --- the op on CPU tensors (the kernels' contract in torch) ----------------------------------------------------------
def test_op_values_gradients_and_double_backward():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 1, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(24, 3, generator=g, dtype=torch.float64)
    for unbiased in (False, True):
        torch.testing.assert_close(K.product_sum_cuda([x, y], 0.0, unbiased), product_sum_dense([x, y], 0.0, unbiased))
        assert torch.autograd.gradcheck(lambda t: K.product_sum_cuda([t, y], 0.0, unbiased), (x,))
        assert torch.autograd.gradgradcheck(lambda t: K.product_sum_cuda([t, y], 0.0, unbiased), (x,))
    z = torch.randn(24, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: K.product_sum_cuda([a, y, b], 1.0, True), (x, z))


def test_opcheck_and_compile():
    from torch.library import opcheck

    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 1, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    for args in (([x, y], 0.0, True, [0]), ([x, y, y.clone()], 1.0, False, [0]), ([x.detach(), y], 0.0, False, [])):
        opcheck(torch.ops.fairret.dcov_product_sum.default, args)
    f = torch.compile(lambda a, b: K.product_sum_cuda([a, b], 0.0, False), fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x, y), product_sum_dense([x, y], 0.0, False))


def test_kernel_limits_are_explained():
    x = torch.randn(10, 1)
    assert K.kernel_limits([x] * 9)[1].startswith("9 variables")
    assert "columns in all" in K.kernel_limits([x, torch.randn(10, 200)])[1]
    assert "differentiated variable with 20 columns" in K.kernel_limits([torch.randn(10, 20), x], [0])[1]
    assert "dtype torch.float16" in K.kernel_limits([x.half(), x.half()])[1]
    assert "n = 3 rows" in K.kernel_limits([x[:3], x[:3]])[1]
    with pytest.raises(ValueError, match=r"The `cuda` backend cannot take these inputs: 9 variables"):
        K.product_sum_cuda([x.double()] * 9, 1.0, False)


def test_tile_fits_shared_memory():
    for tsize in (4, 8):
        for p, d in ((1, 2), (9, 2), (65, 3), (128, 8)):
            tile = K.choose_tile(tsize, p, d)
            assert K.shared_bytes(tsize, tile, p, d, K.THREADS) <= K.SHARED_LIMIT
            assert tile == K.MAX_TILE or K.shared_bytes(tsize, 2 * tile, p, d, K.THREADS) > K.SHARED_LIMIT


# --- dispatch and fallback --------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_without_cuda_the_dispatch_falls_back_and_says_why():
    ok, why = K.cuda_status()
    assert not ok and "CUDA is not available" in why
    x = torch.randn(CUDA_MIN_N + 10, 1)
    assert resolve_backend("auto", [x, torch.randn(CUDA_MIN_N + 10, 3)]) in ("tiled", "sorted")
    with pytest.raises(ValueError, match="The `cuda` backend needs CUDA tensors"):
        product_sum([x, x], 0.0, False, backend="cuda")


def test_build_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FAIRRET_CUDA_BUILD", "off")
    monkeypatch.setattr(K, "_BUILT", {})
    assert K.cuda_status() == (False, "disabled by FAIRRET_CUDA_BUILD=off")


def test_sources_are_found_and_shipped():
    assert K.source_dir().samefile(CUDA_DIR) or (K.source_dir() / "dcov_kernels.cuh").is_file()
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    setup = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    assert "fairret._cuda_src" in setup and "cuda" in setup and "setuptools" in text


# --- nvcc compile checks (when nvcc is present) -----------------------------------------------------------------------
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernels_compile_with_nvcc(tmp_path, arch):
    """What NVRTC compiles at run time: the self-contained .cuh."""
    out = tmp_path / "k.ptx"
    r = subprocess.run([NVCC, "-x", "cu", "--ptx", f"-arch={arch}", "-Werror", "all-warnings",
                        str(CUDA_DIR / "dcov_kernels.cuh"), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ptx = out.read_text()
    assert ".entry fdc_kernel_f32" in ptx and ".entry fdc_kernel_f64" in ptx


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_extension_compiles_with_nvcc_against_torch_headers(tmp_path):
    """The nvcc fallback route: the torch extension source, compiled (not linked) against this torch's headers.

    A CPU build of torch lacks one generated header of c10/cuda (cuda_cmake_macros.h); an empty stand-in is
    written for the check, as a CUDA build of torch provides the real one.
    """
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    inc = [f"-I{tmp_path / 'stub'}"] + [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd = [NVCC, "-c", str(CUDA_DIR / "dcov_ext.cu"), "-o", str(tmp_path / "ext.o"), "-std=c++20", "-arch=sm_90",
           "-DTORCH_EXTENSION_NAME=fairret_dcov_ext", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", *inc]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr[-3000:]


# --- on a GPU ---------------------------------------------------------------------------------------------------------
gpu = pytest.mark.gpu


@gpu
def test_gpu_kernels_build_and_pass_their_self_check():
    ok, why = K.cuda_status()
    assert ok, why
    assert why.startswith("built with nvrtc") or why.startswith("built with nvcc"), why
    assert "verified against the tiled backend on cuda:" in why, why
    print(why)  # the check's time and errors, for the log of benchmarks/gpu_check.sh


@gpu
def test_gpu_auto_uses_the_verified_kernels():
    x = torch.randn(CUDA_MIN_N + 3, 1, device="cuda", requires_grad=True)
    y = torch.randn(CUDA_MIN_N + 3, 8, device="cuda")
    assert resolve_backend("auto", [x, y]) == "cuda"


@gpu
def test_gpu_a_wrong_launcher_is_refused_auto_falls_back_and_cuda_raises(monkeypatch):
    """The gate on the device itself: the real kernels with their block totals off by 0.1%."""
    launch, how = K._build(torch.cuda.current_device())
    assert launch is not None, how

    def mutant(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        launch(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared)
        if mode == 2:
            out.mul_(1.001)

    monkeypatch.setattr(K, "_build", lambda index: (mutant, "built with a test mutant"))
    monkeypatch.setattr(K, "_CHECKED", {})
    ok, why = K.cuda_status()
    assert not ok
    assert re.search(r"self-check against the tiled backend failed on cuda:\d+: float64, n = 300, .*: value: "
                     r"relative error 1\.\de-03 > tolerance 1e-09; first differing launch: mode 2", why), why
    x = torch.randn(CUDA_MIN_N + 3, 1, device="cuda", requires_grad=True)
    y = torch.randn(CUDA_MIN_N + 3, 8, device="cuda")
    assert resolve_backend("auto", [x, y]) in ("tiled", "sorted")
    with pytest.raises(ValueError, match=r"The `cuda` backend cannot run: built with a test mutant; self-check"):
        product_sum([x, y], 0.0, False, backend="cuda")
    with pytest.raises(RuntimeError, match=r"fairret's CUDA kernels cannot run: built with a test mutant; self-check"):
        K.product_sum_cuda([x, y], 0.0, False)


@gpu
@pytest.mark.parametrize("n", [4, 5, 257, 1000, 4096])
@pytest.mark.parametrize("widths", [(1, 8), (1, 1), (2, 3), (1, 64), (1, 2, 3)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gpu_float64_equals_dense(n, widths, unbiased):
    g = torch.Generator().manual_seed(n)
    xs = [torch.randn(n, w, generator=g, dtype=torch.float64) for w in widths]
    c = 1.0 if len(widths) > 2 else 0.0
    ref_in = [x.cuda().requires_grad_(k == 0) for k, x in enumerate(xs)]
    ref = product_sum_dense(ref_in, c, unbiased)
    (ref_g,) = torch.autograd.grad(ref, ref_in[0])
    got_in = [x.cuda().requires_grad_(k == 0) for k, x in enumerate(xs)]
    got = product_sum(got_in, c, unbiased, backend="cuda")
    (got_g,) = torch.autograd.grad(got, got_in[0])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * max(1.0, ref.abs().item()))
    torch.testing.assert_close(got_g, ref_g, rtol=1e-10, atol=1e-10 * max(1.0, ref_g.abs().max().item()))


@gpu
@pytest.mark.parametrize("n", [16_384, 65_536, 262_144])
def test_gpu_float32_equals_float64_reference(n):
    """float32 inputs against a float64 reference: dense where it fits, else the tiled backend in float64 (itself
    tested against dense)."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = torch.rand(n, 8, generator=g, dtype=torch.float64)
    ref_in = x.cuda().requires_grad_()
    ref = product_sum_tiled([ref_in, z.cuda()], 0.0, False, 2048)
    (ref_g,) = torch.autograd.grad(ref, ref_in)
    got_in = x.float().cuda().requires_grad_()
    got = product_sum([got_in, z.float().cuda()], 0.0, False, backend="cuda")
    (got_g,) = torch.autograd.grad(got, got_in)
    assert abs(got.double().item() - ref.item()) <= 1e-5 * abs(ref.item())
    rel = (got_g.double() - ref_g).norm() / ref_g.norm()
    assert rel.item() <= 1e-5


@gpu
def test_gpu_opcheck_compile_and_streams():
    from torch.library import opcheck

    x = torch.randn(300, 1, device="cuda", dtype=torch.float64, requires_grad=True)
    y = torch.randn(300, 4, device="cuda", dtype=torch.float64)
    opcheck(torch.ops.fairret.dcov_product_sum.default, ([x, y], 0.0, True, [0]))
    f = torch.compile(lambda a, b: K.product_sum_cuda([a, b], 0.0, True), fullgraph=True)
    torch.testing.assert_close(f(x, y), product_sum_dense([x, y], 0.0, True))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        v = K.product_sum_cuda([x, y], 0.0, True)
    s.synchronize()
    torch.testing.assert_close(v, product_sum_dense([x, y], 0.0, True))
    assert torch.autograd.gradgradcheck(lambda t: K.product_sum_cuda([t, y[:40]], 0.0, True), (x[:40].detach()
                                        .requires_grad_(),))

"""The kernels of ``cuda/dcov_kernels.cuh`` compiled for the CPU (``cuda/emulate_host.h``: each CUDA thread an OS
thread, ``__syncthreads`` a barrier), as a launcher with the signature of :mod:`fairret.ops.cuda`'s.

Used by ``tests/test_cuda_kernels.py``; also a script: ``python tests/cuda_emulation.py LIB`` (or ``--build DIR``
to compile it into ``DIR`` first) runs
:func:`fairret.ops.cuda.self_check` through the library ``LIB`` with every buffer the kernels get placed at the
end of its own memory mapping, followed by an inaccessible page (a guard page): a read or write past the end of
any buffer kills the process with SIGSEGV instead of passing silently. Prints the check's result; exits 0 when it
passed.
"""
from __future__ import annotations

import ctypes
import mmap
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

CUDA_DIR = Path(__file__).resolve().parent.parent / "cuda"
SOURCES = ("emulate_host.cpp", "emulate_host.h", "dcov_kernels.cuh")


def build(out_dir: Path, cuh_text: Optional[str] = None) -> Path:
    """Compile the emulation into ``out_dir/libfdc_emulate.so``; ``cuh_text`` replaces the kernels' source (for
    mutants). Raises ``FileNotFoundError`` without g++."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ is needed to build the CPU emulation of the kernels")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:  # the .cpp includes the .cuh from its own folder
        (out_dir / name).write_text((CUDA_DIR / name).read_text())
    if cuh_text is not None:
        (out_dir / "dcov_kernels.cuh").write_text(cuh_text)
    lib = out_dir / "libfdc_emulate.so"
    subprocess.run([gxx, "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", str(out_dir / "emulate_host.cpp"),
                    "-o", str(lib)], check=True, capture_output=True)
    return lib


_PAGE = mmap.PAGESIZE


class _Guarded:
    """A copy of a tensor whose last byte is followed by a page with no access (PROT_NONE)."""

    def __init__(self, t: torch.Tensor):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        nbytes = t.numel() * t.element_size()
        body = -(-max(nbytes, 1) // _PAGE) * _PAGE
        self.mm = mmap.mmap(-1, body + _PAGE)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        base = ctypes.addressof(self._anchor)
        if libc.mprotect(base + body, _PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
        self.tensor = torch.frombuffer(self.mm, dtype=t.dtype, count=t.numel(), offset=body - nbytes)
        self.tensor.copy_(t.reshape(-1))


def launcher(lib: Path, guard: bool = False) -> Callable[..., None]:
    """The emulated kernels as a launcher; with ``guard``, every buffer is copied behind a guard page."""
    so = ctypes.CDLL(str(lib))
    P, I = ctypes.c_void_p, ctypes.c_int
    for name in ("fdc_emulate_f32", "fdc_emulate_f64"):
        getattr(so, name).argtypes = [I, I, P, I, I, I, P, P, P, P, I, I, I, I, P, P]

    def launch(X, n, P_, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2, grid, threads, shared):
        assert so.fdc_emulate_shared_fits(X.element_size(), tile, P_, d, threads)
        bufs = [X, off, rs, consts, pr, out, out2]
        held = [_Guarded(b) for b in bufs] if guard else None
        if guard:
            bufs = [h.tensor for h in held]
        fn = so.fdc_emulate_f32 if X.dtype == torch.float32 else so.fdc_emulate_f64
        gX, goff, grs, gconsts, gpr, gout, gout2 = bufs
        fn(grid, threads, gX.data_ptr(), n, P_, d, goff.data_ptr(), grs.data_ptr(), gconsts.data_ptr(),
           gpr.data_ptr(), unbiased, gm, mode, tile, gout.data_ptr(), gout2.data_ptr())
        if guard:
            out.copy_(gout.reshape(out.shape))
            out2.copy_(gout2.reshape(out2.shape))

    return launch


if __name__ == "__main__":
    from fairret.ops import cuda as K

    lib = build(Path(sys.argv[2])) if sys.argv[1] == "--build" else Path(sys.argv[1])
    ok, report = K.self_check(launcher(lib, guard=True), torch.device("cpu"))
    print(report)
    sys.exit(0 if ok else 1)

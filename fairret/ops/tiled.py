r"""Tiled O(n·tile)-memory evaluation of the distance-covariance core and its gradient.

Computes :math:`T_c = \sum_{(i,j)} \prod_k (c - \hat A^{(k)}_{ij})` (see :mod:`fairret.ops.reference`) by sweeping
over square tiles of the pair matrix (upper triangle only; off-diagonal tiles count twice), never holding an
``n x n`` matrix:

1. a first sweep gives each variable's distance row sums (for 1-D variables exactly in O(n log n) by sorting and
   prefix sums: :math:`a_{(i)\cdot} = (2i - n) x_{(i)} + S_n - 2 S_i`);
2. a second sweep evaluates the centred tiles, accumulating :math:`T_c` and, in the same sweep, the
   per-row gradient partials :math:`2 \sum_j G_{kj} u_{kj}` with :math:`G = -\hat P^{(m)}`, the centred product of
   the other variables' factors (centring moves from one factor to the other:
   :math:`\sum \hat A P = \sum a \hat P`). For more than two variables the row sums of :math:`P^{(m)}` need one
   more sweep.

Backward returns the saved partials (O(n) memory). When a graph of the gradient is requested
(``create_graph=True``, e.g. for Hessian-vector products), backward recomputes the gradient with differentiable
torch operations instead, so second derivatives are exact (that graph holds O(n²) memory). That backward,
:func:`backward_grads`, is the one of every backend (``sorted`` and ``cuda`` save their own partials).
Inputs are centred on their column means; tiles are evaluated in the inputs' dtype and every sum is accumulated
in float64 (float32 inputs: float32 tiles, float64 accumulation; float64 inputs: float64 throughout).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ._common import _Prep, _row_sums as _row_sums_sorted, centring_divisors, p_rows_closed_form, sign_gradient

__all__ = ["product_sum_tiled", "DEFAULT_TILE", "differentiable_grads", "backward_grads"]

DEFAULT_TILE = 512


#: Squared distances below this fraction of ``|x_i|^2 + |z_j|^2`` are recomputed coordinate by coordinate.
_NEAR = 1e-4


def _dist(x: torch.Tensor, z: torch.Tensor, nx: Optional[torch.Tensor] = None,
          nz: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Euclidean distances of a tile.

    One column: ``|x_i - z_j|``. Several: the product form ``|x|^2 + |z|^2 - 2 x.z`` (one matrix product), with
    the entries whose squared distance is small against the norms (where rounding would dominate, e.g. near
    coincident rows) recomputed exactly from coordinate differences. Zero distances have zero gradient.
    """
    if x.shape[1] == 1:
        return (x - z.T).abs()
    nx = (x * x).sum(1) if nx is None else nx
    nz = (z * z).sum(1) if nz is None else nz
    scale = nx.unsqueeze(1) + nz.unsqueeze(0)
    sq = torch.addmm(scale, x, z.T, alpha=-2.0)
    near = (sq != 0) & (sq <= _NEAR * scale)
    if bool(near.any()):
        ii, jj = near.nonzero(as_tuple=True)
        diff = x[ii] - z[jj]
        sq = sq.index_put((ii, jj), (diff * diff).sum(1))
    if not torch.is_grad_enabled():
        return sq.clamp_min_(0.0).sqrt_()
    pos = ~(sq <= 0)  # NaN stays NaN (a NaN coordinate must not read as a zero distance)
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _malloc_trim():
    """glibc's ``malloc_trim``, or a no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        return lambda: None


_TRIM = _malloc_trim()
_TRIM_EVERY = 8


def _blocks(n: int, tile: int):
    """Tiles of the upper triangle. Every few tiles freed memory is handed back to the system: glibc otherwise
    raises its mmap threshold after the first tile-sized frees and keeps the churn of tile temporaries in a heap
    that only grows (over 1 GB of resident memory at n = 16,384 instead of ~30 MB)."""
    count = 0
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(i0, n, tile):
            yield i0, i1, j0, min(j0 + tile, n)
            count += 1
            if count % _TRIM_EVERY == 0:
                _TRIM()


class _RowAcc:
    """Per-row accumulator over tiles: in place (O(n) memory) when no graph is being built, otherwise a list of
    contributions summed at the end (out-of-place, so differentiable)."""

    def __init__(self, n: int, tile: int, device: torch.device, width: Optional[int] = None):
        self.tile = tile
        self.graph = torch.is_grad_enabled()
        shape = (n,) if width is None else (n, width)
        if self.graph:
            self.parts: List[List[torch.Tensor]] = [[] for _ in range(0, n, tile)]
        else:
            self.acc = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, start: int, vec: torch.Tensor) -> None:
        if self.graph:
            self.parts[start // self.tile].append(vec.to(torch.float64))
        else:
            self.acc[start:start + vec.shape[0]] += vec.to(torch.float64)

    def result(self) -> torch.Tensor:
        if self.graph:
            return torch.cat([torch.stack(p).sum(0) for p in self.parts])
        return self.acc


def _row_sums(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Distance row sums in float64."""
    n = x.shape[0]
    if x.shape[1] == 1:
        return _row_sums_sorted(x[:, 0].to(torch.float64))
    nx = (x * x).sum(1)
    acc = _RowAcc(n, tile, x.device)
    for i0, i1, j0, j1 in _blocks(n, tile):
        a = _dist(x[i0:i1], x[j0:j1], nx[i0:i1], nx[j0:j1])
        acc.add(i0, a.sum(1))
        if j0 != i0:
            acc.add(j0, a.sum(0))
    return acc.result()


class _Centring:
    """Centring constants of one variable: ``A_ij = a_ij - (r_i + r_j) * s + R * s2``."""

    def __init__(self, r: torch.Tensor, n: int, unbiased: bool, dtype: torch.dtype):
        rd, td = centring_divisors(n, unbiased)
        s, tot = 1.0 / rd, r.sum() / td
        self.r = (r * s).to(dtype)  # pre-scaled row terms, in the tiles' dtype
        self.s = 1.0
        self.tot = tot.to(dtype)

    def apply(self, a: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        return a - (self.r[i0:i1, None] - self.tot) - self.r[None, j0:j1]


def _prepare(xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Centre every variable on its column means (computed in float64); tiles keep the input dtype (float32 tiles
    with float64 accumulation, or float64 throughout)."""
    return [x - x.detach().to(torch.float64).mean(0, keepdim=True).to(x.dtype) for x in xs]


def _sweep(xs: List[torch.Tensor], c: float, unbiased: bool, tile: int, grad_vars: Sequence[int],
           p_rows: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One pass over the tiles: ``T_c`` and, for the variables in ``grad_vars``, ``dT/dx``.

    ``p_rows[m]`` holds the row sums of ``P^(m)`` (over ``j``, or ``j != i`` for U); needed for the gradient.
    Written with out-of-place operations only, so that it is differentiable when run with grad enabled.
    """
    n = xs[0].shape[0]
    dt = xs[0].dtype
    cents = [_Centring(_row_sums(x, tile), n, unbiased, dt) for x in xs]
    norms = [(x * x).sum(1) if x.shape[1] > 1 else None for x in xs]
    total = torch.zeros((), dtype=torch.float64, device=xs[0].device)
    grads = {m: _RowAcc(n, tile, xs[0].device, xs[m].shape[1]) for m in grad_vars}
    rd, td = centring_divisors(n, unbiased)
    gc = {m: ((p_rows[m] / rd).to(dt), (p_rows[m].sum() / td).to(dt)) for m in grad_vars}
    for i0, i1, j0, j1 in _blocks(n, tile):
        diag = i0 == j0
        dists = [_dist(x[i0:i1], x[j0:j1], None if nn is None else nn[i0:i1], None if nn is None else nn[j0:j1])
                 for x, nn in zip(xs, norms)]
        factors = [c - ct.apply(a, i0, i1, j0, j1) for a, ct in zip(dists, cents)]
        prod = factors[0]
        for f in factors[1:]:
            prod = prod * f
        mask = None
        if unbiased and diag:
            mask = torch.eye(i1 - i0, dtype=torch.bool, device=prod.device)
            prod = prod.masked_fill(mask, 0.0)
        block = prod.sum().to(torch.float64)
        total = total + (block if diag else 2.0 * block)
        for m in grad_vars:
            others = [f for k, f in enumerate(factors) if k != m]
            p = others[0] if others else torch.ones_like(prod)
            for f in others[1:]:
                p = p * f
            pr, tot = gc[m]
            g = (pr[i0:i1, None] - tot) + pr[None, j0:j1] - p  # dT/da_ij = -centred(P)_ij
            if mask is not None:
                g = g.masked_fill(mask, 0.0)
            x = xs[m]
            if x.shape[1] == 1:  # u_ij = sign(x_i - x_j); the transposed tile has the opposite sign
                gs = g * torch.sign(x[i0:i1] - x[j0:j1].T)
                grads[m].add(i0, 2.0 * gs.sum(1, keepdim=True))
                if not diag:
                    grads[m].add(j0, -2.0 * gs.sum(0).unsqueeze(1))
                continue
            a = dists[m]
            pos = a > 0
            w = torch.where(pos, g / torch.where(pos, a, torch.ones_like(a)), torch.zeros_like(a))
            gi = 2.0 * (x[i0:i1] * w.sum(1, keepdim=True) - w @ x[j0:j1])
            grads[m].add(i0, gi)
            if not diag:
                grads[m].add(j0, 2.0 * (x[j0:j1] * w.sum(0).unsqueeze(1) - w.T @ x[i0:i1]))
    return total, [grads[m].result() for m in grad_vars]


def _p_row_sums(xs: List[torch.Tensor], c: float, unbiased: bool, tile: int, grad_vars: Sequence[int]):
    """Row sums of ``P^(m) = prod_{k != m} (c - A^(k))`` (a sweep, or closed form for two variables)."""
    n = xs[0].shape[0]
    closed = p_rows_closed_form(n, len(xs), c, unbiased, xs[0].device)
    if closed is not None:
        return {m: closed for m in grad_vars}
    cents = [_Centring(_row_sums(x, tile), n, unbiased, xs[0].dtype) for x in xs]
    parts = {m: _RowAcc(n, tile, xs[0].device) for m in grad_vars}
    for i0, i1, j0, j1 in _blocks(n, tile):
        factors = [c - ct.apply(_dist(x[i0:i1], x[j0:j1]), i0, i1, j0, j1) for x, ct in zip(xs, cents)]
        for m in grad_vars:
            others = [f for k, f in enumerate(factors) if k != m]
            p = others[0]
            for f in others[1:]:
                p = p * f
            if unbiased and i0 == j0:
                p = p.masked_fill(torch.eye(i1 - i0, dtype=torch.bool, device=p.device), 0.0)
            parts[m].add(i0, p.sum(1))
            if j0 != i0:
                parts[m].add(j0, p.sum(0))
    return {m: parts[m].result() for m in grad_vars}


def _fast_pair(x: torch.Tensor, y: torch.Tensor, unbiased: bool, tile: int, want_grad: bool):
    """``T_0`` of a 1-D ``x`` and a data variable ``y`` in one sweep over ``y``'s distances, and ``dT_0/dx``.

    Centring moves to ``x``'s side (``sum A B = sum A b``, and likewise off the diagonal for U), whose row sums
    come from a sort; the same sweep collects ``b``'s row sums and ``sum_j b_kj sign(x_k - x_j)``, from which the
    gradient ``2 sum_j B_kj sign(x_k - x_j)`` follows with ranks and prefix sums of ``x`` (as in the sorted
    backend).
    """
    n = x.shape[0]
    dt = x.dtype
    cx = _Centring(_row_sums(x, tile), n, unbiased, dt)
    ny = (y * y).sum(1) if y.shape[1] > 1 else None
    brow = _RowAcc(n, tile, x.device)
    tb = _RowAcc(n, tile, x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i0, i1, j0, j1 in _blocks(n, tile):
        diag = i0 == j0
        d = x[i0:i1] - x[j0:j1].T
        ahat = cx.apply(d.abs(), i0, i1, j0, j1)
        if unbiased and diag:
            ahat = ahat.masked_fill(torch.eye(i1 - i0, dtype=torch.bool, device=x.device), 0.0)
        b = _dist(y[i0:i1], y[j0:j1], None if ny is None else ny[i0:i1], None if ny is None else ny[j0:j1])
        blk = (ahat * b).sum().to(torch.float64)
        total = total + (blk if diag else 2.0 * blk)
        if want_grad:
            bs = b * torch.sign(d)
            brow.add(i0, b.sum(1))
            tb.add(i0, bs.sum(1))
            if not diag:
                brow.add(j0, b.sum(0))
                tb.add(j0, -bs.sum(0))
    if not want_grad:
        return total, None
    g = sign_gradient(_Prep(x[:, 0].to(torch.float64), None), tb.result(), brow.result(), unbiased)
    return total, g.unsqueeze(1)


def differentiable_grads(xs: Sequence[torch.Tensor], c: float, unbiased: bool, tile: int,
                         grad_vars: Sequence[int]) -> List[torch.Tensor]:
    """``dT_c/dx`` for the variables in ``grad_vars``, computed with differentiable torch operations (the route
    of every backend's backward when a graph of the gradient is requested)."""
    xp = _prepare(xs)
    p_rows = _p_row_sums(xp, c, unbiased, tile, grad_vars)
    return _sweep(xp, c, unbiased, tile, grad_vars, p_rows)[1]


def backward_grads(grad_out: torch.Tensor, xs: Sequence[torch.Tensor], partials: Sequence[torch.Tensor], c: float,
                   unbiased: bool, grad_vars: Sequence[int], tile: int = DEFAULT_TILE
                   ) -> List[Optional[torch.Tensor]]:
    """The backward of every backend's ``T_c``: for each variable, ``grad_out * dT_c/dx`` in its dtype (None for
    those not in ``grad_vars``).

    ``partials`` are the gradients the forward saved (one ``(n, p_m)`` tensor per variable in ``grad_vars``).
    When a graph of the gradient is requested (``create_graph=True``, grad mode is on inside backward) they are
    recomputed by :func:`differentiable_grads` instead, so second derivatives are exact.
    """
    if torch.is_grad_enabled():
        partials = differentiable_grads(xs, c, unbiased, tile, grad_vars)
    out: List[Optional[torch.Tensor]] = [None] * len(xs)
    for m, g in zip(grad_vars, partials):
        out[m] = (grad_out * g).to(xs[m].dtype)
    return out


class _ProductSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: float, unbiased: bool, tile: int, *xs: torch.Tensor) -> torch.Tensor:
        grad_vars = [k for k, x in enumerate(xs) if x.requires_grad]
        with torch.no_grad():
            xp = _prepare(xs)
            fast = None
            if len(xs) == 2 and c == 0.0:
                if xs[0].shape[1] == 1 and not xs[1].requires_grad:
                    fast = 0
                elif xs[1].shape[1] == 1 and not xs[0].requires_grad:
                    fast = 1
            if fast is not None:
                total, g = _fast_pair(xp[fast], xp[1 - fast], unbiased, tile, bool(grad_vars))
                grads = [g] if grad_vars else []
            else:
                p_rows = _p_row_sums(xp, c, unbiased, tile, grad_vars) if grad_vars else None
                total, grads = _sweep(xp, c, unbiased, tile, grad_vars, p_rows)
        ctx.c, ctx.unbiased, ctx.tile, ctx.grad_vars = c, unbiased, tile, grad_vars
        ctx.save_for_backward(*xs, *grads)
        return total.to(xs[0].dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        saved = ctx.saved_tensors
        d = len(saved) - len(ctx.grad_vars)
        xs, grads = saved[:d], saved[d:]
        return (None, None, None, *backward_grads(grad_out, xs, grads, ctx.c, ctx.unbiased, ctx.grad_vars, ctx.tile))


def product_sum_tiled(xs: Sequence[torch.Tensor], c: float, unbiased: bool, tile: int = DEFAULT_TILE
                      ) -> torch.Tensor:
    r""":math:`T_c` like :func:`fairret.ops.reference.product_sum_dense`, in O(n·tile) memory."""
    return _ProductSum.apply(float(c), bool(unbiased), int(tile), *xs)

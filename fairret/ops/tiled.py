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

Threads (CPU): the tiles of a sweep are cut into :data:`CHAINS` chains of about equal work, run by up to
:func:`torch.get_num_threads` Python threads whose ops are single-threaded (:mod:`fairret._threads`: no barrier
across threads after every op, which is what makes intra-op parallelism collapse on a busy machine). Each chain
writes its tile temporaries into buffers allocated once per chain (no allocation, no page faults per tile) and
accumulates its own row sums; the chains are added in order at the end. The split does not depend on the number
of threads, so the values are bitwise identical for every :func:`torch.set_num_threads`.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .._threads import run_parallel, single_threaded, worker_count
from ._common import _Prep, _row_sums as _row_sums_sorted, centring_divisors, p_rows_closed_form, sign_gradient

__all__ = ["product_sum_tiled", "DEFAULT_TILE", "CHAINS", "differentiable_grads", "backward_grads"]

DEFAULT_TILE = 512

#: Chains of tiles per sweep: the unit of work of a thread, and the order in which partial sums are added.
#: Fixed (not the thread count), so that results do not depend on the threads; up to this many threads help.
CHAINS = 16

#: Squared distances below this fraction of ``|x_i|^2 + |z_j|^2`` are recomputed coordinate by coordinate.
_NEAR = 1e-4

Tile = Tuple[int, int, int, int]


class _Scratch:
    """One thread's tile-sized buffers, allocated on first use and reused for every tile it evaluates."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bufs: Dict[str, torch.Tensor] = {}

    def get(self, key: str, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < h * w or buf.dtype != dtype:
            buf = self.bufs[key] = torch.empty(max(h * w, 1), dtype=dtype, device=self.device)
        return buf[:h * w].view(h, w)


class _Work:
    """What a tile's evaluation writes to: scratch buffers and one chain's accumulators.

    Without grad mode every tile-sized temporary goes into a scratch buffer (``out(key, ...)``; ``inplace(t)``
    lets an op overwrite its input) and per-row sums are added in place into float64 vectors over the chain's
    rows ``lo..n``. With grad mode on (the differentiable recomputation) ops run out of place (``out`` and
    ``inplace`` give None) and per-row contributions are kept and added at the end, so autograd sees every step.
    """

    def __init__(self, n: int, lo: int, device: torch.device, widths: Dict[str, Optional[int]],
                 scratch: Optional[_Scratch]):
        self.graph = scratch is None
        self.n, self.lo, self.device, self.scratch = n, lo, device, scratch
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.widths = widths
        self.rows: Dict[str, torch.Tensor] = {}
        self.parts: Dict[str, List[Tuple[int, torch.Tensor]]] = {name: [] for name in widths}
        if not self.graph:
            for name, width in widths.items():
                shape = (n - lo,) if width is None else (n - lo, width)
                self.rows[name] = torch.zeros(shape, dtype=torch.float64, device=device)

    def out(self, key: str, h: int, w: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
        return None if self.scratch is None else self.scratch.get(key, h, w, dtype)

    def inplace(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.graph else t

    def zero_diagonal(self, t: torch.Tensor) -> torch.Tensor:
        if self.graph:
            return t.masked_fill(torch.eye(t.shape[0], dtype=torch.bool, device=t.device), 0.0)
        return t.fill_diagonal_(0.0)

    def add_total(self, value: torch.Tensor) -> None:
        self.total = self.total + value.to(torch.float64)

    def add_rows(self, name: str, start: int, vec: torch.Tensor) -> None:
        if self.graph:
            self.parts[name].append((start, vec.to(torch.float64)))
        else:
            self.rows[name][start - self.lo:start - self.lo + vec.shape[0]] += vec

    def add_into(self, name: str, acc: torch.Tensor) -> torch.Tensor:
        """``acc`` (rows ``0..n``) plus this chain's per-row sums."""
        if not self.graph:
            acc[self.lo:] += self.rows[name]
            return acc
        for start, vec in self.parts[name]:
            pad = [0, 0] * (vec.ndim - 1) + [start, self.n - start - vec.shape[0]]
            acc = acc + torch.nn.functional.pad(vec, pad)
        return acc


def _chains(n: int, tile: int) -> List[List[Tile]]:
    """The upper triangle's tiles in row-major order, cut into at most :data:`CHAINS` runs of about equal area."""
    tiles = [(i0, min(i0 + tile, n), j0, min(j0 + tile, n)) for i0 in range(0, n, tile) for j0 in range(i0, n, tile)]
    areas = [(i1 - i0) * (j1 - j0) for i0, i1, j0, j1 in tiles]
    total, k = sum(areas), min(CHAINS, len(tiles))
    out: List[List[Tile]] = [[] for _ in range(k)]
    done = 0
    for t, a in zip(tiles, areas):
        out[min(k - 1, (done * k) // total)].append(t)
        done += a
    return [c for c in out if c]


def _sweep_tiles(n: int, tile: int, device: torch.device, widths: Dict[str, Optional[int]],
                 body: Callable[[_Work, Tile], None]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run ``body(work, tile)`` over every tile of the upper triangle, chain by chain, and add up the chains'
    totals and per-row sums in chain order (float64). Without grad mode on CPU the chains run in as many threads
    as :func:`~fairret._threads.worker_count` allows; with grad mode (a graph is being built) they run in turn in
    the calling thread."""
    chains = _chains(n, tile)
    graph = torch.is_grad_enabled()
    local = threading.local()

    def run(chain: List[Tile]) -> _Work:
        scratch = None
        if not graph:
            scratch = getattr(local, "scratch", None)
            if scratch is None:
                scratch = local.scratch = _Scratch(device)
        work = _Work(n, chain[0][0], device, widths, scratch)
        for t in chain:
            body(work, t)
        return work

    if graph:
        works = [run(c) for c in chains]
    else:
        workers = worker_count(len(chains)) if device.type == "cpu" else 1
        works = run_parallel([functools.partial(run, c) for c in chains], workers)
    total = works[0].total
    for w in works[1:]:
        total = total + w.total
    rows = {}
    for name, width in widths.items():
        acc = torch.zeros((n,) if width is None else (n, width), dtype=torch.float64, device=device)
        for w in works:
            acc = w.add_into(name, acc)
        rows[name] = acc
    return total, rows


def _dist(work: _Work, key: str, x: torch.Tensor, z: torch.Tensor, nx: Optional[torch.Tensor],
          nz: Optional[torch.Tensor]) -> torch.Tensor:
    """Euclidean distances of a tile (into the scratch buffer ``key``).

    One column: ``|x_i - z_j|``. Several: the product form ``|x|^2 + |z|^2 - 2 x.z`` (one matrix product), with
    the entries whose squared distance is small against the norms (where rounding would dominate, e.g. near
    coincident rows) recomputed exactly from coordinate differences. Zero distances have zero gradient.
    """
    h, w, dt = x.shape[0], z.shape[0], x.dtype
    if x.shape[1] == 1:
        d = torch.sub(x, z.T, out=work.out(key, h, w, dt))
        return torch.abs(d, out=work.inplace(d))
    # several columns: the callers pass the norms (_norms gives None only for one column)
    assert nx is not None and nz is not None
    scale = torch.add(nx.unsqueeze(1), nz.unsqueeze(0), out=work.out("scale", h, w, dt))
    sq = torch.addmm(scale, x, z.T, alpha=-2.0, out=work.out(key, h, w, dt))
    thr = torch.mul(scale, _NEAR, out=work.inplace(scale))
    near = torch.le(sq, thr, out=work.out("mask", h, w, torch.bool))
    nonzero = torch.ne(sq, 0.0, out=work.out("mask2", h, w, torch.bool))
    near = torch.logical_and(near, nonzero, out=work.inplace(near))
    if bool(near.any()):
        ii, jj = near.nonzero(as_tuple=True)
        diff = x[ii] - z[jj]
        exact = (diff * diff).sum(1)
        sq = sq.index_put((ii, jj), exact) if work.graph else sq.index_put_((ii, jj), exact)
    if not work.graph:
        return sq.clamp_min_(0.0).sqrt_()
    pos = ~(sq <= 0)  # NaN stays NaN (a NaN coordinate must not read as a zero distance)
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


class _Centring:
    """Centring constants of one variable: ``A_ij = a_ij - (r_i - R) - r_j`` with pre-scaled row terms ``r``
    (``r_i = a_i. / rd``, ``R = a_.. / td``, see :func:`~fairret.ops._common.centring_divisors`)."""

    def __init__(self, r: torch.Tensor, n: int, unbiased: bool, dtype: torch.dtype):
        rd, td = centring_divisors(n, unbiased)
        self.r = (r * (1.0 / rd)).to(dtype)  # pre-scaled row terms, in the tiles' dtype
        self.rc = self.r - (r.sum() / td).to(dtype)

    def apply(self, work: _Work, a: torch.Tensor, out: Optional[torch.Tensor], i0: int, i1: int, j0: int,
              j1: int) -> torch.Tensor:
        a = torch.sub(a, self.rc[i0:i1, None], out=out)
        return torch.sub(a, self.r[None, j0:j1], out=work.inplace(a))


def _factor(work: _Work, key: str, c: torch.Tensor, a: torch.Tensor, ct: _Centring, t: Tile) -> torch.Tensor:
    """The tile of ``c - A`` (centred distances ``a``) in the scratch buffer ``key``."""
    i0, i1, j0, j1 = t
    ahat = ct.apply(work, a, work.out(key, i1 - i0, j1 - j0, a.dtype), i0, i1, j0, j1)
    return torch.sub(c, ahat, out=work.inplace(ahat))


def _norms(x: torch.Tensor) -> Optional[torch.Tensor]:
    return (x * x).sum(1) if x.shape[1] > 1 else None


def _row_sums(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Distance row sums in float64."""
    n = x.shape[0]
    if x.shape[1] == 1:
        return _row_sums_sorted(x[:, 0].to(torch.float64))
    nx = _norms(x)
    assert nx is not None  # more than one column here

    def body(work: _Work, t: Tile) -> None:
        i0, i1, j0, j1 = t
        a = _dist(work, "a", x[i0:i1], x[j0:j1], nx[i0:i1], nx[j0:j1])
        work.add_rows("r", i0, a.sum(1))
        if j0 != i0:
            work.add_rows("r", j0, a.sum(0))

    return _sweep_tiles(n, tile, x.device, {"r": None}, body)[1]["r"]


def _prepare(xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Centre every variable on its column means (computed in float64); tiles keep the input dtype (float32 tiles
    with float64 accumulation, or float64 throughout)."""
    return [x - x.detach().to(torch.float64).mean(0, keepdim=True).to(x.dtype) for x in xs]


def _tile_factors(work: _Work, xs: List[torch.Tensor], norms: List[Optional[torch.Tensor]], cents: List[_Centring],
                  c: torch.Tensor, t: Tile, keep_dists: Sequence[int] = ()) -> Tuple[List[torch.Tensor], Dict]:
    """Every variable's factor tile ``c - A^(k)``; the distance tiles of the variables in ``keep_dists`` are kept
    (their factors go to separate buffers)."""
    i0, i1, j0, j1 = t
    factors, dists = [], {}
    for k, (x, nn, ct) in enumerate(zip(xs, norms, cents)):
        a = _dist(work, f"a{k}", x[i0:i1], x[j0:j1], None if nn is None else nn[i0:i1],
                  None if nn is None else nn[j0:j1])
        if k in keep_dists:
            dists[k] = a
            factors.append(_factor(work, f"f{k}", c, a, ct, t))
        else:
            factors.append(_factor(work, f"a{k}", c, a, ct, t))
    return factors, dists


def _product(work: _Work, key: str, fs: List[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Elementwise product of the tiles ``fs`` (ones if there are none; ``fs[0]`` itself if it is the only one),
    in the scratch buffer ``key``."""
    if len(fs) == 1:
        return fs[0]
    if not fs:
        out = work.out(key, like.shape[0], like.shape[1], like.dtype)
        return torch.ones_like(like) if out is None else out.fill_(1.0)
    p = torch.mul(fs[0], fs[1], out=work.out(key, like.shape[0], like.shape[1], like.dtype))
    for f in fs[2:]:
        p = torch.mul(p, f, out=work.inplace(p))
    return p


def _sweep(xs: List[torch.Tensor], c: float, unbiased: bool, tile: int, grad_vars: Sequence[int],
           p_rows: Optional[Dict[int, torch.Tensor]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One pass over the tiles: ``T_c`` and, for the variables in ``grad_vars``, ``dT/dx``.

    ``p_rows[m]`` holds the row sums of ``P^(m)`` (over ``j``, or ``j != i`` for U); needed for the gradient.
    Differentiable when run with grad enabled (then every op is out of place).
    """
    n = xs[0].shape[0]
    dt = xs[0].dtype
    cents = [_Centring(_row_sums(x, tile), n, unbiased, dt) for x in xs]
    norms = [_norms(x) for x in xs]
    cval = torch.tensor(c, dtype=dt, device=xs[0].device)
    rd, td = centring_divisors(n, unbiased)
    p_rows = {} if p_rows is None else p_rows  # needed (and given) only with grad_vars
    gc = {}
    for m in grad_vars:
        pr = (p_rows[m] / rd).to(dt)
        gc[m] = (pr - (p_rows[m].sum() / td).to(dt), pr)
    multi = [m for m in grad_vars if xs[m].shape[1] > 1]

    def body(work: _Work, t: Tile) -> None:
        i0, i1, j0, j1 = t
        h, w = i1 - i0, j1 - j0
        diag = i0 == j0
        factors, dists = _tile_factors(work, xs, norms, cents, cval, t, multi)
        prod = _product(work, "prod", factors, factors[0])
        if unbiased and diag:
            prod = work.zero_diagonal(prod)  # (with one variable, its factor tile: not needed afterwards)
        block = prod.sum()
        work.add_total(block if diag else 2.0 * block)
        for m in grad_vars:
            p = _product(work, "p", [f for k, f in enumerate(factors) if k != m], factors[0])
            prc, pr = gc[m]
            g = torch.add(prc[i0:i1, None], pr[None, j0:j1], out=work.out("g", h, w, dt))
            g = torch.sub(g, p, out=work.inplace(g))  # dT/da_ij = -centred(P)_ij
            if unbiased and diag:
                g = work.zero_diagonal(g)
            x = xs[m]
            if x.shape[1] == 1:  # u_ij = sign(x_i - x_j); the transposed tile has the opposite sign
                s = torch.sub(x[i0:i1], x[j0:j1].T, out=work.out("d", h, w, dt))
                s = torch.sign(s, out=work.inplace(s))
                gs = torch.mul(g, s, out=work.inplace(g))
                work.add_rows(f"g{m}", i0, 2.0 * gs.sum(1, keepdim=True))
                if not diag:
                    work.add_rows(f"g{m}", j0, -2.0 * gs.sum(0).unsqueeze(1))
                continue
            a = dists[m]
            if work.graph:
                pos = a > 0
                wt = torch.where(pos, g / torch.where(pos, a, torch.ones_like(a)), torch.zeros_like(a))
            else:
                wt = torch.div(g, a, out=g)
                zero = torch.logical_not(torch.gt(a, 0.0, out=work.out("mask", h, w, torch.bool)),
                                         out=work.out("mask2", h, w, torch.bool))
                wt = wt.masked_fill_(zero, 0.0)
            work.add_rows(f"g{m}", i0, 2.0 * (x[i0:i1] * wt.sum(1, keepdim=True) - wt @ x[j0:j1]))
            if not diag:
                work.add_rows(f"g{m}", j0, 2.0 * (x[j0:j1] * wt.sum(0).unsqueeze(1) - wt.T @ x[i0:i1]))

    total, rows = _sweep_tiles(n, tile, xs[0].device, {f"g{m}": xs[m].shape[1] for m in grad_vars}, body)
    return total, [rows[f"g{m}"] for m in grad_vars]


def _p_row_sums(xs: List[torch.Tensor], c: float, unbiased: bool, tile: int, grad_vars: Sequence[int]
                ) -> Dict[int, torch.Tensor]:
    """Row sums of ``P^(m) = prod_{k != m} (c - A^(k))`` (a sweep, or closed form for two variables)."""
    n = xs[0].shape[0]
    closed = p_rows_closed_form(n, len(xs), c, unbiased, xs[0].device)
    if closed is not None:
        return {m: closed for m in grad_vars}
    dt = xs[0].dtype
    cents = [_Centring(_row_sums(x, tile), n, unbiased, dt) for x in xs]
    norms = [_norms(x) for x in xs]
    cval = torch.tensor(c, dtype=dt, device=xs[0].device)

    def body(work: _Work, t: Tile) -> None:
        i0, i1, j0, j1 = t
        factors, _ = _tile_factors(work, xs, norms, cents, cval, t)
        for m in grad_vars:
            p = _product(work, "p", [f for k, f in enumerate(factors) if k != m], factors[0])
            if unbiased and i0 == j0:  # (p is a product of at least two factors here: d >= 3)
                p = work.zero_diagonal(p)
            work.add_rows(f"p{m}", i0, p.sum(1))
            if j0 != i0:
                work.add_rows(f"p{m}", j0, p.sum(0))

    rows = _sweep_tiles(n, tile, xs[0].device, {f"p{m}": None for m in grad_vars}, body)[1]
    return {m: rows[f"p{m}"] for m in grad_vars}


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
    ny = _norms(y)

    def body(work: _Work, t: Tile) -> None:
        i0, i1, j0, j1 = t
        h, w = i1 - i0, j1 - j0
        diag = i0 == j0
        d = torch.sub(x[i0:i1], x[j0:j1].T, out=work.out("d", h, w, dt))
        ahat = cx.apply(work, torch.abs(d, out=work.out("a", h, w, dt)), work.out("a", h, w, dt), i0, i1, j0, j1)
        if unbiased and diag:
            ahat = work.zero_diagonal(ahat)
        b = _dist(work, "b", y[i0:i1], y[j0:j1], None if ny is None else ny[i0:i1], None if ny is None else ny[j0:j1])
        blk = torch.mul(ahat, b, out=work.inplace(ahat)).sum()
        work.add_total(blk if diag else 2.0 * blk)
        if want_grad:
            bs = torch.mul(b, torch.sign(d, out=work.inplace(d)), out=work.inplace(d))
            work.add_rows("brow", i0, b.sum(1))
            work.add_rows("tb", i0, bs.sum(1))
            if not diag:
                work.add_rows("brow", j0, b.sum(0))
                work.add_rows("tb", j0, -bs.sum(0))

    total, rows = _sweep_tiles(n, tile, x.device, {"brow": None, "tb": None} if want_grad else {}, body)
    if not want_grad:
        return total, None
    pr = _Prep(x[:, 0].to(torch.float64), None, keys=x[:, 0])
    o = pr.order
    g = sign_gradient(pr, rows["tb"].index_select(0, o), rows["brow"].index_select(0, o), unbiased)
    return total, pr.unsort(g).unsqueeze(1)


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
        with torch.no_grad(), single_threaded():
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
    r""":math:`T_c` like :func:`fairret.ops.reference.product_sum_dense`, in O(n·tile) memory.

    Example:
        >>> import torch
        >>> from fairret.ops.reference import product_sum_dense
        >>> x, y = torch.randn(300, 1, dtype=torch.float64), torch.randn(300, 3, dtype=torch.float64)
        >>> a = product_sum_tiled([x, y], 0.0, unbiased=False, tile=64)
        >>> bool(torch.isclose(a, product_sum_dense([x, y], 0.0, unbiased=False)))
        True
    """
    return _ProductSum.apply(float(c), bool(unbiased), int(tile), *xs)

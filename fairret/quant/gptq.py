r"""GPTQ for one linear layer, and the Fair-GPTQ shift (pure torch; no transformers needed).

GPTQ (Frantar et al. 2023) quantizes ``W`` (``d_out x d_in``) column by column, compensating each column's rounding
error on the columns not yet quantized through the inverse Hessian of the layer-wise objective
:math:`\lVert WX - \hat W X \rVert^2`, :math:`H = \frac{2}{n}\sum x x^\top`:

* dead columns (:math:`H_{jj} = 0`) get :math:`H_{jj} = 1` and a zero weight; damping
  :math:`H \mathrel{+}= \lambda\,\mathrm{mean}(\mathrm{diag}\,H)\,I`;
* :math:`U` = upper Cholesky factor of :math:`H^{-1}`; for column :math:`i`:
  :math:`q = \mathrm{quant}(w_i)`, :math:`e = (w_i - q)/U_{ii}`, :math:`W_{:, i:} \mathrel{-}= e\,U_{i, i:}` (lazy
  batches of ``block_size`` columns, one GEMM for the rest);
* groups of ``group_size`` input columns get their own scale/zero, computed at the group's first column from the
  error-updated weights; ``act_order`` visits columns by decreasing :math:`H_{jj}`, with ``static_groups`` the
  groups are fixed on the original column order (so inference needs no reordering).

Fair-GPTQ (Proskurina et al. 2025) adds :math:`\alpha \lVert \hat W (X_0 - X_1) \rVert^2` for paired stereotype /
anti-stereotype inputs; with :math:`H_\Delta = \frac{2}{n}\sum \delta\delta^\top` the optimum before rounding is
:math:`W^* = W H (H + \alpha H_\Delta)^{-1}` (:func:`fair_shift`; first order: :math:`W(I - \alpha H_\Delta H^{-1})`),
which the ordinary rounding loop then quantizes with the Cholesky factor of the damped :math:`H`.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> W, X = torch.randn(8, 16), torch.randn(256, 16)
    >>> acc = HessianAccumulator(16); acc.add(X)
    >>> res = gptq_quantize(W, acc.H, bits=4, group_size=8)
    >>> res.weight.shape, res.scales.shape, int(res.qweight.max()) <= 15
    (torch.Size([8, 16]), torch.Size([8, 2]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .._threads import single_threaded
from .._validation import check_number

__all__ = ["Quantizer", "HessianAccumulator", "GPTQResult", "gptq_quantize", "fair_shift", "fair_objective",
           "fair_gptq_quantize"]


class Quantizer:
    """Per-output-channel uniform quantizer with ``bits`` in 2..8, asymmetric (default) or symmetric.

    Asymmetric: the range ``[min(w, 0), max(w, 0)]``, ``scale = (max - min)/(2^b - 1)``, ``zero = round(-min/scale)``;
    symmetric: ``max = max(|min|, max)``, ``min = -max``, zero at the middle code ``(2^b - 1 + 1)/2``.

    Zero points are at least 1: GPTQ-v1 checkpoints store ``zero - 1`` in ``b`` bits, so a zero of 0 (a group whose
    weights are all ``>= 0``, or nearly) has no exact v1 encoding; readers disagree on the all-ones word it would
    become (GPTQModel's word-level v1 to v2 conversion carries into the neighbouring zero, AutoGPTQ-style kernels
    read ``2^b``). Such a group gets ``zero = 1`` and ``scale = max/(2^b - 2)`` instead, which still covers
    ``[min, max]`` (``-min < scale/2`` there) at one code less of resolution. Choosing it here, before rounding,
    keeps GPTQ's error compensation on the weights the checkpoint stores; clamping at export would not.
    """

    def __init__(self, bits: int = 4, sym: bool = False):
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
            raise ValueError(f"Expected argument `bits` to be an int in [2, 8], but got {bits!r}")
        self.bits, self.sym = bits, bool(sym)
        self.maxq = 2 ** bits - 1

    def params(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` of shape ``(rows, 1)`` for the rows of ``w``."""
        xmin = torch.minimum(w.min(1).values, torch.zeros((), dtype=w.dtype, device=w.device))
        xmax = torch.maximum(w.max(1).values, torch.zeros((), dtype=w.dtype, device=w.device))
        if self.sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = -xmax
        flat = (xmin == 0) & (xmax == 0)
        xmin = torch.where(flat, -torch.ones_like(xmin), xmin)
        xmax = torch.where(flat, torch.ones_like(xmax), xmax)
        scale = (xmax - xmin) / self.maxq
        if self.sym:
            zero = torch.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = torch.round(-xmin / scale)
            low = zero < 1  # not representable in GPTQ-v1 (see the class docstring)
            scale = torch.where(low, xmax / (self.maxq - 1), scale)
            zero = zero.clamp_min(1)
        return scale.unsqueeze(1), zero.unsqueeze(1)

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Integer codes in ``[0, 2^b - 1]`` (as the input's dtype)."""
        return torch.clamp(torch.round(w / scale) + zero, 0, self.maxq)

    def quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """The dequantized values ``scale * (codes - zero)``."""
        return scale * (self.codes(w, scale, zero) - zero)


class HessianAccumulator:
    """:math:`H = \\frac{2}{n}\\sum x x^\\top` over calibration rows, optionally masked.

    Kept as the float64 sum ``S`` of the outer products (one in-place ``addmm_`` a batch, no rescaling and no
    ``d_in x d_in`` temporaries: on CPUs a fresh matrix of that size costs as much as a quarter of the product) and
    the row count ``n``; :attr:`H` normalises on reading. With ``product_dtype=torch.float32`` the products are
    taken in float32 (twice as fast on CPUs) into a float32 sum that is added to the float64 ``S`` every
    ``flush_rows`` rows, so float32 rounding stays that of a sum of a few thousand rows (relative error ~1e-6).
    """

    def __init__(self, columns: int, device: Optional[torch.device] = None,
                 product_dtype: torch.dtype = torch.float64, flush_rows: int = 8192):
        if product_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"Expected argument `product_dtype` to be torch.float32 or torch.float64, but got "
                             f"{product_dtype!r}")
        self._S = torch.zeros(columns, columns, dtype=torch.float64, device=device)
        self.product_dtype = product_dtype
        self._pending = None if product_dtype == torch.float64 else torch.zeros(columns, columns, dtype=product_dtype,
                                                                                 device=device)
        self._pending_rows, self._flush_rows = 0, int(flush_rows)
        self.n = 0

    @property
    def columns(self) -> int:
        """Width of the inputs (``d_in``)."""
        return self._S.shape[0]

    @property
    def S(self) -> torch.Tensor:
        """The float64 sum of the outer products added so far."""
        if self._pending is not None and self._pending_rows:  # rows are pending only in the float32 mode
            self._S.add_(self._pending)
            self._pending.zero_()
            self._pending_rows = 0
        return self._S

    def _check_width(self, x: torch.Tensor, name: str) -> None:
        if name == "X" and x.ndim != 2:
            raise ValueError(f"Expected argument `X` to be 2-D (rows, columns), but got shape {tuple(x.shape)}")
        if x.ndim < 1 or x.shape[-1] != self._S.shape[0]:
            raise ValueError(f"Expected argument `{name}` to have {self._S.shape[0]} columns (`columns` of the "
                             f"accumulator), but got {x.shape[-1] if x.ndim else 'a scalar'}")

    def add(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """Add inputs ``(..., d_in)``; ``mask`` (same leading shape) keeps only the rows where it is true."""
        self._check_width(x, "x")
        x = x.reshape(-1, x.shape[-1])
        if mask is not None:
            x = x[mask.reshape(-1).bool()]
        self.add_rows(x)

    def add_rows(self, X: torch.Tensor, weight: float = 1.0, count: Optional[int] = None) -> None:
        """Add ``weight * X^T X`` to the sum and ``count`` rows to ``n`` (default: the rows of ``X``)."""
        self._check_width(X, "X")
        if X.shape[0]:
            X = X.to(self.product_dtype)
            if self._pending is None:
                self._S.addmm_(X.T, X, alpha=weight)
            else:
                self._pending.addmm_(X.T, X, alpha=weight)
                self._pending_rows += X.shape[0]
                if self._pending_rows >= self._flush_rows:
                    self.S  # noqa: B018  (flushes)
        self.n += X.shape[0] if count is None else int(count)

    @property
    def H(self) -> torch.Tensor:
        """:math:`\\frac{2}{n} S` (a new tensor; zeros before any row)."""
        return self.S * (2.0 / self.n) if self.n else torch.zeros_like(self._S)


@dataclass
class GPTQResult:
    """A quantized layer: dequantized ``weight`` (``d_out x d_in``), integer codes ``qweight`` (same shape),
    ``scales``/``zeros`` (``d_out x n_groups``), ``g_idx`` (group of each input column), and the settings."""

    weight: torch.Tensor
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int
    sym: bool
    act_order: bool


def _damped_hessian(H: torch.Tensor, damp: float, dtype: torch.dtype = torch.float64
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's ``H`` (a copy in ``dtype``): dead columns get ``H_jj = 1``, then ``damp * mean(diag H)`` on the
    diagonal. Returns ``(H, dead)``."""
    H = H.to(dtype, copy=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    return H, dead


def _prepare_hessian(W: torch.Tensor, H: torch.Tensor, damp: float) -> Tuple[torch.Tensor, torch.Tensor]:
    H, dead = _damped_hessian(H, damp)
    W = W.to(torch.float64, copy=True)
    W[:, dead] = 0.0
    return W, H


def _inverse_cholesky_upper(H: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of :math:`H^{-1}` (:math:`H^{-1} = U^\\top U`) without forming the inverse:
    with ``J`` the order reversal and :math:`JHJ = LL^\\top`, :math:`H = (JLJ)(JLJ)^\\top` with :math:`JLJ` upper
    triangular, so :math:`U = (JLJ)^{-1} = JL^{-1}J`. One factorisation and one triangular solve instead of a
    factorisation, an inverse and a second factorisation (a third less time at 4096 columns on CPU)."""
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if int(info):
        raise ValueError(f"Expected argument `H` to be positive definite after damping (`damp`={damp!r}), but its "
                         f"Cholesky factorisation failed (leading minor {int(info)} of the reversed column order is "
                         f"not positive); raise `damp` (GPTQ's default is 0.01)")
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = -1, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, damp: float = 0.01,
                  block_size: int = 128, compute_dtype: torch.dtype = torch.float64,
                  scale_dtype: Optional[torch.dtype] = None) -> GPTQResult:
    """Quantize ``W`` (``d_out x d_in``) with the Hessian ``H`` (``d_in x d_in``); see the module docstring.

    ``H`` is prepared (dead columns, damping) and factorised in float64; the column loop runs in ``compute_dtype``
    (float64 by default; float32 halves its memory traffic). ``scale_dtype`` rounds each group's scale to that
    dtype when it is chosen (e.g. float16, what a checkpoint stores), so the error compensation sees the weights a
    checkpoint describes. ``group_size=-1`` is one group per row. ``g_idx`` maps every input column (original
    order) to its group: ``col // group_size`` unless ``act_order`` without ``static_groups``. Rows are independent
    given ``H``: layers that share their inputs (and so ``H``) can be quantized as one stacked ``W``.
    """
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"Expected `W` (d_out, d_in) and `H` (d_in, d_in), but got {tuple(W.shape)} and "
                         f"{tuple(H.shape)}")
    if not (group_size == -1 or (isinstance(group_size, int) and group_size > 0)):
        raise ValueError(f"Expected argument `group_size` to be -1 or a positive int, but got {group_size!r}")
    if not 0 <= damp < 1:
        raise ValueError(f"Expected argument `damp` in [0, 1), but got {damp!r}")
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Expected argument `compute_dtype` to be torch.float32 or torch.float64, but got "
                         f"{compute_dtype!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"Expected argument `block_size` to be a positive int, but got {block_size!r}")
    for name, t in (("W", W), ("H", H)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"Expected argument `{name}` to be finite, but it holds "
                             f"{int((~torch.isfinite(t)).sum())} NaN or infinite values")
    quant = Quantizer(bits, sym)
    d_out, d_in = W.shape
    W, H = _prepare_hessian(W, H, damp)
    gs = d_in if group_size == -1 else group_size
    n_groups = math.ceil(d_in / gs)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(d_in, device=W.device)
    invperm = torch.argsort(perm)

    def params(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` as ``(d_out,)`` vectors for the weights ``w`` (``d_out x k``)."""
        scale, zero = quant.params(w)
        if scale_dtype is not None:
            scale = scale.to(scale_dtype).to(scale.dtype)
        return scale.squeeze(1).to(compute_dtype), zero.squeeze(1).to(compute_dtype)

    static = {}
    if act_order and static_groups:  # groups on the original column order, parameters from the original weights
        for g in range(n_groups):
            static[g] = params(W[:, g * gs:(g + 1) * gs])
    # the column loop works on W^T (row i = input column i, contiguous) in compute_dtype
    # (without act_order the visiting order is the identity: no permuted copies of W, H and the results)
    Wt = (W[:, perm] if act_order else W).T.to(compute_dtype).contiguous()
    U = _inverse_cholesky_upper(H[perm][:, perm] if act_order else H, damp).to(compute_dtype)
    codes = torch.empty_like(Wt)
    scales = torch.zeros(n_groups, d_out, dtype=compute_dtype, device=W.device)
    zeros = torch.zeros_like(scales)
    if act_order and static_groups:
        gpos = perm // gs
    elif group_size == -1:
        gpos = torch.zeros(d_in, dtype=torch.long, device=W.device)
    else:
        gpos = torch.arange(d_in, device=W.device) // gs
    gpos_list = gpos.tolist()
    diag = U.diagonal().tolist()
    # the column loop's many small operations on one thread: each parallel operation ends with a barrier across
    # threads, which costs more than the operation itself for vectors of a few thousand numbers, and far more when
    # other processes share the cores (measured: 4-5x faster on a busy 2-core machine)
    with single_threaded():
        scale: torch.Tensor; zero: torch.Tensor  # set at column 0 by every branch below
        for b0 in range(0, d_in, block_size):
            b1 = min(b0 + block_size, d_in)
            Wb = Wt[b0:b1]  # a view: updated in place
            Eb = Wt.new_empty(b1 - b0, d_out)
            Ub = U[b0:b1, b0:b1]
            for j in range(b1 - b0):
                i = b0 + j
                g = gpos_list[i]
                if act_order and static_groups:
                    scale, zero = static[g]
                elif group_size == -1:
                    if i == 0:
                        scale, zero = params(Wt.T)
                elif i % gs == 0:  # from the error-updated weights of the group's columns
                    inside = min(gs, b1 - i)
                    cols = [Wb[j:j + inside]]
                    if gs > inside and b1 < d_in:  # columns past the block: apply the block's pending updates
                        k = min(gs - inside, d_in - b1)
                        cols.append(Wt[b1:b1 + k] - U[b0:b0 + j, b1:b1 + k].T @ Eb[:j])
                    scale, zero = params(torch.cat(cols).T)
                if i == 0 or gpos_list[i - 1] != g:
                    scales[g], zeros[g] = scale, zero
                # Quantizer.codes and the error (w - scale * (c - zero)) / U_ii, written in place (the same
                # operations in the same order: no temporaries)
                w, c, err = Wb[j], codes[i], Eb[j]
                torch.div(w, scale, out=c).round_().add_(zero).clamp_(0, quant.maxq)
                torch.sub(c, zero, out=err).mul_(scale)
                torch.sub(w, err, out=err).div_(diag[i])
                if j + 1 < b1 - b0:
                    Wb[j + 1:].addr_(Ub[j, j + 1:], err, alpha=-1)
            if b1 < d_in:
                Wt[b1:].addmm_(U[b0:b1, b1:].T, Eb, alpha=-1)
    codes64 = codes.to(torch.float64)
    scales64, zeros64 = scales.to(torch.float64), zeros.to(torch.float64)
    Q = scales64[gpos] * (codes64 - zeros64[gpos])  # (d_in, d_out) in the visiting order
    if act_order:
        Q, codes64 = Q[invperm], codes64[invperm]
    Q, codes64 = Q.T.contiguous(), codes64.T.contiguous()
    g_idx = torch.empty(d_in, dtype=torch.long, device=W.device)
    g_idx[perm] = gpos
    return GPTQResult(Q, codes64.to(torch.int32), scales64.T.contiguous(), zeros64.T.contiguous(),
                      g_idx.to(torch.int32), bits, group_size, bool(sym), bool(act_order))


def fair_shift(W: torch.Tensor, H: torch.Tensor, H_delta: torch.Tensor, alpha: float,
               first_order: bool = False, damp: float = 0.01,
               compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Fair-GPTQ's weights before rounding: :math:`W H (H + \alpha H_\Delta)^{-1}` (or the first-order
    :math:`W (I - \alpha H_\Delta H^{-1})`), with :math:`H` damped as in GPTQ; ``alpha = 0`` returns ``W``.

    Computed as the correction :math:`W^* = W - \alpha\,W H_\Delta A^{-1}` with the Cholesky factor of the symmetric
    positive definite :math:`A = H + \alpha H_\Delta` (first order: :math:`A = H`): one factorisation, one product
    and two triangular solves from the right (no transposed copies). The correction is computed in ``compute_dtype``
    (float32 by default, twice as fast as float64 on CPUs and far faster on most GPUs, like the reference GPTQ
    code; float64 when the factorisation fails in float32) and subtracted from ``W`` in float64; the result is
    float64.
    """
    alpha = check_number(alpha, "alpha")
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Expected argument `compute_dtype` to be torch.float32 or torch.float64, but got "
                         f"{compute_dtype!r}")
    W64 = W.to(torch.float64, copy=True)
    if alpha == 0:
        return W64
    for dtype in dict.fromkeys((compute_dtype, torch.float64)):  # A built in dtype: no float64 copies to cast
        A, _ = _damped_hessian(H, damp, dtype)
        Hdelta = H_delta.to(dtype)
        if not first_order:
            A.add_(Hdelta, alpha=alpha)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:  # C L L^T = W H_delta, by two triangular solves from the right
            corr = torch.linalg.solve_triangular(L.mT, W.to(dtype) @ Hdelta, upper=True, left=False)
            corr = torch.linalg.solve_triangular(L, corr, upper=False, left=False)
            return W64.sub_(corr, alpha=alpha)
    raise ValueError("The damped Hessian plus alpha * H_delta is not positive definite; check `H` and `H_delta` "
                     "(symmetric positive semi-definite) or raise `damp`")


def fair_objective(W_new: torch.Tensor, W: torch.Tensor, H: torch.Tensor, H_delta: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    r""":math:`\mathrm{tr}((W - W')H(W - W')^\top) + \alpha\,\mathrm{tr}(W' H_\Delta W'^\top)` (the per-token mean
    of the Fair-GPTQ objective in Hessian form)."""
    D = (W.to(torch.float64) - W_new.to(torch.float64))
    return (D @ H.to(torch.float64) * D).sum() + alpha * (W_new.to(torch.float64) @ H_delta.to(torch.float64)
                                                          * W_new.to(torch.float64)).sum()


def fair_gptq_quantize(W: torch.Tensor, H: torch.Tensor, H_delta: torch.Tensor, alpha: float,
                       first_order: bool = False, compute_dtype: torch.dtype = torch.float32,
                       **gptq_kwargs) -> GPTQResult:
    """Fair-GPTQ for one layer: :func:`fair_shift` (its correction in ``compute_dtype``) then the GPTQ rounding loop
    with the same damped ``H`` (``alpha = 0`` is exactly :func:`gptq_quantize`)."""
    damp = gptq_kwargs.get("damp", 0.01)
    return gptq_quantize(fair_shift(W, H, H_delta, alpha, first_order, damp, compute_dtype), H, **gptq_kwargs)

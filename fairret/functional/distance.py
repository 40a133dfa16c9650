r"""Distance covariance and correlation, JdCov and CCdCov: the single implementation.

With :math:`a_{ij} = \lVert x_i - x_j \rVert`, :math:`b_{ij} = \lVert y_i - y_j \rVert` and their double-centred
matrices :math:`A, B` (Székely, Rizzo and Bakirov 2007):

* V-statistic :math:`\mathrm{dCov}^2_n(x, y) = \frac{1}{n^2} \sum_{ij} A_{ij} B_{ij} \ge 0`;
* U-statistic (unbiased, Székely and Rizzo 2014; needs :math:`n > 3`, can be negative)
  :math:`\Omega_n = \frac{1}{n(n-3)} \sum_{i \ne j} \tilde A_{ij} \tilde B_{ij}`;
* :math:`\mathrm{dCor}^2 = \mathrm{dCov}^2(x, y) / \sqrt{\mathrm{dCov}^2(x, x)\,\mathrm{dCov}^2(y, y)}`, defined as 0
  when the denominator is 0 (e.g. constant predictions), with a finite (zero) gradient there;
* JdCov² (Chakraborty and Zhang, JASA 2019) with :math:`\hat U_k = -A^{(k)}`:
  :math:`\frac{1}{n^2}\sum_{ij}\prod_k (\hat U_k(i,j) + c) - c^d` (V), and the U version
  :math:`\frac{1}{n(n-3)}\sum_{ij}\prod_k(\tilde U_k(i,j) + c) - c^d\frac{n}{n-3}`;
* CCdCov² (Lee et al. 2025): :math:`\mathrm{dCov}^2(\hat y, [w_1 Z_1, \dots, w_d Z_d])`, the U-statistic by default.

All reduce to one core sum computed by :mod:`fairret.ops`, whose backends (:data:`fairret.ops.BACKENDS`) are
described there.

Example:
    >>> import torch
    >>> x = torch.arange(1., 7.)
    >>> y = torch.tensor([1., 7., 5., 5., 6., 2.])
    >>> round(distance_covariance_sqr(x, y).item(), 5), round(distance_covariance_sqr(x, y, unbiased=True).item(), 5)
    (0.68519, -0.88889)
    >>> round(distance_correlation_sqr(x, y).item(), 5), round(distance_correlation_sqr(x, y, unbiased=True).item(), 5)
    (0.30661, -0.41613)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .. import ops
from .._validation import check_finite, check_same_rows, check_tensor
from ..sensitive import SensitiveAttributes

__all__ = [
    "distance_covariance_sqr",
    "distance_correlation_sqr",
    "joint_distance_covariance_sqr",
    "concatenated_distance_covariance_sqr",
    "attribute_list",
    "attribute_matrices",
]

#: Protected attributes as the dependence losses and metrics take them: a tensor (one attribute), a
#: :class:`~fairret.sensitive.SensitiveAttributes` (one attribute per block), or a list of those.
Attributes = Union[torch.Tensor, SensitiveAttributes, Sequence[Union[torch.Tensor, SensitiveAttributes]]]

_CATEGORICAL = ("onehot", "discrete")


def _as_2d(x: torch.Tensor, name: str, validate_args: bool) -> torch.Tensor:
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"Expected argument `{name}` to be a floating-point tensor, but got dtype {x.dtype}")
    if x.ndim == 1:
        x = x.unsqueeze(1)
    if x.ndim != 2:
        raise ValueError(f"Expected argument `{name}` to have shape (N,) or (N, d), but got {tuple(x.shape)}")
    if validate_args:
        check_finite(x, name)
    return x


def _check(xs: Sequence[torch.Tensor], names: Sequence[str], unbiased: bool) -> None:
    for x, name in zip(xs[1:], names[1:]):
        check_same_rows(x, name, xs[0], names[0])
    n = xs[0].shape[0]
    if unbiased and n < 4:
        raise ValueError(f"Expected at least 4 rows for the unbiased (U-statistic) estimate, but got N={n}")
    if n < 1:
        raise ValueError("Expected at least one row, but got N=0")
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:
        raise TypeError(f"Expected all inputs to share one dtype, but got {sorted(str(d) for d in dtypes)}")


def _normalise(t: torch.Tensor, n: int, unbiased: bool) -> torch.Tensor:
    return t / (n * (n - 3)) if unbiased else t / (n * n)


#: A distance variance counts as zero when :math:`T_0(x, x)` is at most this many times
#: :math:`\epsilon\, n R^2` (:func:`_zero_variance`).
VARIANCE_NOISE = 64.0


def _zero_variance(t_xx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Whether :math:`T_0(x, x)` (the unnormalised distance variance) is zero up to rounding.

    The U-statistic variance of a variable whose rows all coincide but one (or but two, on opposite sides of the
    others) is exactly 0 (its U-centred distance matrix vanishes), but computed it is rounding noise, and a ratio of noises is an arbitrary dCor (0.4, -0.8)
    with a huge gradient. The backends' noise is at most about :math:`16\,\epsilon\, n R^2` (measured over
    degenerate inputs, backends, offsets and sizes up to 20,000), with :math:`\epsilon` the machine epsilon of
    the input dtype (float32 at least) and :math:`R^2 = \sum_k (\max_i x_{ik} - \min_i x_{ik})^2` the squared
    diameter bound: below :data:`VARIANCE_NOISE` times that the variance counts as 0. That is also below what the
    input's own rounding determines. Tensor operations only (no host synchronisation); NaN never counts as zero.
    """
    eps = torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
    xd = x.detach()
    span = (xd.amax(0) - xd.amin(0)).to(torch.float64)
    floor = VARIANCE_NOISE * eps * x.shape[0] * (span * span).sum()
    return t_xx.detach().to(torch.float64) <= floor


def distance_covariance_sqr(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = False, backend: str = "auto",
                            validate_args: bool = False) -> torch.Tensor:
    r"""Squared distance covariance: V-statistic, or the unbiased U-statistic :math:`\Omega_n`.

    Args:
        x: ``(N,)`` or ``(N, p)``.
        y: ``(N,)`` or ``(N, q)``.
        unbiased: U-statistic (needs N >= 4).
        backend: one of :data:`fairret.ops.BACKENDS`, described in :mod:`fairret.ops` (default ``auto``).
        validate_args: also check that the inputs are finite (off by default: the check synchronises with the
            device; see :mod:`fairret._validation`). Types, shapes and row counts are always checked.

    Raises:
        ValueError: mismatched rows, N < 4 with ``unbiased``, non-finite values (with ``validate_args``), unknown
            backend.
        TypeError: non-tensor or non-floating inputs, mixed dtypes.
    """
    x, y = _as_2d(x, "x", validate_args), _as_2d(y, "y", validate_args)
    _check((x, y), ("x", "y"), unbiased)
    return _normalise(ops.product_sum([x, y], 0.0, unbiased, backend), x.shape[0], unbiased).to(x.dtype)


def distance_correlation_sqr(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = False, backend: str = "auto",
                             validate_args: bool = False) -> torch.Tensor:
    r"""Squared distance correlation (bias-corrected when ``unbiased``); 0 when a distance variance is 0.

    A distance variance counts as 0 when it is below the rounding level of the input dtype (see
    :func:`_zero_variance`): constant predictions, and for the U-statistic also a variable whose rows all coincide
    but one, or but two on opposite sides of the others. The value is then 0 with a zero gradient. NaN input gives
    NaN.

    Args and Raises as :func:`distance_covariance_sqr`.
    """
    x, y = _as_2d(x, "x", validate_args), _as_2d(y, "y", validate_args)
    _check((x, y), ("x", "y"), unbiased)
    ops.resolve_backend(backend, [x, y])  # an explicit backend must apply to the pair itself
    xy = ops.product_sum([x, y], 0.0, unbiased, backend)
    self_backend = "auto" if backend == "sorted" else backend  # dVar of a 1-D or categorical variable
    xx = ops.product_sum([x, x], 0.0, unbiased, self_backend if x.shape[1] > 1 else backend)
    yy = ops.product_sum([y, y], 0.0, unbiased, self_backend if y.shape[1] > 1 else backend)
    zero = _zero_variance(xx, x) | _zero_variance(yy, y)
    den = torch.where(zero, torch.ones_like(xx), xx * yy).sqrt()  # double where: finite gradients at zero
    # 0 * xy: still NaN when the other variable holds NaN (a constant partner must not hide it)
    return torch.where(zero, xy * 0, xy / den).to(x.dtype)


def joint_distance_covariance_sqr(*xs: torch.Tensor, c: float = 1.0, unbiased: bool = True,
                                  scale_invariant: bool = False, backend: str = "auto",
                                  validate_args: bool = False) -> torch.Tensor:
    r"""JdCov² of ``d >= 2`` variables (Chakraborty and Zhang 2019), zero iff mutually independent (population).

    Args:
        *xs: ``d`` tensors ``(N,)`` or ``(N, p_k)``.
        c: the positive constant weighting lower-order terms (default 1).
        unbiased: U-statistic version (default, needs N >= 4) or V-statistic.
        scale_invariant: divide each variable's centred distances by its distance standard deviation
            (:math:`\sqrt{\Omega_n(X_k, X_k)}`, or the V version); a constant variable then contributes zeros.
        backend: as in :func:`distance_covariance_sqr`.
        validate_args: as in :func:`distance_covariance_sqr`.
    """
    if len(xs) < 2:
        raise ValueError(f"Expected at least 2 variables for JdCov, but got {len(xs)}")
    if not isinstance(c, (int, float)) or c <= 0:
        raise ValueError(f"Expected argument `c` to be a positive number, but got {c!r}")
    names = [f"xs[{k}]" for k in range(len(xs))]
    xs2 = [_as_2d(x, nm, validate_args) for x, nm in zip(xs, names)]
    _check(xs2, names, unbiased)
    n, d = xs2[0].shape[0], len(xs2)
    which = ops.resolve_backend(backend, xs2, float(c))
    if scale_invariant:
        scaled = []
        for x in xs2:
            t_xx = ops.product_sum([x, x], 0.0, unbiased, "auto" if which == "sorted" else which)
            zero = _zero_variance(t_xx, x)  # NaN is not zero: it reaches the value
            sd = torch.where(zero, torch.ones_like(t_xx), _normalise(t_xx, n, unbiased)).sqrt()
            scaled.append(torch.where(zero, torch.zeros_like(x), x / sd.to(x.dtype)))  # distances scale with x
        xs2 = scaled
    # T_c is of order n^2 c^d and the result small: assembled in float64 (half inputs are summed in float32 by
    # ops.product_sum), cast to the input dtype at the end
    t = ops.product_sum(xs2, float(c), unbiased, which).to(torch.float64)
    cd = float(c) ** d
    if unbiased:
        out = (t + n * cd) / (n * (n - 3)) - cd * n / (n - 3)
    else:
        out = t / (n * n) - cd
    return out.to(xs2[0].dtype)


def attribute_list(sens: Attributes) -> list:
    """``sens`` as a list of items for :func:`attribute_matrices`: a tensor or a SensitiveAttributes is one item, a
    list or tuple holds one per entry."""
    if isinstance(sens, (torch.Tensor, SensitiveAttributes)):
        return [sens]
    if isinstance(sens, (list, tuple)):
        return list(sens)
    raise TypeError(f"Expected argument `sens` to be a tensor, a SensitiveAttributes or a list of them, but got "
                    f"{type(sens).__name__}")


def check_categorical(categorical: str) -> None:
    """Raise ``ValueError`` unless ``categorical`` is ``onehot`` or ``discrete``."""
    if categorical not in _CATEGORICAL:
        raise ValueError(f"Expected argument `categorical` to be 'onehot' or 'discrete', but got {categorical!r}")


def attribute_matrices(attributes: Sequence[Union[torch.Tensor, SensitiveAttributes]],
                       weights: Optional[Sequence[float]] = None, categorical: str = "onehot",
                       like: Optional[torch.Tensor] = None, name: str = "attributes") -> list:
    """Flatten attributes (tensors, or the blocks of :class:`~fairret.sensitive.SensitiveAttributes`) into a list
    of ``(N, k)`` matrices with their weights applied.

    Every attribute must have the rows of ``like`` (the predictions, named ``pred`` in the error) or, without
    ``like``, of the first attribute; ``name`` is the argument named in the errors (``sens`` for the losses and
    metrics).

    With ``categorical="discrete"`` the one-hot blocks of categorical attributes and intersections are scaled by
    :math:`1/\\sqrt 2`, so that a category mismatch is at distance 1 (the discrete metric) instead of
    :math:`\\sqrt 2`; binary and continuous columns are unchanged. The weights of a
    :class:`~fairret.sensitive.SensitiveAttributes` are already in its matrix.
    """
    check_categorical(categorical)
    mats = []
    for a in attributes:
        if isinstance(a, SensitiveAttributes):
            for blk in a.blocks:
                m = a.matrix[:, blk.columns]
                if categorical == "discrete" and blk.kind in ("categorical", "intersection"):
                    m = m / math.sqrt(2.0)
                mats.append(m)
        else:
            check_tensor(a, name)
            if a.ndim not in (1, 2):
                raise ValueError(f"Expected argument `{name}` to hold attributes of shape (N,) or (N, k), but got "
                                 f"{tuple(a.shape)}")
            mats.append(a.unsqueeze(1) if a.ndim == 1 else a)
    if not mats:
        raise ValueError(f"Expected argument `{name}` to hold at least one attribute, but got none")
    ref, ref_name = (like, "pred") if like is not None else (mats[0], f"{name}[0]")
    for k, m in enumerate(mats):
        if m.shape[0] != ref.shape[0]:
            which = f" (attribute {k})" if len(mats) > 1 else ""
            raise ValueError(f"Expected argument `{name}`{which} to have N={ref.shape[0]} rows like `{ref_name}`, "
                             f"but got {m.shape[0]}")
    if weights is not None:
        if len(weights) != len(mats):
            raise ValueError(f"Expected argument `weights` to have one weight per attribute ({len(mats)}), but got "
                             f"{len(weights)}")
        if any((not isinstance(w, (int, float))) or w < 0 for w in weights):
            raise ValueError(f"Expected argument `weights` to hold non-negative numbers, but got {list(weights)}")
        mats = [m * float(w) for m, w in zip(mats, weights)]
    if like is not None:
        mats = [m.to(dtype=like.dtype, device=like.device) for m in mats]
    return mats


def concatenated_distance_covariance_sqr(pred: torch.Tensor, *attributes: Union[torch.Tensor, SensitiveAttributes],
                                         weights: Optional[Sequence[float]] = None, unbiased: bool = True,
                                         categorical: str = "onehot", backend: str = "auto",
                                         validate_args: bool = False) -> torch.Tensor:
    r"""CCdCov²: dCov² between the predictions and the concatenation of the weighted attributes.

    Args:
        pred: ``(N,)`` or ``(N, p)`` predictions.
        *attributes: tensors ``(N,)``/``(N, k)`` or a :class:`~fairret.sensitive.SensitiveAttributes` (each of
            its attribute blocks is one attribute).
        weights: one non-negative weight per attribute (after expanding blocks); default 1.
        unbiased: U-statistic (default, as in Lee et al.'s training code).
        categorical: ``onehot`` (a mismatch weighs :math:`\sqrt 2`) or ``discrete`` (weighs 1).
        backend, validate_args: as in :func:`distance_covariance_sqr`.
    """
    if not attributes:
        raise ValueError("Expected at least one attribute for CCdCov, but got none")
    pred2 = _as_2d(pred, "pred", validate_args)
    z = torch.cat(attribute_matrices(attributes, weights, categorical, like=pred2), dim=1)
    return distance_covariance_sqr(pred2, z, unbiased=unbiased, backend=backend, validate_args=validate_args)

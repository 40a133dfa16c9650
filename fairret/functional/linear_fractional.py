r"""Linear-fractional statistics and the violation penalties built on them: the single implementation.

A linear-fractional statistic of predictions :math:`f` for sensitive column :math:`k` is

.. math:: \gamma_k = \frac{\sum_n s_{nk}(c_{0,n} + c_{1,n} f_n)}{\sum_n s_{nk}(d_{0,n} + d_{1,n} f_n)}

(Buyl et al., "fairret", ICLR 2024). The overall statistic uses weight 1 for every sample. The coefficients are
scalars or per-sample tensors (usually functions of the label). Everything here works on predictions of shape
``(N, C)``: ``C = 1`` for binary classification and regression, ``C > 1`` for multiclass predictions, where each
column is treated one-vs-rest (the coefficients broadcast per column, nothing is summed over columns).

Coefficient tensors are normalised to shape ``(N or 1, K, C or 1)``, ``K`` the number of stacked statistics.
Sums come out as ``(K, C, S)`` for groups and ``(K, C)`` overall.

Private helpers follow the torchmetrics pattern: :func:`_lf_update` computes the sufficient statistics of one
batch (group sums, overall sums and the valid-group mask, a :class:`LinearFractionalSums`), :func:`_lf_compute`
turns sums into statistic values. Modules and metrics reach them through
:meth:`fairret.statistic.LinearFractionalStatistic.sums`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

from .._distributed import all_reduce_sum, is_distributed

Coef = Union[float, int, torch.Tensor]

__all__ = [
    "LinearFractionalSums",
    "linear_fractional_statistic",
    "statistic_violation",
    "norm_penalty",
    "lse_penalty",
    "fixed_constraint",
]

#: Denominators whose absolute value is at most this are treated as zero (an absent group).
ZERO_DENOM_EPS = 1e-12


def _coef_tensor(c: Coef, pred: torch.Tensor) -> torch.Tensor:
    """Return ``c`` as a tensor of shape ``(N or 1, K, C or 1)`` on ``pred``'s device and dtype."""
    t = torch.as_tensor(c, dtype=pred.dtype, device=pred.device)
    if t.ndim == 0:
        return t.reshape(1, 1, 1)
    if t.ndim == 1:  # per-sample (N,)
        return t.reshape(-1, 1, 1)
    if t.ndim == 2:  # (N, C) or (N, 1)
        return t.unsqueeze(1)
    if t.ndim == 3:  # (N, K, C)
        return t
    raise ValueError(f"Expected a statistic coefficient with at most 3 dimensions (N, K, C), but got {tuple(t.shape)}")


class LinearFractionalSums(NamedTuple):
    """The sufficient statistics of a linear-fractional statistic over one batch (or, summed, over many).

    Attributes:
        num: ``(K, C, S)`` numerator sums :math:`\\sum_n s_{nk}(c_0 + c_1 f_n)` per group.
        denom: ``(K, C, S)`` denominator sums :math:`\\sum_n s_{nk}(d_0 + d_1 f_n)` per group.
        overall_num: ``(K, C)`` numerator sums over all samples (weight 1 each).
        overall_denom: ``(K, C)`` denominator sums over all samples.
        valid: ``(K, C, S)`` boolean, True where the group's statistic is defined (:func:`_lf_valid` of
            ``denom``).

    The shapes are those of one batch; :class:`~fairret.metric.LinearFractionalParity` wraps its accumulated
    sums (overall sums with a trailing axis of size 1) the same way, through :meth:`from_sums`.
    """

    num: torch.Tensor
    denom: torch.Tensor
    overall_num: torch.Tensor
    overall_denom: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_sums(cls, num: torch.Tensor, denom: torch.Tensor, overall_num: torch.Tensor,
                  overall_denom: torch.Tensor) -> "LinearFractionalSums":
        """Wrap sums (of one batch, or accumulated over many) with their valid-group mask."""
        return cls(num, denom, overall_num, overall_denom, _lf_valid(denom))

    def group_values(self) -> torch.Tensor:
        """Per-group statistic ``(K, C, S)``; 0 where ``valid`` is False."""
        return _lf_compute(self.num, self.denom)[0]

    def overall_values(self) -> torch.Tensor:
        """Overall statistic ``(K, C)``; 0 where its denominator is zero."""
        return _lf_compute(self.overall_num, self.overall_denom)[0]


def _lf_update(
    pred: torch.Tensor,
    sens: Optional[torch.Tensor],
    c0: Coef,
    c1: Coef,
    d0: Coef,
    d1: Coef,
    *,
    sync_dist: bool = False,
) -> LinearFractionalSums:
    """Group sums, overall sums and the valid-group mask of one batch: the one place they are computed.

    Args:
        pred: ``(N, C)`` predictions (probabilities, or raw outputs for regression).
        sens: ``(N, S)`` sensitive matrix, or None for one group holding every sample (``S = 1``, the group sums
            are then the overall sums, computed once).
        c0, c1, d0, d1: coefficients, scalars or tensors broadcastable to ``(N, K, C)``.
        sync_dist: all-reduce the sums (with gradient, in one collective) when a process group is initialised;
            the mask is taken on the global sums.

    Returns:
        :class:`LinearFractionalSums`.
    """
    f = pred.unsqueeze(1)  # (N, 1, C)
    tc0, tc1, td0, td1 = (_coef_tensor(c, pred) for c in (c0, c1, d0, d1))
    num_lin = tc0 + tc1 * f
    den_lin = td0 + td1 * f
    n = pred.shape[0]
    num_lin = num_lin.expand(n, *num_lin.shape[1:]) if num_lin.shape[0] == 1 else num_lin
    den_lin = den_lin.expand(n, *den_lin.shape[1:]) if den_lin.shape[0] == 1 else den_lin
    sums = [num_lin.sum(0), den_lin.sum(0)]  # overall
    if sens is not None:
        s = sens.to(pred.dtype)
        sums += [torch.einsum("nkc,ns->kcs", num_lin, s), torch.einsum("nkc,ns->kcs", den_lin, s)]
    if sync_dist and is_distributed():
        flat = all_reduce_sum(torch.cat([t.reshape(-1) for t in sums]))
        sums = [part.reshape(t.shape) for part, t in zip(flat.split([t.numel() for t in sums]), sums)]
    onum, oden = sums[:2]
    num, den = sums[2:] if sens is not None else (onum.unsqueeze(-1), oden.unsqueeze(-1))
    return LinearFractionalSums.from_sums(num, den, onum, oden)


def _lf_valid(denom: torch.Tensor) -> torch.Tensor:
    """Where a statistic with these denominator sums is defined: the one zero-denominator rule.

    A denominator whose absolute value is at most :data:`ZERO_DENOM_EPS` means a group absent from the batch, or
    without any sample the statistic conditions on (no positives for a TPR). A NaN denominator is *not* absent: it
    comes from non-finite input, and counting it as defined lets the NaN reach the statistic and the loss instead
    of silently dropping the group (the non-finite policy, see :mod:`fairret._validation`).

    Example:
        >>> _lf_valid(torch.tensor([2.0, 0.0, float("nan"), float("inf")]))
        tensor([ True, False,  True,  True])
    """
    return ~(denom.abs() <= ZERO_DENOM_EPS)


def _lf_compute(num: torch.Tensor, denom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistic values and the mask of defined entries (:func:`_lf_valid`).

    Where the denominator is zero the statistic is undefined: the value returned there is 0 (as in fairret 0.1.3)
    and ``valid`` is False. The double ``where`` keeps gradients finite.
    """
    valid = _lf_valid(denom)
    safe = torch.where(valid, denom, torch.ones_like(denom))
    return torch.where(valid, num / safe, torch.zeros_like(num)), valid


def _stat_shape(coefs: Sequence[Coef], like: torch.Tensor) -> tuple[int, int]:
    """``(K, C)``: the shape of the overall statistic these coefficients give for ``(N, C)`` predictions ``like``."""
    shapes = [_coef_tensor(c, like).shape for c in coefs]
    return max(sh[1] for sh in shapes), max([sh[2] for sh in shapes] + [like.shape[1]])


def _squeeze_stat(x: torch.Tensor, stacked: bool) -> torch.Tensor:
    """Drop the K axis for plain statistics and the C axis for single-column predictions.

    ``(K, C, S)`` becomes ``(S,)`` for a plain statistic on ``(N, 1)`` predictions (fairret 0.1.3's shape),
    ``(C, S)`` for multiclass, ``(K, S)`` for a stacked statistic and ``(K, C, S)`` for stacked multiclass.
    """
    if x.shape[1] == 1:
        x = x.squeeze(1)
    if not stacked:
        x = x.squeeze(0)
    return x


def linear_fractional_statistic(
    pred: torch.Tensor,
    sens: Optional[torch.Tensor],
    c0: Coef,
    c1: Coef,
    d0: Coef,
    d1: Coef,
) -> torch.Tensor:
    r"""Per-group values of a linear-fractional statistic.

    Args:
        pred: ``(N, C)`` predictions.
        sens: ``(N, S)`` sensitive matrix (one-hot groups or non-negative weights), or None for the overall value.
        c0, c1, d0, d1: coefficients of :math:`(c_0 + c_1 f)/(d_0 + d_1 f)`, scalars or per-sample tensors.

    Returns:
        Tensor of shape ``(K, C, S)`` (``(K, C)`` overall). Entries with a zero denominator are 0.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[0.2], [0.6], [0.4], [0.8]])
        >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
        >>> linear_fractional_statistic(pred, sens, 0., 1., 1., 0.).flatten()  # positive rate per group
        tensor([0.4000, 0.6000])
    """
    sums = _lf_update(pred, sens, c0, c1, d0, d1)
    return sums.overall_values() if sens is None else sums.group_values()


def statistic_violation(
    stats: torch.Tensor,
    target: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    *,
    eps: float = ZERO_DENOM_EPS,
) -> torch.Tensor:
    r"""Violation vector :math:`v_k = |\gamma_k / c - 1|`, relative to the target :math:`c`.

    Where the target is zero (up to ``eps``) the relative gap is undefined; the absolute gap
    :math:`|\gamma_k - c|` is used there instead (fairret 0.1.3 raised ``NotImplementedError``). Entries marked
    invalid (absent groups) contribute zero with zero gradient.

    Args:
        stats: ``(..., S)`` per-group statistics.
        target: target broadcastable to ``stats`` (usually the overall statistic with a trailing axis of size 1).
        valid: optional boolean mask like ``stats``.
        eps: targets with absolute value at most ``eps`` count as zero.

    Returns:
        Violations with the shape of ``stats``.
    """
    target = target.to(stats.dtype)
    zero_target = target.abs() <= eps
    safe_target = torch.where(zero_target, torch.ones_like(target), target)
    rel = torch.where(zero_target, stats - target, stats / safe_target - 1)
    v = rel.abs()
    if valid is not None:
        v = torch.where(valid, v, torch.zeros_like(v))
    return v


def norm_penalty(violation: torch.Tensor, p: float = 1) -> torch.Tensor:
    r""":math:`\sum \lVert v \rVert_p`, the norm over the last (group) axis summed over the others.

    The p-norm of a vector with zero entries has a NaN gradient through ``torch.linalg.vector_norm`` for p > 1
    only when all entries are zero; that case is guarded so the gradient is zero there.
    """
    if p == 1:
        return violation.sum()
    if p == float("inf"):
        return violation.amax(dim=-1).sum()
    all_zero = (violation == 0).all(dim=-1, keepdim=True)
    safe = torch.where(all_zero, torch.ones_like(violation), violation)
    norms = torch.linalg.vector_norm(safe, ord=p, dim=-1)
    return torch.where(all_zero.squeeze(-1), torch.zeros_like(norms), norms).sum()


def lse_penalty(violation: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    r""":math:`\log\sum_k e^{v_k} - \log S`, a smooth maximum over the group axis, summed over the others.

    With ``valid`` (a boolean mask like ``violation``) only the groups with a defined statistic enter: the sum runs
    over them and :math:`S` counts them, so absent groups contribute nothing (rather than :math:`e^0` each); a
    slice without any defined group gives 0 with zero gradient.

    Example:
        >>> v = torch.tensor([0.5, 0.0, 0.0])  # groups 1 and 2 absent
        >>> round(lse_penalty(v, torch.tensor([True, False, False])).item(), 4), round(lse_penalty(v).item(), 4)
        (0.5, 0.1958)
    """
    if valid is None:
        s = violation.shape[-1]
        return (torch.logsumexp(violation, dim=-1) - torch.log(torch.tensor(float(s), dtype=violation.dtype))).sum()
    any_valid = valid.any(dim=-1, keepdim=True)
    masked = torch.where(valid, violation, torch.full_like(violation, float("-inf")))
    masked = torch.where(any_valid, masked, torch.zeros_like(masked))  # no group: log S - log S = 0
    count = valid.sum(dim=-1).to(violation.dtype)
    count = torch.where(any_valid.squeeze(-1), count, torch.full_like(count, float(violation.shape[-1])))
    return (torch.logsumexp(masked, dim=-1) - torch.log(count)).sum()


def fixed_constraint(
    target: torch.Tensor,
    sens: torch.Tensor,
    c0: Coef,
    c1: Coef,
    d0: Coef,
    d1: Coef,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The linear constraint :math:`\gamma_k(q) = c` in the form ``intercept + slope^T q = 0``.

    :math:`\sum_n s_{nk}\big((c_0 - c\,d_0) + (c_1 - c\,d_1) q_n\big) = 0` for every group ``k``, every stacked
    statistic and every class column.

    Args:
        target: ``(K, C)`` target values ``c``.
        sens: ``(N, S)`` sensitive matrix.
        c0, c1, d0, d1: coefficients as in :func:`linear_fractional_statistic`.
        like: a ``(N, C)`` tensor giving the shape, dtype and device.

    Returns:
        ``intercept`` of shape ``(K, C, S)`` and ``slope`` of shape ``(N, K, C, S)``; the constraint on column
        ``c`` of ``q`` reads ``intercept[k, c, s] + sum_n slope[n, k, c, s] * q[n, c] = 0``.
    """
    a, b = _constraint_terms(target, c0, c1, d0, d1, like)
    s = sens.to(like.dtype)
    intercept = torch.einsum("nkc,ns->kcs", a, s)
    slope = b.unsqueeze(-1) * s[:, None, None, :]
    return intercept, slope


def _constraint_terms(target: torch.Tensor, c0: Coef, c1: Coef, d0: Coef, d1: Coef, like: torch.Tensor):
    """Per-sample terms ``(c0 - c d0, c1 - c d1)`` of the constraint, both ``(N, K, C)``."""
    n = like.shape[0]
    tc0, tc1, td0, td1 = (_coef_tensor(c, like) for c in (c0, c1, d0, d1))
    tgt = torch.as_tensor(target, dtype=like.dtype, device=like.device)
    tgt = tgt.reshape(1, -1, 1) if tgt.ndim <= 1 else tgt.unsqueeze(0)  # (1, K, C)
    a = tc0 - tgt * td0
    b = tc1 - tgt * td1
    k = max(a.shape[1], b.shape[1])
    c = max(a.shape[2], b.shape[2], like.shape[1])
    return a.expand(n, k, c), b.expand(n, k, c)


def stack_coefficients(per_stat: Sequence[tuple[Coef, Coef, Coef, Coef]], like: torch.Tensor):
    """Stack the coefficients of K statistics along the K axis (shape ``(N or 1, K, C or 1)``)."""
    out = []
    for j in range(4):
        parts = [_coef_tensor(coefs[j], like) for coefs in per_stat]
        n = max(p.shape[0] for p in parts)
        c = max(p.shape[2] for p in parts)
        out.append(torch.cat([p.expand(n, p.shape[1], c) for p in parts], dim=1))
    return tuple(out)

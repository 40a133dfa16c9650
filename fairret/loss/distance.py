r"""Dependence losses between predictions and protected attributes: dCov², dCor², JdCov², CCdCov².

Thin modules over :mod:`fairret.functional.distance`. Predictions may be logits (``pred_as_logit=True``, the
default, as for every fairret loss: a sigmoid, or a softmax for several columns, is applied), probabilities or
regression outputs (``pred_as_logit=False``). Protected attributes are data: they are detached. ``sens`` may be a
tensor ``(N,)``/``(N, k)`` (one attribute), a list of tensors (one per attribute), or a
:class:`~fairret.sensitive.SensitiveAttributes` (one attribute per block).

Under ``torch.distributed`` (``sync_dist=True``, the default) predictions and attributes are gathered from every
rank (with gradient back to the local rows), so each rank's loss is the global-batch loss and the gradient of its
rows the global-batch one.

Example:
    >>> import torch
    >>> from fairret.loss import CCdCovLoss
    >>> torch.manual_seed(0) and None
    >>> z = torch.randint(0, 2, (64, 1)).float(); age = torch.rand(64, 1)
    >>> logits = (2 * z + torch.randn(64, 1)).requires_grad_()
    >>> loss = CCdCovLoss()(logits, [z, age])
    >>> loss.backward(); bool(loss > 0), bool(torch.isfinite(logits.grad).all())
    (True, True)
"""
from __future__ import annotations

import abc
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import ops
from .._distributed import all_gather_rows
from .._validation import to_probabilities
from ..functional import distance as D
from .base import FairnessLoss

__all__ = ["DistanceCovarianceLoss", "DistanceCorrelationLoss", "JdCovLoss", "CCdCovLoss"]


def _pred(pred: torch.Tensor, pred_as_logit: bool, sync_dist: bool) -> torch.Tensor:
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"Expected argument `pred` to be a torch.Tensor, but got {type(pred).__name__}")
    if pred_as_logit:
        pred = to_probabilities(pred)
    return all_gather_rows(pred) if sync_dist else pred


def _attributes(sens: D.Attributes, categorical: str, like: torch.Tensor, sync_dist: bool) -> List[torch.Tensor]:
    mats = [m.detach() for m in D.attribute_matrices(D.attribute_list(sens), None, categorical, like=like,
                                                     name="sens")]
    return [all_gather_rows(m) for m in mats] if sync_dist else mats


class _DependenceLoss(FairnessLoss):
    """Dependence losses take no statistic arguments (:attr:`requires_labels` is False): their ``forward`` has the
    signature of every fairret loss and refuses labels with a clear error. A subclass gives its measure of the
    probabilities and attribute matrices in :meth:`_dependence`."""

    def __init__(self, *, unbiased: bool, backend: str, categorical: str = "onehot", validate_args: bool = False,
                 sync_dist: bool = True):
        super().__init__()
        self.sync_dist = sync_dist
        ops.check_backend(backend)
        D.check_categorical(categorical)
        self.unbiased = bool(unbiased)
        self.backend = backend
        self.categorical = categorical
        self.validate_args = validate_args

    def forward(self, pred: torch.Tensor, sens: D.Attributes, *stat_args: Any, pred_as_logit: bool = True,
                **stat_kwargs: Any) -> torch.Tensor:
        """The loss's dependence measure (dCov², dCor², JdCov² or CCdCov², see the class) between the predictions
        and the attributes: a scalar tensor (0-dim), differentiable in ``pred``.

        Args:
            pred: ``(N,)`` or ``(N, 1)`` logits (the default, ``pred_as_logit=True``: a sigmoid is applied;
                ``(N, C)``: a softmax over the columns), or probabilities / regression outputs with
                ``pred_as_logit=False``.
            sens: the attributes, detached: a tensor ``(N,)``/``(N, k)`` (one attribute), a list of tensors
                (one per attribute), or a :class:`~fairret.sensitive.SensitiveAttributes` (one per block).
            *stat_args: none (a dependence loss takes no labels; passing some raises ``TypeError``).
            pred_as_logit: whether ``pred`` holds logits.

        Returns:
            A scalar tensor; 0 when the predictions do not depend on the attributes (up to the estimator's bias).

        Example:
            >>> import torch
            >>> from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, DistanceCovarianceLoss, JdCovLoss
            >>> torch.manual_seed(0) and None
            >>> z = torch.randint(0, 2, (32, 1)).float(); age = torch.rand(32, 1)
            >>> logits = (3 * z + torch.randn(32, 1)).requires_grad_()
            >>> for cls in (DistanceCovarianceLoss, DistanceCorrelationLoss, JdCovLoss, CCdCovLoss):
            ...     value = cls()(logits, [z, age])
            ...     print(f"{cls.__name__}: shape {tuple(value.shape)}, positive {bool(value > 0)}")
            DistanceCovarianceLoss: shape (), positive True
            DistanceCorrelationLoss: shape (), positive True
            JdCovLoss: shape (), positive True
            CCdCovLoss: shape (), positive True
        """
        if stat_args or stat_kwargs:
            got = ", ".join([type(a).__name__ for a in stat_args] + [f"{k}=..." for k in stat_kwargs])
            raise TypeError(f"{type(self).__name__} takes no statistic arguments (labels) after `sens`: it measures "
                            f"dependence between predictions and attributes, but got ({got}); pass pred_as_logit "
                            f"by keyword")
        p = _pred(pred, pred_as_logit, self.sync_dist)
        return self._dependence(p, _attributes(sens, self.categorical, pred, self.sync_dist))

    @abc.abstractmethod
    def _dependence(self, p: torch.Tensor, zs: List[torch.Tensor]) -> torch.Tensor:
        """The measure between the probabilities ``p`` and the attribute matrices ``zs`` (gathered, detached)."""


class DistanceCovarianceLoss(_DependenceLoss):
    """dCov² between the predictions and all attributes concatenated (V-statistic by default).

    Args:
        unbiased: the U-statistic (bias-corrected; needs N ≥ 4 rows, can be slightly negative) instead of the
            V-statistic. Default ``False``: the V-statistic of Székely, Rizzo and Bakirov (2007), defined for any
            batch, never negative (and dCor² in [0, 1]), the estimator ``dcor`` computes by default. It is biased
            upwards by O(1/N) for independent variables, so on small batches prefer ``True`` (the default of
            :class:`CCdCovLoss`, as in Lee et al.'s training code, and of :class:`JdCovLoss`).
        backend: one of :data:`fairret.ops.BACKENDS`, described in :mod:`fairret.ops` (default ``auto``).
        categorical: encoding of categorical blocks of a SensitiveAttributes (``onehot`` or ``discrete``).
        validate_args: also check that predictions and attributes are finite (off by default: the check
            synchronises with the device; see :mod:`fairret._validation`).
        sync_dist: gather the global batch under ``torch.distributed``.
    """

    _measure = staticmethod(D.distance_covariance_sqr)

    def __init__(self, unbiased: bool = False, backend: str = "auto", **kwargs):
        super().__init__(unbiased=unbiased, backend=backend, **kwargs)

    def _dependence(self, p: torch.Tensor, zs: List[torch.Tensor]) -> torch.Tensor:
        z = torch.cat(zs, dim=1)
        return self._measure(p, z, unbiased=self.unbiased, backend=self.backend, validate_args=self.validate_args)


class DistanceCorrelationLoss(DistanceCovarianceLoss):
    """dCor² between the predictions and all attributes concatenated (bias-corrected when ``unbiased``).

    Arguments as :class:`DistanceCovarianceLoss`: ``unbiased=False`` by default (the V-statistic dCor², in
    [0, 1], defined for any batch; see there why, and when to pass ``True``).
    """

    _measure = staticmethod(D.distance_correlation_sqr)


class JdCovLoss(_DependenceLoss):
    r"""JdCov² of the predictions and each attribute as a separate variable (U-statistic by default).

    JdCov²(ŷ, Z_1..Z_d) = [part involving ŷ] + c·JdCov²(Z_1..Z_d): the second part measures dependence among the
    attributes, does not depend on the model and has no gradient. The returned loss is the full JdCov² (as in
    Lee et al. 2025); the model-independent part of the last call is in :attr:`attribute_dependence`.

    Args:
        c: JdCov's constant (default 1).
        unbiased: U-statistic (default ``True``, as :class:`CCdCovLoss`; see there why) or V-statistic.
        backend, categorical, validate_args: as in :class:`DistanceCovarianceLoss`.
        scale_invariant: divide each variable's centred distances by its distance standard deviation.
    """

    def __init__(self, c: float = 1.0, unbiased: bool = True, scale_invariant: bool = False, backend: str = "auto",
                 **kwargs):
        super().__init__(unbiased=unbiased, backend=backend, **kwargs)
        if not isinstance(c, (int, float)) or c <= 0:
            raise ValueError(f"Expected argument `c` to be a positive number, but got {c!r}")
        self.c = float(c)
        self.scale_invariant = bool(scale_invariant)
        self.attribute_dependence: Optional[torch.Tensor] = None

    def _dependence(self, p: torch.Tensor, zs: List[torch.Tensor]) -> torch.Tensor:
        kw: Dict[str, Any] = dict(c=self.c, unbiased=self.unbiased, scale_invariant=self.scale_invariant,
                                  backend=self.backend, validate_args=self.validate_args)
        if len(zs) >= 2:
            with torch.no_grad():
                self.attribute_dependence = self.c * D.joint_distance_covariance_sqr(*zs, **kw)
        else:
            self.attribute_dependence = torch.zeros((), dtype=p.dtype, device=p.device)
        return D.joint_distance_covariance_sqr(p, *zs, **kw)


class CCdCovLoss(_DependenceLoss):
    """CCdCov²: dCov² between the predictions and the weighted concatenation of the attributes (Lee et al. 2025).

    Args:
        weights: one non-negative weight per attribute (per block of a SensitiveAttributes); default 1.
        unbiased: U-statistic (default ``True``, as in Lee et al.'s training code: its expected value is 0 for
            independent predictions and attributes at any batch size, so the penalty does not chase the
            V-statistic's O(1/N) positive bias on mini-batches; needs N ≥ 4 rows and can be slightly negative);
            ``False``: the V-statistic (≥ 0, any N), the default of :class:`DistanceCovarianceLoss` and
            :class:`DistanceCorrelationLoss`. The defaults follow each estimator's usual source and are kept for
            compatibility.
        backend, categorical, validate_args: as in :class:`DistanceCovarianceLoss`.
    """

    def __init__(self, weights: Optional[Sequence[float]] = None, unbiased: bool = True, backend: str = "auto",
                 **kwargs):
        super().__init__(unbiased=unbiased, backend=backend, **kwargs)
        self.weights = None if weights is None else [float(w) for w in weights]

    def _dependence(self, p: torch.Tensor, zs: List[torch.Tensor]) -> torch.Tensor:
        return D.concatenated_distance_covariance_sqr(p, *zs, weights=self.weights, unbiased=self.unbiased,
                                                      backend=self.backend, validate_args=self.validate_args)

r"""Linear-fractional statistics, with fairret 0.1.3's names, signatures and values.

A statistic is defined by the four coefficient functions of its canonical form
:math:`\gamma = \frac{c_0 + c_1 f}{d_0 + d_1 f}` (``num_intercept``, ``num_slope``, ``denom_intercept``,
``denom_slope``), which all take the same arguments (usually the label). All computation goes through
:mod:`fairret.functional.linear_fractional`.

Shapes: ``pred`` is ``(N, 1)`` for binary classification or regression, or ``(N, C)`` for multiclass
probabilities; then every column is treated one-vs-rest and a label may be given as class indices ``(N,)``
(integer or integral float, converted to one-hot) or as a one-hot ``(N, C)`` tensor. A ``(N,)`` float label for ``(N, 1)`` predictions is
taken as a column. The output is ``(S,)`` for ``(N, 1)`` predictions and ``(C, S)`` for ``(N, C)``;
stacked statistics put their ``K`` axis first.

Example:
    >>> import torch
    >>> from fairret.statistic import PositiveRate, TruePositiveRate
    >>> pred = torch.tensor([[0.2], [0.6], [0.4], [0.8]])
    >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> PositiveRate()(pred, sens)
    tensor([0.4000, 0.6000])
    >>> label = torch.tensor([[1.], [1.], [0.], [1.]])
    >>> TruePositiveRate()(pred, sens, label)
    tensor([0.4000, 0.8000])
"""
from __future__ import annotations

import abc
import inspect
import pprint
import re
from typing import Any, Optional, Tuple

import torch

from .._validation import check_number, prepare_pred, prepare_sens
from ..functional import linear_fractional as F
from .base import Statistic, requires_arguments

__all__ = [
    "LinearFractionalStatistic",
    "PositiveRate",
    "MeanPrediction",
    "TruePositiveRate",
    "FalsePositiveRate",
    "PositivePredictiveValue",
    "FalseOmissionRate",
    "Accuracy",
    "FalseNegativeFalsePositiveFraction",
    "FScore",
    "FalseNegativeRate",
    "TrueNegativeRate",
    "NegativePredictiveValue",
    "FalseDiscoveryRate",
    "StackedLinearFractionalStatistic",
    "CustomLinearFractionalStatistic",
]

_METHODS = ("num_intercept", "num_slope", "denom_intercept", "denom_slope")


def _prepare_arg(arg: Any, pred: torch.Tensor, name: str) -> Any:
    """Bring a per-sample tensor argument (a label) to ``(N, C)`` like the predictions."""
    if not isinstance(arg, torch.Tensor) or arg.ndim == 0:
        return arg
    n, c = pred.shape
    if arg.shape[0] != n:
        raise ValueError(f"Expected argument `{name}` to have N={n} rows like `pred`, but got {arg.shape[0]}")
    if arg.ndim == 1:
        if c > 1:
            # class indices, integer or floating (0., 1., 2.): both one-hot, so a float label gives the integer
            # label's result. The value check reads data: only where that costs no device synchronisation.
            if arg.device.type == "cpu" and not torch.compiler.is_compiling():
                bad = (arg < 0) | (arg >= c)
                if arg.is_floating_point():  # non-finite labels are left to propagate (the non-finite policy)
                    bad = torch.isfinite(arg) & (bad | (arg != torch.round(arg)))
                if bool(bad.any()):
                    raise ValueError(f"Expected argument `{name}` to hold class indices in [0, {c}) (as integers or "
                                     f"integral floats) for (N, {c}) predictions, but got other values")
            classes = torch.arange(c, device=arg.device)
            onehot = (arg.unsqueeze(1) == classes).to(pred.dtype)
            if arg.is_floating_point():  # NaN/inf labels stay non-finite (x - x is 0, or NaN for them)
                onehot = onehot + (arg - arg).to(pred.dtype).unsqueeze(1)
            return onehot
        return arg.to(pred.dtype).unsqueeze(-1)
    if arg.ndim == 2 and arg.shape[1] not in (1, c):
        raise ValueError(f"Expected argument `{name}` to have 1 or C={c} columns like `pred`, but got {arg.shape[1]}")
    return arg.to(pred.dtype) if arg.dtype != pred.dtype else arg


class LinearFractionalStatistic(Statistic):
    r"""Abstract base of statistics :math:`\frac{c_0 + c_1 f}{d_0 + d_1 f}` computed per sensitive column.

    Subclasses implement :meth:`num_intercept`, :meth:`num_slope`, :meth:`denom_intercept` and
    :meth:`denom_slope`, all with the same signature (checked when the subclass is defined). Each returns a
    scalar or a tensor broadcastable to the predictions.
    """

    @abc.abstractmethod
    def num_intercept(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Intercept :math:`c_0` of the numerator."""
        raise NotImplementedError

    @abc.abstractmethod
    def num_slope(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Slope :math:`c_1` of the numerator."""
        raise NotImplementedError

    @abc.abstractmethod
    def denom_intercept(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Intercept :math:`d_0` of the denominator."""
        raise NotImplementedError

    @abc.abstractmethod
    def denom_slope(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Slope :math:`d_1` of the denominator."""
        raise NotImplementedError

    #: Whether the output carries a leading K axis of stacked statistics.
    stacked: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        signatures = {}
        for method in _METHODS:
            if getattr(cls, method) is getattr(LinearFractionalStatistic, method):
                return
            # Compare parameters only: return annotations may differ (a constant vs a tensor).
            signatures[method] = inspect.signature(getattr(cls, method)).replace(
                return_annotation=inspect.Signature.empty)
        expected = next(iter(signatures.values()))
        if any(sig != expected for sig in signatures.values()):
            listing = {m: list(sig.parameters) for m, sig in signatures.items()}
            raise TypeError(f"All {_METHODS} methods should share the same signature.\n"
                            f"The signatures are:\n{pprint.pformat(listing)}")
        cls.expected_signature = expected

    # -- argument handling -------------------------------------------------------------------------------------
    @property
    def requires_labels(self) -> bool:
        """Whether the coefficient methods take a required argument (the label): True for
        :class:`TruePositiveRate`, False for :class:`PositiveRate`.

        Example:
            >>> TruePositiveRate().requires_labels, PositiveRate().requires_labels
            (True, False)
        """
        sig = getattr(self, "expected_signature", None)
        return sig is not None and requires_arguments(sig, 1)

    def _check_stat_args(self, *stat_args: Any, **stat_kwargs: Any) -> None:
        sig = getattr(self, "expected_signature", None)
        if sig is None:
            return
        try:
            sig.bind(self, *stat_args, **stat_kwargs)
        except TypeError:
            received = ", ".join([type(a).__name__ for a in stat_args] + [f"{k}=..." for k in stat_kwargs])
            params = re.sub(r"( ->.*)", "", str(sig)).replace("(self, ", "(", 1)
            name = type(self).__name__
            if not received:
                raise TypeError(f"No arguments were passed along to the {name} statistic.\n"
                                f"The expected parameters are \n\t{params}\n"
                                f"Please pass these along as stat_args and/or stat_kwargs") from None
            if params in ("", "(self)"):
                raise TypeError(f"({received}) was passed along as stat_args and/or stat_kwargs to the {name} "
                                f"statistic, but it does not expect any arguments.") from None
            raise TypeError(f"Invalid stat_args and/or stat_kwargs were passed along to the {name} statistic.\n"
                            f"The expected parameters are\n\t{params}\nbut received ({received})") from None

    def coefficients(self, pred: torch.Tensor, *stat_args: Any, **stat_kwargs: Any) -> Tuple[Any, Any, Any, Any]:
        """The four coefficients ``(c0, c1, d0, d1)`` for ``(N, C)`` predictions, labels brought to ``(N, C)``."""
        self._check_stat_args(*stat_args, **stat_kwargs)
        args = [_prepare_arg(a, pred, f"stat_args[{i}]") for i, a in enumerate(stat_args)]
        kwargs = {k: _prepare_arg(v, pred, k) for k, v in stat_kwargs.items()}
        return tuple(getattr(self, m)(*args, **kwargs) for m in _METHODS)

    # -- the statistic -----------------------------------------------------------------------------------------
    def sums(self, pred: torch.Tensor, sens: Optional[torch.Tensor], *stat_args: Any, sync_dist: bool = False,
             **stat_kwargs: Any) -> F.LinearFractionalSums:
        """Group sums, overall sums and the valid-group mask of one batch, in one call.

        The losses and :class:`~fairret.metric.LinearFractionalParity` compute everything from this.

        Args:
            pred: ``(N,)``/``(N, 1)`` or ``(N, C)`` predictions (probabilities, or regression outputs).
            sens: ``(N, S)`` sensitive matrix; None for one group holding every sample (``S = 1``).
            *stat_args: the statistic's arguments (usually the label).
            sync_dist: all-reduce the sums across ranks (with gradient) when a process group is initialised.
            **stat_kwargs: keyword arguments of the statistic.

        Returns:
            A :class:`~fairret.functional.linear_fractional.LinearFractionalSums`: ``num``, ``denom`` and
            ``valid`` of shape ``(K, C, S)``, ``overall_num`` and ``overall_denom`` of shape ``(K, C)``.

        Example:
            >>> import torch
            >>> pred = torch.tensor([[0.2], [0.6], [0.4]])
            >>> s = PositiveRate().sums(pred, torch.tensor([[1., 0.], [1., 0.], [0., 0.]]))  # group 2 is empty
            >>> s.num, s.denom, s.valid
            (tensor([[[0.8000, 0.0000]]]), tensor([[[2., 0.]]]), tensor([[[ True, False]]]))
            >>> s.group_values(), s.overall_values()
            (tensor([[[0.4000, 0.0000]]]), tensor([[0.4000]]))
        """
        pred = prepare_pred(pred)
        sens = prepare_sens(sens, pred)
        coefs = self.coefficients(pred, *stat_args, **stat_kwargs)
        return F._lf_update(pred, sens, *coefs, sync_dist=sync_dist)

    def num(self, pred: torch.Tensor, sens: Optional[torch.Tensor], *stat_args: Any, **stat_kwargs: Any
            ) -> torch.Tensor:
        """The numerator :math:`\\sum_n s_{nk}(c_0 + c_1 f_n)` (overall sum when ``sens`` is None)."""
        s = self.sums(pred, sens, *stat_args, **stat_kwargs)
        return self._shape(s.overall_num.unsqueeze(-1) if sens is None else s.num)

    def denom(self, pred: torch.Tensor, sens: Optional[torch.Tensor], *stat_args: Any, **stat_kwargs: Any
              ) -> torch.Tensor:
        """The denominator :math:`\\sum_n s_{nk}(d_0 + d_1 f_n)` (overall sum when ``sens`` is None)."""
        s = self.sums(pred, sens, *stat_args, **stat_kwargs)
        return self._shape(s.overall_denom.unsqueeze(-1) if sens is None else s.denom)

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        # (K, C, S) to fairret 0.1.3's shapes; without sens one "group" holds everyone: (1,) plain, (K, 1) stacked
        return F._squeeze_stat(x, self.stacked)

    def forward(self, pred: torch.Tensor, sens: Optional[torch.Tensor], *stat_args: Any, **stat_kwargs: Any
                ) -> torch.Tensor:
        """Statistic per sensitive column; 0 where a group has a zero denominator (``valid`` of :meth:`sums`)."""
        s = self.sums(pred, sens, *stat_args, **stat_kwargs)
        return self._shape(s.overall_values().unsqueeze(-1) if sens is None else s.group_values())

    def overall_statistic(self, pred: torch.Tensor, *stat_args: Any, **stat_kwargs: Any) -> torch.Tensor:
        """The statistic over all samples, ignoring the sensitive features."""
        return self.forward(pred, None, *stat_args, **stat_kwargs)

    def fixed_constraint(self, fix_value: torch.Tensor, sens: torch.Tensor, *stat_args: Any, **stat_kwargs: Any
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The constraint :math:`\gamma_k = ` ``fix_value`` as ``intercept + slope * pred = 0`` per sample.

        Returns per-sample ``(N, M)`` intercept and slope matrices (``M`` = stacked statistics × classes ×
        groups), as fairret 0.1.3; sum the intercept over samples for the constraint's constant.
        """
        sens = prepare_sens(sens, sens.to(torch.float64) if not sens.is_floating_point() else sens)
        like = torch.zeros(sens.shape[0], 1, dtype=sens.dtype, device=sens.device)
        coefs = self.coefficients(like, *stat_args, **stat_kwargs)
        a, b = F._constraint_terms(fix_value, *coefs, like=like)
        intercept = (a.unsqueeze(-1) * sens[:, None, None, :]).flatten(1)
        slope = (b.unsqueeze(-1) * sens[:, None, None, :]).flatten(1)
        return intercept, slope


class PositiveRate(LinearFractionalStatistic):
    r"""Positive rate :math:`P(\hat Y = 1 \mid S)` (demographic parity): :math:`c_0=0, c_1=1, d_0=1, d_1=0`.

    Takes no statistic arguments. On regression outputs (``pred_as_logit=False``) it is the mean prediction.
    """

    def num_intercept(self) -> float:
        return 0.0

    def num_slope(self) -> float:
        return 1.0

    def denom_intercept(self) -> float:
        return 1.0

    def denom_slope(self) -> float:
        return 0.0


class MeanPrediction(PositiveRate):
    r"""Mean prediction per group, for regression outputs (the same canonical form as :class:`PositiveRate`).

    Use it with ``pred_as_logit=False`` on raw regression outputs: parity asks every group's mean prediction to
    equal the overall mean.
    """


class TruePositiveRate(LinearFractionalStatistic):
    r"""True positive rate :math:`P(\hat Y = 1 \mid Y = 1, S)` (equal opportunity): :math:`0, Y, Y, 0`."""

    def num_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def denom_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def denom_slope(self, label: torch.Tensor) -> float:
        return 0.0


class FalsePositiveRate(LinearFractionalStatistic):
    r"""False positive rate :math:`P(\hat Y = 1 \mid Y = 0, S)`: :math:`0, 1-Y, 1-Y, 0`."""

    def num_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def denom_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def denom_slope(self, label: torch.Tensor) -> float:
        return 0.0


class PositivePredictiveValue(LinearFractionalStatistic):
    r"""Positive predictive value (precision) :math:`P(Y = 1 \mid \hat Y = 1, S)`: :math:`0, Y, 0, 1`."""

    def num_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def denom_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def denom_slope(self, label: torch.Tensor) -> float:
        return 1.0


class FalseOmissionRate(LinearFractionalStatistic):
    r"""False omission rate :math:`P(Y = 1 \mid \hat Y = 0, S)`: :math:`Y, -Y, 1, -1`."""

    def num_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return -label

    def denom_intercept(self, label: torch.Tensor) -> float:
        return 1.0

    def denom_slope(self, label: torch.Tensor) -> float:
        return -1.0


class Accuracy(LinearFractionalStatistic):
    r"""Accuracy :math:`P(\hat Y = Y \mid S)`: :math:`1-Y, 2Y-1, 1, 0`."""

    def num_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return 2 * label - 1

    def denom_intercept(self, label: torch.Tensor) -> float:
        return 1.0

    def denom_slope(self, label: torch.Tensor) -> float:
        return 0.0


class FalseNegativeFalsePositiveFraction(LinearFractionalStatistic):
    r"""Ratio of false negatives to false positives (treatment equality): :math:`Y, -Y, 0, 1-Y`."""

    def num_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return -label

    def denom_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def denom_slope(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label


class FScore(LinearFractionalStatistic):
    r"""F-beta score: :math:`0, (1+\beta^2) Y, \beta^2 Y, 1`.

    Args:
        beta: weight of recall in the harmonic mean (default 1).
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = check_number(beta, "beta", strict=True)  # finite and > 0: NaN would pass `beta <= 0`

    def num_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return (1 + self.beta**2) * label

    def denom_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return (self.beta**2) * label

    def denom_slope(self, label: torch.Tensor) -> float:
        return 1.0


class FalseNegativeRate(LinearFractionalStatistic):
    r"""False negative rate :math:`P(\hat Y = 0 \mid Y = 1, S)`: :math:`Y, -Y, Y, 0`."""

    def num_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return -label

    def denom_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def denom_slope(self, label: torch.Tensor) -> float:
        return 0.0


class TrueNegativeRate(LinearFractionalStatistic):
    r"""True negative rate (specificity) :math:`P(\hat Y = 0 \mid Y = 0, S)`: :math:`1-Y, -(1-Y), 1-Y, 0`."""

    def num_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return -(1 - label)

    def denom_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def denom_slope(self, label: torch.Tensor) -> float:
        return 0.0


class NegativePredictiveValue(LinearFractionalStatistic):
    r"""Negative predictive value :math:`P(Y = 0 \mid \hat Y = 0, S)`: :math:`1-Y, -(1-Y), 1, -1`."""

    def num_intercept(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return -(1 - label)

    def denom_intercept(self, label: torch.Tensor) -> float:
        return 1.0

    def denom_slope(self, label: torch.Tensor) -> float:
        return -1.0


class FalseDiscoveryRate(LinearFractionalStatistic):
    r"""False discovery rate :math:`P(Y = 0 \mid \hat Y = 1, S)`: :math:`0, 1-Y, 0, 1`."""

    def num_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def num_slope(self, label: torch.Tensor) -> torch.Tensor:
        return 1 - label

    def denom_intercept(self, label: torch.Tensor) -> float:
        return 0.0

    def denom_slope(self, label: torch.Tensor) -> float:
        return 1.0


class CustomLinearFractionalStatistic(LinearFractionalStatistic):
    r"""A statistic from four user functions of the statistic arguments, e.g. of the label.

    Args:
        num_intercept, num_slope, denom_intercept, denom_slope: callables taking the statistic arguments and
            returning a scalar or a tensor broadcastable to the predictions; numbers are accepted as constants.

    Example:
        >>> import torch
        >>> # P(Y_hat = 1 | Y = 1) written by hand: the true positive rate
        >>> tpr = CustomLinearFractionalStatistic(0.0, lambda y: y, lambda y: y, 0.0)
        >>> pred = torch.tensor([[0.2], [0.6], [0.4], [0.8]]); y = torch.tensor([[1.], [1.], [0.], [1.]])
        >>> tpr(pred, torch.ones(4, 1), y)
        tensor([0.5333])
    """

    def __init__(self, num_intercept, num_slope, denom_intercept, denom_slope):
        super().__init__()
        fns = (num_intercept, num_slope, denom_intercept, denom_slope)
        for name, fn in zip(_METHODS, fns):
            if not (callable(fn) or isinstance(fn, (int, float))):
                raise TypeError(f"Expected argument `{name}` to be a callable or a number, but got {type(fn).__name__}")
        self._fns = fns

    @property
    def requires_labels(self) -> bool:
        """Whether one of the four functions has a required argument (numbers take none)."""
        for fn in self._fns:
            if not callable(fn):
                continue
            try:
                if requires_arguments(inspect.signature(fn), 0):
                    return True
            except (TypeError, ValueError):  # no signature to read (some builtins): assume it takes the label
                return True
        return False

    def _call(self, i: int, *args: Any, **kwargs: Any):
        fn = self._fns[i]
        return fn(*args, **kwargs) if callable(fn) else float(fn)

    def num_intercept(self, *args: Any, **kwargs: Any):
        return self._call(0, *args, **kwargs)

    def num_slope(self, *args: Any, **kwargs: Any):
        return self._call(1, *args, **kwargs)

    def denom_intercept(self, *args: Any, **kwargs: Any):
        return self._call(2, *args, **kwargs)

    def denom_slope(self, *args: Any, **kwargs: Any):
        return self._call(3, *args, **kwargs)


class StackedLinearFractionalStatistic(LinearFractionalStatistic):
    """K statistics evaluated together; the output has a leading K axis: ``(K, S)`` (``(K, C, S)`` multiclass).

    All stacked statistics receive the same statistic arguments. Equalised odds is
    ``StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())``.

    Example:
        >>> import torch
        >>> eo = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
        >>> pred = torch.tensor([[0.2], [0.6], [0.4], [0.8]]); y = torch.tensor([[1.], [0.], [0.], [1.]])
        >>> eo(pred, torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]]), y)
        tensor([[0.2000, 0.8000],
                [0.6000, 0.4000]])
    """

    stacked = True

    def __init__(self, *statistics: LinearFractionalStatistic):
        super().__init__()
        if len(statistics) == 0:
            raise ValueError("At least one statistic should be provided.")
        if any(not isinstance(s, LinearFractionalStatistic) or getattr(s, "stacked", False) for s in statistics):
            raise ValueError("All statistics should be instances of LinearFractionalStatistic (and not stacked).")
        self.statistics = torch.nn.ModuleList(statistics)

    @property
    def requires_labels(self) -> bool:
        """Whether any stacked statistic takes the label (all receive the same arguments)."""
        return any(s.requires_labels for s in self.statistics)

    def _check_stat_args(self, *stat_args: Any, **stat_kwargs: Any) -> None:
        for s in self.statistics:
            s._check_stat_args(*stat_args, **stat_kwargs)

    def coefficients(self, pred, *stat_args, **stat_kwargs):
        per = [s.coefficients(pred, *stat_args, **stat_kwargs) for s in self.statistics]
        return F.stack_coefficients(per, pred)

    def _stack(self, method: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        vals = [torch.as_tensor(getattr(s, method)(*args, **kwargs), dtype=torch.get_default_dtype())
                for s in self.statistics]
        vals = [v.reshape(1, 1) if v.ndim == 0 else v for v in vals]
        vals = torch.broadcast_tensors(*vals)
        return torch.stack(vals, dim=-2)

    def num_intercept(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._stack("num_intercept", *args, **kwargs)

    def num_slope(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._stack("num_slope", *args, **kwargs)

    def denom_intercept(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._stack("denom_intercept", *args, **kwargs)

    def denom_slope(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._stack("denom_slope", *args, **kwargs)


class EqualizedOdds(StackedLinearFractionalStatistic):
    """Equalised odds: the true- and false-positive rates stacked (``K = 2``); takes the label.

    The same as ``StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())``, with no constructor
    arguments, so that configuration files (LightningCLI YAML) can name it.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[0.2], [0.6], [0.4], [0.8]]); y = torch.tensor([[1.], [0.], [0.], [1.]])
        >>> EqualizedOdds()(pred, torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]]), y)
        tensor([[0.2000, 0.8000],
                [0.6000, 0.4000]])
    """

    def __init__(self):
        super().__init__(TruePositiveRate(), FalsePositiveRate())

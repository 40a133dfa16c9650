"""Argument checks and input preparation shared by every family.

Messages follow one pattern: they name the argument, say what was expected and what was received, e.g.
"Expected argument `sens` to have N=128 rows like `pred`, but got 127". ``ValueError`` is raised for bad
values, ``TypeError`` for bad types.

Two kinds of checks:

* checks of metadata (types, dtypes, number of dimensions, row counts, argument values given at construction)
  always run: they read no tensor data and cost nothing on the device;
* checks of values (finite inputs; probabilities in [0, 1] for the projection losses with
  ``pred_as_logit=False``) read a reduction of the data back to the host: a device synchronisation per check and
  a graph break under ``torch.compile`` (``fullgraph=True`` then fails). They run only with
  ``validate_args=True``, an argument with **one default, False**, in every functional, loss and metric that
  has it (:mod:`fairret.functional.distance`, every loss in :mod:`fairret.loss`,
  :class:`~fairret.metric.LinearFractionalParity` and the dependence metrics). Turn it on while debugging or in
  evaluation code; leave it off in training loops. The distance metrics check once per epoch, in ``compute``.
  Under ``torch.compile`` they request a graph break whose message says so (``fullgraph=True`` fails with it).

The non-finite policy (every family):

* validation off: a NaN or infinite value in the predictions, labels, sensitive matrix or attributes gives a
  non-finite loss, statistic or metric value, never a finite wrong one (a NaN denominator is not an absent group,
  a NaN distance variance is not zero), with tensor operations only, so the no-host-sync guarantee holds;
  running averages (``momentum``, AGM) skip non-finite updates instead of keeping NaN forever;
* validation on: ``ValueError`` naming the argument, before anything is computed;
* degenerate but finite input has a documented finite value with finite gradients: an absent group contributes
  nothing, an empty batch gives 0 (and skips the running averages), a zero distance variance gives a dCor of 0,
  saturated probabilities are handled in log space (the chi-squared projection bounds them to
  [1e-12, 1 - 1e-12]), half-precision inputs are accumulated in float32 or float64;
* functions that read their data on the host anyway (the sensitive encoder, ``one_hot_groups``, the JSD report)
  raise ``ValueError`` for NaN whatever ``validate_args`` says.

Predictions: logits or probabilities (the one convention)
---------------------------------------------------------

Every fairret function that takes model outputs has the argument ``pred_as_logit``, with one meaning:

* ``True``: ``pred`` holds logits; probabilities are :func:`to_probabilities` of them (the sigmoid of one
  column, the softmax over several);
* ``False``: ``pred`` holds probabilities (rate statistics) or regression outputs (``MeanPrediction``, the
  dependence losses), used as given;
* ``None`` (*decide from the values*, torchmetrics' rule): logits when any value lies outside [0, 1],
  probabilities otherwise (so logits that all happen to lie in [0, 1] are read as probabilities: say
  ``pred_as_logit=True`` when you know). It reads the data, so only evaluation code offers it.

Defaults: the losses and the Lightning callbacks assume logits (``pred_as_logit=True``, as in fairret 0.1.3; they
run in the training loop and read no data to decide); :class:`~fairret.metric.LinearFractionalParity` and
:func:`~fairret.report.fairness_report` decide from the values (``None``); the dependence metrics
(:class:`~fairret.metric.DistanceCorrelation`, :class:`~fairret.metric.CCdCov`, :class:`~fairret.metric.JdCov`) and
:class:`~fairret.metric.IntersectionalJSD` take values as given (``False``: probabilities or regression outputs,
what they always did; ``True`` makes a dependence metric on logits equal its loss on them). Values that contradict
what was said are reported: a rate metric given ``pred_as_logit=False`` and values outside [0, 1] warns
(:class:`PredictionWarning`), as do a metric and :func:`~fairret.report.fairness_report` left to decide that read
logits (:class:`PredictionWarning` is the one category for the convention); with ``validate_args=True`` a
projection loss given ``pred_as_logit=False`` raises for values outside [0, 1].

Groups for rate statistics
--------------------------

Rate losses and metrics compare the statistic of each *column* of ``sens`` (a group, rows weighted by its
values) with the overall one. :func:`check_groups` warns (:class:`SensitiveGroupsWarning`, the fix in the
message) when ``sens`` cannot mean that: an ``(N,)`` vector or a single column (one group, so the other one
is never compared: a binary attribute needs both columns), or, where values are read, a column that is not a 0/1
indicator (negative, or more than two distinct values: a continuous attribute). A
:class:`~fairret.sensitive.SensitiveAttributes` given as ``sens`` is turned into its
:meth:`~fairret.sensitive.SensitiveAttributes.group_matrix` (both values of a binary attribute) by
:func:`as_group_matrix`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional, overload

import torch

__all__ = [
    "check_tensor",
    "check_floating",
    "check_ndim",
    "check_same_rows",
    "check_finite",
    "check_range",
    "check_probability",
    "check_number",
    "check_min_group_size",
    "prepare_pred",
    "prepare_sens",
    "to_probabilities",
    "resolve_pred_as_logit",
    "check_groups",
    "as_group_matrix",
    "PredictionWarning",
    "SensitiveGroupsWarning",
    "CollapsedPredictionsWarning",
]


class PredictionWarning(UserWarning):
    """Predictions whose values contradict ``pred_as_logit`` (see the module's convention)."""


class SensitiveGroupsWarning(UserWarning):
    """A sensitive matrix that a rate loss or metric cannot read as groups (see :func:`check_groups`)."""


class CollapsedPredictionsWarning(UserWarning):
    """A fairness monitor's evaluation in which every prediction is the same decision (or the same value): the
    fairness figures of a constant model are no finding (see :mod:`fairret._monitoring`)."""


def check_tensor(x: Any, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(x).__name__}")
    return x


def check_floating(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor."""
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"Expected argument `{name}` to be a floating-point tensor, but got dtype {x.dtype}")
    return x


def check_ndim(x: torch.Tensor, name: str, allowed: tuple[int, ...], shape_hint: str) -> torch.Tensor:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``allowed``."""
    if x.ndim not in allowed:
        raise ValueError(f"Expected argument `{name}` to have shape {shape_hint}, but got {tuple(x.shape)}")
    return x


def check_same_rows(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """Raise ``ValueError`` unless ``x`` has as many rows as ``ref``."""
    if x.shape[0] != ref.shape[0]:
        raise ValueError(
            f"Expected argument `{name}` to have N={ref.shape[0]} rows like `{ref_name}`, but got {x.shape[0]}"
        )


#: Why value checks cannot be compiled: the message of the graph break they request under ``torch.compile``.
_COMPILE_MESSAGE = ("validate_args=True: fairret's value checks (finite inputs, probability ranges) read tensor "
                    "data on the host, which torch.compile(fullgraph=True) cannot trace. Use validate_args=False in "
                    "compiled code (non-finite input then gives a non-finite loss), or compile without fullgraph "
                    "(the checks then run eagerly between graphs).")


def _reads_values() -> None:
    """Mark a check that reads tensor values: under ``torch.compile`` an explicit graph break with a message
    saying so (``fullgraph=True`` then fails with that message instead of a data-dependent guard error; without
    ``fullgraph`` the check runs eagerly between graphs)."""
    if torch.compiler.is_compiling():
        torch._dynamo.graph_break(msg=_COMPILE_MESSAGE)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (synchronises with the device)."""
    _reads_values()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"Expected argument `{name}` to be finite, but it holds {n_bad} NaN or infinite values")


def check_range(x: torch.Tensor, name: str, low: float, high: float) -> None:
    """Raise ``ValueError`` unless every value of ``x`` lies in ``[low, high]`` (synchronises)."""
    if x.numel() == 0:
        return
    _reads_values()
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise ValueError(
            f"Expected argument `{name}` to lie in [{low}, {high}], but its values span [{lo:.6g}, {hi:.6g}]"
        )


def check_probability(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` holds probabilities."""
    check_range(x, name, 0.0, 1.0)


def check_number(value: Any, name: str, low: float = 0.0, strict: bool = False) -> float:
    """A finite real number ``>= low`` (``> low`` when ``strict``), returned as float; booleans are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"Expected argument `{name}` to be a finite number {'>' if strict else '>='} {low:g}, but got "
                         f"{value!r}")
    return float(value)


def check_min_group_size(min_group_size: Any) -> int:
    """An int >= 0 (the rows a group needs to enter the between-group gaps of the report and the monitors)."""
    if not isinstance(min_group_size, int) or isinstance(min_group_size, bool) or min_group_size < 0:
        raise ValueError(f"Expected argument `min_group_size` to be an int >= 0, but got {min_group_size!r}")
    return min_group_size


def prepare_pred(pred: torch.Tensor, name: str = "pred") -> torch.Tensor:
    """Check floating-point predictions of shape ``(N,)`` or ``(N, C)`` and return them as ``(N, C)``."""
    check_floating(pred, name)
    check_ndim(pred, name, (1, 2), "(N,) or (N, C)")
    return pred.unsqueeze(-1) if pred.ndim == 1 else pred


@overload
def prepare_sens(sens: torch.Tensor, pred: torch.Tensor) -> torch.Tensor: ...
@overload
def prepare_sens(sens: None, pred: torch.Tensor) -> None: ...
@overload
def prepare_sens(sens: Optional[torch.Tensor], pred: torch.Tensor) -> Optional[torch.Tensor]: ...
def prepare_sens(sens: Optional[torch.Tensor], pred: torch.Tensor) -> Optional[torch.Tensor]:
    """Check the sensitive matrix against ``(N, C)`` predictions and return it as ``(N, S)`` in pred's dtype (a
    :class:`~fairret.sensitive.SensitiveAttributes` as its group matrix, :func:`as_group_matrix`)."""
    if sens is None:
        return None
    sens = as_group_matrix(sens, "statistic")
    check_tensor(sens, "sens")
    check_ndim(sens, "sens", (1, 2), "(N, S)")
    if sens.ndim == 1:
        sens = sens.unsqueeze(-1)
    check_same_rows(sens, "sens", pred, "pred")
    if sens.shape[1] == 0:
        raise ValueError(f"Expected argument `sens` to have at least one column (group), but got shape "
                         f"{tuple(sens.shape)}")
    return sens.to(pred.dtype)


def to_probabilities(pred: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits: the sigmoid of ``(N,)`` or ``(N, 1)`` logits, the softmax over the columns of
    ``(N, C)`` ones (``C > 1``). Every loss with ``pred_as_logit=True`` and the Lightning monitor use this rule.

    Example:
        >>> import torch
        >>> to_probabilities(torch.tensor([[0.0], [2.0]]))
        tensor([[0.5000],
                [0.8808]])
        >>> to_probabilities(torch.zeros(1, 4))
        tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
    """
    if pred.ndim == 2 and pred.shape[1] > 1:
        return torch.softmax(pred, dim=1)
    return torch.sigmoid(pred)


def resolve_pred_as_logit(pred: torch.Tensor, pred_as_logit: Optional[bool], who: str,
                          rate: bool = True) -> bool:
    """Apply the convention to ``pred``: ``pred_as_logit`` itself when it is a bool, else decide from the values.

    Reads ``pred`` (a host synchronisation) when ``pred_as_logit`` is None, or when it is False and ``rate`` (a
    rate statistic, which needs probabilities): then values outside [0, 1] warn with :class:`PredictionWarning`.
    ``who`` names the caller in the messages.

    Example:
        >>> resolve_pred_as_logit(torch.tensor([0.2, 0.9]), None, "m"), resolve_pred_as_logit(torch.tensor([-1.]), True, "m")
        (False, True)
    """
    if pred_as_logit is not None and not isinstance(pred_as_logit, bool):
        raise TypeError(f"Expected argument `pred_as_logit` to be True, False or None, but got {pred_as_logit!r}")
    if pred_as_logit is True or (pred_as_logit is False and not rate) or pred.numel() == 0:
        return bool(pred_as_logit)
    _reads_values()
    finite = pred[torch.isfinite(pred)]
    outside = bool(((finite < 0) | (finite > 1)).any()) if finite.numel() else False
    if pred_as_logit is None:
        return outside
    if outside:
        warnings.warn(f"{who}: `pred` holds values outside [0, 1] (span [{float(finite.min()):.4g}, "
                      f"{float(finite.max()):.4g}]) but pred_as_logit=False says they are probabilities, so the rates "
                      f"are not rates. Pass pred_as_logit=True for logits (or None to decide from the values); for "
                      f"regression outputs use MeanPrediction.", PredictionWarning, stacklevel=3)
    return False


def check_groups(sens: torch.Tensor, who: str, read_values: bool = False, name: str = "sens") -> None:
    """Warn (:class:`SensitiveGroupsWarning`) when ``sens`` cannot be the groups of a rate loss or metric.

    Shapes are always checked (free): an ``(N,)`` vector or a single column is one group only. With
    ``read_values`` (a host synchronisation) also the columns: negative values, or more than two distinct values
    in a column (continuous attributes, scores) are not group memberships.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     check_groups(torch.tensor([[1., 0.], [0., 1.]]), "NormLoss", read_values=True)
        ...     check_groups(torch.tensor([[1.], [0.]]), "NormLoss")
        >>> len(w), "both values" in str(w[0].message)
        (1, True)
    """
    if not isinstance(sens, torch.Tensor) or sens.ndim not in (1, 2):
        return  # the shape checks that follow raise the errors
    fix = ("pass one column per group, e.g. torch.stack([1 - s, s], dim=1) for a 0/1 attribute s, "
           "torch.nn.functional.one_hot(codes) for group codes, or the SensitiveAttributes itself (not its "
           "`matrix`: a binary attribute is one column there)")
    if sens.ndim == 1:
        warnings.warn(f"{who}: argument `{name}` has shape (N,), read as a single group column: only the rows "
                      f"where it is nonzero form a group, compared with everyone, so a binary attribute's other "
                      f"value is never compared (this can push the model to predict almost always one class). To "
                      f"compare both values, {fix}.", SensitiveGroupsWarning, stacklevel=3)
        return
    if sens.shape[1] == 1:
        warnings.warn(f"{who}: argument `{name}` has a single column, i.e. one group compared with everyone: a "
                      f"binary attribute's other value is never compared (this can push the model to predict almost "
                      f"always one class). To compare both values, {fix}.", SensitiveGroupsWarning, stacklevel=3)
    if not read_values or sens.shape[0] == 0:
        return
    _reads_values()
    s = sens.detach()
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))  # non-finite values are the non-finite policy's
    cmax = s.amax(dim=0, keepdim=True)
    indicator = ((s == 0) | (s == cmax)).all(dim=0) & (s.amin(dim=0) >= 0)
    bad = (~indicator).nonzero().flatten().tolist()
    if bad:
        warnings.warn(f"{who}: columns {bad[:10]} of argument `{name}` are not group indicators (0/1, or 0 and one "
                      f"weight): negative values or more than two distinct values, e.g. a continuous attribute. A "
                      f"rate statistic reads each column as a group with these membership weights. One-hot encode "
                      f"the groups (SensitiveEncoder kind 'categorical', or bins of a continuous attribute), or use a "
                      f"dependence loss/metric (DistanceCorrelationLoss, CCdCovLoss) for continuous attributes. "
                      f"Soft group memberships are read as intended: filter SensitiveGroupsWarning then.",
                      SensitiveGroupsWarning, stacklevel=3)


def as_group_matrix(sens: Any, who: str) -> Any:
    """A :class:`~fairret.sensitive.SensitiveAttributes` as its group matrix (continuous blocks left out with a
    warning naming them); anything else unchanged."""
    from .sensitive import SensitiveAttributes

    if not isinstance(sens, SensitiveAttributes):
        return sens
    if sens.has_continuous():
        cont = [b.name for b in sens.blocks if b.kind not in sens.GROUP_KINDS]
        warnings.warn(f"{who}: the continuous attributes {cont} of `sens` have no groups and are left out of this "
                      f"rate statistic; pass sens.select([...]) without them to silence this, and a dependence loss "
                      f"for them", SensitiveGroupsWarning, stacklevel=3)
    return sens.group_matrix()

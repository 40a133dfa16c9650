r"""torchmetrics metric of linear-fractional parity (fairret 0.1.3 API, plus per-group values and plots).

The metric keeps running sums of the numerators and denominators of the per-group and overall statistics
(``dist_reduce_fx="sum"``), so it is exact over a whole epoch and under DDP. ``compute()`` returns
``gap_fn(per_group, overall)``; by default the maximum relative gap :math:`\max_k |\gamma_k/\gamma - 1|`.

Example:
    >>> import torch
    >>> from fairret.statistic import PositiveRate
    >>> m = LinearFractionalParity(PositiveRate(), stat_shape=2)
    >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> m.update(torch.tensor([[0.2], [0.6], [0.4], [0.8]]), sens)
    >>> m.compute()
    tensor(0.2000)
    >>> m.compute_per_group()
    tensor([0.4000, 0.6000])
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

try:
    import torchmetrics
except ImportError as err:  # pragma: no cover - torchmetrics is a core dependency
    raise ImportError("The 'torchmetrics' package must be installed to use fairret.metric: "
                      "`pip install torchmetrics`.") from err

from torchmetrics.utilities.data import dim_zero_cat  # torchmetrics 1.0 has it here only

from . import ops
from ._validation import (PredictionWarning, as_group_matrix, check_finite, check_groups, check_tensor, prepare_pred,
                          resolve_pred_as_logit, to_probabilities)
from .functional import distance as D
from .functional import linear_fractional as F
from .statistic import LinearFractionalStatistic, MeanPrediction

__all__ = ["gap_abs_max", "gap_relative_abs_max", "gap_max_min", "fill_absent", "parity_gap", "LinearFractionalParity",
           "DependenceMetric", "DistanceCorrelation", "CCdCov", "JdCov", "IntersectionalJSD"]


def gap_abs_max(vals: torch.Tensor, target_val: torch.Tensor) -> torch.Tensor:
    r"""Maximum absolute gap :math:`\max_k |\gamma_k - \gamma|` over the last axis."""
    return torch.amax(torch.abs(vals - target_val), dim=-1)


def gap_relative_abs_max(vals: torch.Tensor, target_val: torch.Tensor) -> torch.Tensor:
    r"""Maximum relative gap :math:`\max_k |\gamma_k / \gamma - 1|` (absolute where :math:`\gamma = 0`)."""
    return torch.amax(F.statistic_violation(vals, target_val), dim=-1)


def gap_max_min(vals: torch.Tensor, target_val: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Largest difference between two groups, :math:`\max_k \gamma_k - \min_k \gamma_k`, over the last axis.

    The overall value ``target_val`` is not used (the argument keeps the ``gap_fn`` signature). With
    :class:`~fairret.statistic.PositiveRate` on thresholded predictions it is the usual demographic-parity
    difference (the largest difference of positive rates between groups); with
    :class:`~fairret.statistic.EqualizedOdds`, its maximum over the two rows is the equalised-odds difference (the
    larger of the true- and false-positive-rate differences).

    Example:
        >>> from fairret.statistic import PositiveRate
        >>> gap_max_min(torch.tensor([0.2, 0.5, 0.3]))
        tensor(0.3000)
        >>> m = LinearFractionalParity(PositiveRate(), stat_shape=2, gap_fn=gap_max_min)
        >>> m.update(torch.tensor([[1.], [0.], [1.], [1.]]), torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]]))
        >>> m.compute()  # positive rates 0.5 and 1.0
        tensor(0.5000)
    """
    return torch.amax(vals, dim=-1) - torch.amin(vals, dim=-1)


def fill_absent(vals: torch.Tensor, valid: torch.Tensor, overall: torch.Tensor) -> torch.Tensor:
    """Per-group values ``(..., S)`` where each group without a defined value (``valid`` False) repeats the first
    defined group of its row (the ``overall`` value ``(..., 1)`` where none is): then no maximum, minimum or gap
    over groups, to the overall value or between groups, sees the absent ones.

    Example:
        >>> fill_absent(torch.tensor([0.0, 0.3, 0.5]), torch.tensor([False, True, True]), torch.tensor([0.4]))
        tensor([0.3000, 0.3000, 0.5000])
    """
    first = vals.gather(-1, valid.to(torch.uint8).argmax(-1, keepdim=True))
    fill = torch.where(valid.any(-1, keepdim=True), first, overall.to(vals.dtype))
    return torch.where(valid, vals, fill.expand_as(vals))


def parity_gap(sums: F.LinearFractionalSums, gap_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               compared: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``gap_fn(per_group, overall)`` of a statistic's sums over the groups with a defined value (and in
    ``compared``, a ``(S,)`` mask, when given): :meth:`LinearFractionalParity.compute`, and the fairness monitors'
    logged gaps, which leave out groups smaller than their ``min_group_size``. The overall value is over all rows.
    The result has the shape of the sums without their last (group) axis.

    Example:
        >>> from fairret.statistic import PositiveRate
        >>> sens = torch.tensor([[1., 0., 0.], [1., 0., 0.], [0., 1., 0.], [0., 1., 0.], [0., 0., 1.]])
        >>> sums = PositiveRate().sums(torch.tensor([[1.], [0.], [1.], [1.], [0.]]), sens)
        >>> parity_gap(sums, gap_max_min).item(), parity_gap(sums, gap_max_min, torch.tensor([True, True, False])).item()
        (1.0, 0.5)
    """
    overall = sums.overall_values()
    valid = sums.valid if compared is None else sums.valid & compared.to(sums.valid.device)
    return gap_fn(fill_absent(sums.group_values(), valid, overall), overall)


def _metric_input(metric: Any, pred: torch.Tensor, rate: bool, none_as_given: bool = False) -> torch.Tensor:
    """``pred`` as the metric's ``pred_as_logit`` says (the one convention of :mod:`fairret._validation`): logits
    become probabilities (:func:`~fairret._validation.to_probabilities`, as in the losses), anything else is used as
    given. ``None`` decides from the values (logits when any lies outside [0, 1]; ``none_as_given``: as given) and
    says once per metric with a :class:`~fairret._validation.PredictionWarning` that it read logits.
    ``rate``: the metric needs probabilities (``False`` contradicted by the values warns)."""
    who = type(metric).__name__
    given = metric.pred_as_logit
    as_logit = False if (given is None and none_as_given) else resolve_pred_as_logit(pred, given, who, rate=rate)
    if as_logit and given is None and not metric._told_logits:
        metric._told_logits = True
        regression = "MeanPrediction with pred_as_logit=False" if rate else "pred_as_logit=False"
        warnings.warn(f"{who}: `pred` holds values outside [0, 1], read as logits (sigmoid/softmax) since "
                      f"pred_as_logit=None decides from the values. Pass pred_as_logit=True to say so (and silence "
                      f"this), or {regression} for regression outputs.", PredictionWarning, stacklevel=4)
    return to_probabilities(pred) if as_logit else pred


def _check_pred_as_logit(pred_as_logit: Any) -> Optional[bool]:
    if pred_as_logit is not None and not isinstance(pred_as_logit, bool):
        raise TypeError(f"Expected argument `pred_as_logit` to be True, False or None, but got {pred_as_logit!r}")
    return pred_as_logit


class LinearFractionalParity(torchmetrics.Metric):
    """Gap between per-group and overall values of a linear-fractional statistic over a whole dataset.

    Args:
        statistic: the statistic to evaluate.
        stat_shape: shape of the statistic excluding the batch: ``S`` (or ``(S,)``) for a plain statistic on
            binary predictions, ``(K, S)`` for a stack, ``(C, S)`` multiclass, ``(K, C, S)`` both.
        gap_fn: ``gap_fn(per_group, overall)``; default :func:`gap_relative_abs_max` (the largest relative gap of a
            group to the overall value); :func:`gap_abs_max` (absolute), :func:`gap_max_min` (the largest
            difference between two groups).
        pred_as_logit: ``True`` for logits, ``False`` for probabilities (or regression outputs with
            :class:`~fairret.statistic.MeanPrediction`), ``None`` (default) to decide from the values of each batch:
            logits when any lies outside [0, 1] (torchmetrics' rule; a warning says so once, pass ``True`` to
            silence it). :class:`~fairret.statistic.MeanPrediction` with ``None`` takes regression outputs as
            given. The one convention is described in :mod:`fairret._validation`. ``False`` with values outside
            [0, 1] for a rate statistic warns (:class:`~fairret._validation.PredictionWarning`).
        validate_args: also check at each update that ``pred`` and ``sens`` are finite (off by default: the check
            synchronises with the device; see :mod:`fairret._validation`).
        **torchmetrics_kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    ``sens`` may be an ``(N, S)`` group matrix or a :class:`~fairret.sensitive.SensitiveAttributes` (its
    :meth:`~fairret.sensitive.SensitiveAttributes.group_matrix`: both values of a binary attribute). The first
    update after construction or :meth:`reset` checks that ``sens`` holds groups and warns
    (:class:`~fairret._validation.SensitiveGroupsWarning`) for a single column, an ``(N,)`` vector or
    non-indicator columns (with ``validate_args``, every update does).

    Groups that never appear (zero denominator) are left out of the gap (their value is NaN in
    :meth:`compute_per_group`): ``gap_fn`` sees them as a copy of a present group's value in the same row of the
    statistic, which changes no maximum or minimum over groups (the overall value where no group is present).
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    # the states (add_state in __init__), declared for the type checker
    num: torch.Tensor
    denom: torch.Tensor
    overall_num: torch.Tensor
    overall_denom: torch.Tensor

    def __init__(self, statistic: LinearFractionalStatistic, stat_shape: Union[int, Tuple[int, ...]],
                 gap_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = gap_relative_abs_max, *,
                 pred_as_logit: Optional[bool] = None, validate_args: bool = False, **torchmetrics_kwargs: Any):
        super().__init__(**torchmetrics_kwargs)
        if not isinstance(statistic, LinearFractionalStatistic):
            raise TypeError(f"Expected argument `statistic` to be a LinearFractionalStatistic, but got "
                            f"{type(statistic).__name__}")
        shape = (stat_shape,) if isinstance(stat_shape, int) else tuple(stat_shape)
        if not shape or any((not isinstance(d, int)) or d < 1 for d in shape):
            raise ValueError(f"Expected argument `stat_shape` to be a positive int or tuple of them, got {stat_shape!r}")
        self.stat = statistic
        self.pred_as_logit = _check_pred_as_logit(pred_as_logit)
        self._groups_checked = False
        self._told_logits = False
        self.stat_shape = shape
        self.validate_args = validate_args
        self.gap_fn = gap_fn
        self.add_state("num", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denom", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        overall = (*shape[:-1], 1)
        self.add_state("overall_num", default=torch.zeros(overall, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("overall_denom", default=torch.zeros(overall, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def requires_labels(self) -> bool:
        """Whether :meth:`update` needs the label after ``sens``: that of the statistic
        (:attr:`fairret.statistic.Statistic.requires_labels`)."""
        return self.stat.requires_labels

    def update(self, pred: torch.Tensor, sens: torch.Tensor, *stat_args: Any, **stat_kwargs: Any) -> None:
        """Add a batch: ``pred`` ``(N,)``, ``(N, 1)`` or ``(N, C)`` (logits or probabilities as ``pred_as_logit``
        says), ``sens`` ``(N, S)`` or a SensitiveAttributes, then the statistic's arguments (the label)."""
        sens = as_group_matrix(sens, "LinearFractionalParity")
        check_tensor(sens, "sens")  # None would mean one group holding everyone: a gap of 0
        check_groups(sens, "LinearFractionalParity", read_values=self.validate_args or not self._groups_checked)
        self._groups_checked = True
        pred = prepare_pred(pred).detach()
        regression = isinstance(self.stat, MeanPrediction)
        pred = _metric_input(self, pred, rate=not regression, none_as_given=regression)
        if self.validate_args:
            check_finite(pred, "pred")
            check_finite(sens, "sens")
        sums = self.stat.sums(pred, sens, *stat_args, **stat_kwargs)
        if sums.num.shape[-1] != self.stat_shape[-1]:
            raise ValueError(f"Expected argument `sens` to have S={self.stat_shape[-1]} columns as in `stat_shape`, "
                             f"but got {sums.num.shape[-1]}")
        shape = self.stat_shape
        try:
            self.num += sums.num.reshape(shape).to(self.num.dtype)
            self.denom += sums.denom.reshape(shape).to(self.denom.dtype)
            self.overall_num += sums.overall_num.reshape(*shape[:-1], 1).to(self.num.dtype)
            self.overall_denom += sums.overall_denom.reshape(*shape[:-1], 1).to(self.num.dtype)
        except RuntimeError:
            raise ValueError(f"Expected the statistic to have shape {shape} (argument `stat_shape`), but it has "
                             f"{tuple(sums.num.shape)} as (K, C, S)") from None

    def _sums(self) -> F.LinearFractionalSums:
        return F.LinearFractionalSums.from_sums(self.num, self.denom, self.overall_num, self.overall_denom)

    def compute_sums(self) -> F.LinearFractionalSums:
        """The float64 sums over everything seen (all ranks; a copy): ``num``/``denom`` of shape ``stat_shape``,
        the overall ones ``(*stat_shape[:-1], 1)``. :func:`fairret.report.compare_groups` turns them into per-group
        values and between-group figures (the fairness monitors' summary tables)."""
        with self.sync_context(should_sync=not self._is_synced, should_unsync=not self._is_synced):
            return F.LinearFractionalSums.from_sums(self.num.clone(), self.denom.clone(), self.overall_num.clone(),
                                                    self.overall_denom.clone())

    def compute_per_group(self) -> torch.Tensor:
        """Per-group statistic values over everything seen (all ranks); NaN for groups with a zero denominator."""
        sums = self.compute_sums()
        vals = sums.group_values()
        return torch.where(sums.valid, vals, torch.full_like(vals, float("nan"))).to(torch.get_default_dtype())

    def compute_overall(self) -> torch.Tensor:
        """The overall statistic over everything seen (all ranks), shape ``(*stat_shape[:-1], 1)``."""
        return self.compute_sums().overall_values().to(torch.get_default_dtype())

    def compute(self) -> torch.Tensor:
        """``gap_fn(per_group, overall)`` over the groups with a defined statistic.

        Returns:
            A scalar for a plain statistic on ``(N, 1)`` predictions; one gap per stacked statistic ``(K,)`` for a
            stack (e.g. ``(2,)`` for equalised odds: the TPR gap, then the FPR gap; take ``.max()`` for one
            figure), ``(C,)`` per class for multiclass, ``(K, C)`` both: the shape ``stat_shape[:-1]``. With the
            default :func:`gap_relative_abs_max` the gap is a fraction of the overall value (0.1: a group 10% above
            or below it), not a difference in points; :func:`gap_max_min` gives the latter.

        Example:
            >>> from fairret.statistic import EqualizedOdds
            >>> m = LinearFractionalParity(EqualizedOdds(), (2, 2), gap_fn=gap_max_min, pred_as_logit=False)
            >>> y = torch.tensor([1., 1., 0., 1., 0., 0.])
            >>> m.update(torch.tensor([1., 0., 0., 1., 1., 0.]), torch.tensor([[1., 0.]] * 3 + [[0., 1.]] * 3), y)
            >>> m.compute()  # TPR 0.5 vs 1.0, FPR 0.0 vs 0.5
            tensor([0.5000, 0.5000])
        """
        return parity_gap(self._sums(), self.gap_fn).to(torch.get_default_dtype())

    def reset(self) -> None:
        """Forget the sums; the next update checks ``sens`` again."""
        super().reset()
        self._groups_checked = False

    def plot(self, val: Optional[torch.Tensor] = None, ax: Optional[Any] = None,
             group_names: Optional[Sequence[str]] = None):
        """Bar plot of the per-group values with the overall value as a line (needs matplotlib).

        Args:
            val: per-group values to plot (default: :meth:`compute_per_group`), shape ``(S,)`` or ``(R, S)``.
            ax: a matplotlib axis to draw into.
            group_names: labels of the S groups.

        Returns:
            ``(figure, axis)``.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("LinearFractionalParity.plot needs matplotlib: `pip install matplotlib`") from err
        vals = (self.compute_per_group() if val is None else val).detach().cpu()
        overall = self.compute_overall().detach().cpu().reshape(-1) if val is None else None
        vals = vals.reshape(-1, vals.shape[-1])
        s = vals.shape[-1]
        names = list(group_names) if group_names is not None else [f"group {k}" for k in range(s)]
        stats = getattr(self.stat, "statistics", None)
        row_names = ([type(st).__name__ for st in stats] if stats is not None and len(stats) == len(vals)
                     else [f"row {r}" for r in range(len(vals))])
        if len(names) != s:
            raise ValueError(f"Expected argument `group_names` to have {s} names, but got {len(names)}")
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(4, 0.8 * s * len(vals)), 3))
        width = 0.8 / len(vals)
        for r, row in enumerate(vals):
            xs = [k + r * width for k in range(s)]
            ax.bar(xs, row.tolist(), width=width, label=row_names[r] if len(vals) > 1 else None)
            if overall is not None:
                ax.axhline(float(overall[min(r, len(overall) - 1)]), linestyle="--", color="k", linewidth=1)
        ax.set_xticks([k + width * (len(vals) - 1) / 2 for k in range(s)])
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel(type(self.stat).__name__)
        if len(vals) > 1:
            ax.legend()
        fig.tight_layout()
        return fig, ax


class DependenceMetric(torchmetrics.Metric):
    """Base of the metrics of dependence between predictions and protected attributes, updated with
    ``(pred, sens)``; the Lightning monitor feeds every metric of this type its ``attributes``.

    ``sens`` has the structure the dependence losses take (:mod:`fairret.loss.distance`): a tensor ``(N,)`` or
    ``(N, k)`` is one attribute, a list of tensors one attribute per entry, a
    :class:`~fairret.sensitive.SensitiveAttributes` one attribute per block (categorical blocks encoded as
    ``categorical`` says). The structure is fixed by the first update. Every row of the epoch is kept in float64
    (``dist_reduce_fx="cat"``, so DDP gathers them) and the measure is computed once, in :meth:`compute`.

    Args:
        backend: one of :data:`fairret.ops.BACKENDS`, described in :mod:`fairret.ops` (default ``auto``).
        categorical: ``onehot`` or ``discrete``, as in the dependence losses.
        pred_as_logit: what ``pred`` holds, with the meaning it has in the dependence losses' ``forward`` (the one
            convention, :mod:`fairret._validation`): ``True``: logits, turned into probabilities as the losses do
            (the sigmoid of one column, the softmax over several), so that the metric on logits equals the loss on
            the same logits; ``False`` (the default): probabilities or regression outputs, used as given, what
            these metrics always did (the losses' default, ``True``, would silently change their value for every
            caller that passes probabilities or regression outputs); ``None``: decide from the values (logits when
            any lies outside [0, 1], said once with a :class:`~fairret._validation.PredictionWarning`).
        validate_args: also check in :meth:`compute` that every value seen is finite (off by default; see
            :mod:`fairret._validation`).
        **torchmetrics_kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    # the states (add_state in __init__), declared for the type checker
    preds: List[torch.Tensor]
    attrs: List[torch.Tensor]

    def __init__(self, backend: str = "auto", *, categorical: str = "onehot", pred_as_logit: Optional[bool] = False,
                 validate_args: bool = False, **torchmetrics_kwargs: Any):
        super().__init__(**torchmetrics_kwargs)
        self.backend = ops.check_backend(backend)
        D.check_categorical(categorical)
        self.categorical = categorical
        self.pred_as_logit = _check_pred_as_logit(pred_as_logit)
        self._told_logits = False
        self.validate_args = validate_args
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("attrs", default=[], dist_reduce_fx="cat")
        self._widths: Optional[List[int]] = None  # columns of each attribute, from the first update
        self._plain = True  # whether the updates gave one plain tensor (no attribute structure)

    def update(self, pred: torch.Tensor, sens: D.Attributes) -> None:
        """Add a batch: predictions ``(N,)``/``(N, p)`` (as ``pred_as_logit`` says: by default probabilities or
        regression outputs, used as given; logits with ``pred_as_logit=True``) and attributes.

        An empty batch (N = 0) adds no rows; :meth:`compute` without enough rows raises ``ValueError``.
        """
        check_tensor(pred, "pred")
        if pred.ndim == 0:
            raise ValueError("Expected argument `pred` to have shape (N,) or (N, p), but got a scalar")
        pred = _metric_input(self, pred.detach(), rate=False)
        # (N,) -> (N, 1), (N, ...) -> (N, p); flatten rather than reshape(N, -1), which fails for an empty batch
        pred = (pred.unsqueeze(1) if pred.ndim == 1 else pred.flatten(1)).detach().to(torch.float64)
        mats = D.attribute_matrices(D.attribute_list(sens), None, self.categorical, like=pred, name="sens")
        widths = [m.shape[1] for m in mats]
        if self._widths is None:
            self._widths, self._plain = widths, isinstance(sens, torch.Tensor)
        elif widths != self._widths:
            raise ValueError(f"Expected argument `sens` to hold attributes of {self._widths} columns as in the first "
                             f"update, but got {widths}")
        self.preds.append(pred)
        self.attrs.append(torch.cat(mats, dim=1).detach())

    def reset(self) -> None:
        """Forget the data and the attribute structure."""
        super().reset()
        self._widths, self._plain = None, True

    def _data(self) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """All predictions ``(N, p)`` and the attribute matrices, one per attribute."""
        p, z = dim_zero_cat(self.preds), dim_zero_cat(self.attrs)
        return p, list(z.split(self._widths or [z.shape[1]], dim=1))


class DistanceCorrelation(DependenceMetric):
    """dCor² between all predictions and all attributes seen, concatenated (bias-corrected when ``unbiased``); the
    value of :class:`~fairret.loss.DistanceCorrelationLoss` with the same arguments on the whole epoch.

    Args:
        unbiased: bias-corrected dCor² (U-statistics) instead of the V version (default ``False``, as
            :class:`~fairret.loss.DistanceCorrelationLoss`; see there why).
        backend, categorical, pred_as_logit, validate_args, **torchmetrics_kwargs: as in :class:`DependenceMetric`.

    Example:
        >>> m = DistanceCorrelation()
        >>> x = torch.arange(1., 7.)
        >>> m.update(x[:3], torch.tensor([1., 7., 5.])); m.update(x[3:], torch.tensor([5., 6., 2.]))
        >>> round(m.compute().item(), 5)
        0.30661

        On logits, ``pred_as_logit=True`` gives the loss's value (which reads logits by default):

        >>> from fairret.loss import DistanceCorrelationLoss
        >>> logits, age = torch.tensor([-2., 0.5, 1., 3., -1., 2.]), torch.tensor([20., 35., 40., 60., 30., 50.])
        >>> m = DistanceCorrelation(pred_as_logit=True)
        >>> m.update(logits[:4], age[:4]); m.update(logits[4:], age[4:])
        >>> torch.isclose(m.compute(), DistanceCorrelationLoss()(logits.double(), age.double())).item()
        True
    """

    def __init__(self, unbiased: bool = False, backend: str = "auto", **kwargs: Any):
        super().__init__(backend, **kwargs)
        self.unbiased = unbiased

    def compute(self) -> torch.Tensor:
        """dCor² over every row seen (all ranks): a scalar tensor in [0, 1] (0: independent)."""
        p, zs = self._data()
        return D.distance_correlation_sqr(p, torch.cat(zs, dim=1), unbiased=self.unbiased, backend=self.backend,
                                          validate_args=self.validate_args)


class CCdCov(DependenceMetric):
    """CCdCov² (U-statistic by default) between all predictions and the weighted concatenation of the attributes
    seen: the value of :class:`~fairret.loss.CCdCovLoss` with the same arguments on the whole epoch.

    Args:
        weights: one non-negative weight per attribute (per list entry, per block of a SensitiveAttributes; a
            single tensor is one attribute); default 1.
        unbiased: U-statistic (default ``True``, as :class:`~fairret.loss.CCdCovLoss`; see there why) or
            V-statistic.
        backend, categorical, pred_as_logit, validate_args, **torchmetrics_kwargs: as in :class:`DependenceMetric`.

    Example:
        >>> from fairret.loss import CCdCovLoss
        >>> torch.manual_seed(0) and None
        >>> prob, sex, age = torch.rand(40, 1), torch.randint(0, 2, (40, 1)).float(), torch.rand(40, 1)
        >>> m = CCdCov(weights=[1.0, 3.0])
        >>> m.update(prob[:25], [sex[:25], age[:25]]); m.update(prob[25:], [sex[25:], age[25:]])
        >>> loss = CCdCovLoss(weights=[1.0, 3.0])(prob.double(), [sex.double(), age.double()], pred_as_logit=False)
        >>> torch.isclose(m.compute(), loss).item()
        True
    """

    def __init__(self, weights: Optional[Sequence[float]] = None, unbiased: bool = True, backend: str = "auto",
                 **kwargs: Any):
        super().__init__(backend, **kwargs)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.unbiased = unbiased

    def update(self, pred: torch.Tensor, sens: D.Attributes) -> None:
        """Add a batch (see :class:`DependenceMetric`); the number of attributes must match ``weights``."""
        super().update(pred, sens)
        n_attrs = len(self._widths or ())  # set by the first update
        if self.weights is not None and len(self.weights) != n_attrs:
            raise ValueError(f"Expected argument `sens` to hold one attribute per weight ({len(self.weights)}), but "
                             f"got {n_attrs}")

    def compute(self) -> torch.Tensor:
        """CCdCov² over every row seen (all ranks): a scalar tensor (the U-statistic may be slightly negative)."""
        p, zs = self._data()
        return D.concatenated_distance_covariance_sqr(p, *zs, weights=self.weights, unbiased=self.unbiased,
                                                      backend=self.backend, validate_args=self.validate_args)


class JdCov(DependenceMetric):
    """JdCov² of the predictions and the attribute variables over everything seen.

    The variables are the attributes as :class:`~fairret.loss.JdCovLoss` takes them (one per list entry or block
    of a SensitiveAttributes), except for a single plain tensor: then each column is a variable, or ``blocks``
    (column slices) group them.

    Args:
        c, unbiased, scale_invariant: as in :class:`~fairret.loss.JdCovLoss` (``unbiased`` default ``True``).
        blocks: column slices of the concatenated attributes, one per variable (default: as described above).
        backend, categorical, pred_as_logit, validate_args, **torchmetrics_kwargs: as in :class:`DependenceMetric`.
    """

    def __init__(self, c: float = 1.0, unbiased: bool = True, scale_invariant: bool = False,
                 blocks: Optional[Sequence[slice]] = None, backend: str = "auto", **kwargs: Any):
        super().__init__(backend, **kwargs)
        self.c, self.unbiased, self.scale_invariant, self.blocks = c, unbiased, scale_invariant, blocks

    def compute(self) -> torch.Tensor:
        """JdCov² over every row seen (all ranks): a scalar tensor."""
        p, zs = self._data()
        if self.blocks is not None or self._plain:
            z = torch.cat(zs, dim=1)
            zs = [z[:, b] for b in (self.blocks or [slice(k, k + 1) for k in range(z.shape[1])])]
        return D.joint_distance_covariance_sqr(p, *zs, c=self.c, unbiased=self.unbiased,
                                               scale_invariant=self.scale_invariant, backend=self.backend,
                                               validate_args=self.validate_args)


class IntersectionalJSD(torchmetrics.Metric):
    """Generalised JSD (bits) between the per-cell prediction distributions over everything seen.

    ``update(pred, cells)`` with cell ids ``(N,)`` (e.g. ``SensitiveAttributes.group_ids["race&sex"]``).

    Args:
        bandwidth, grid, weights: as in :func:`fairret.functional.calibration.intersectional_jsd` (the bandwidth
            is in units of the predictions: 0.15 is meant for probabilities).
        pred_as_logit: ``False`` (default): ``pred`` holds probabilities (or other scores), used as given;
            ``True``: logits, turned into probabilities by the sigmoid first; ``None``: decide from the values
            (the one convention, :mod:`fairret._validation`; as in :class:`DependenceMetric`).
        **torchmetrics_kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    # the states (add_state in __init__), declared for the type checker
    preds: List[torch.Tensor]
    cells: List[torch.Tensor]

    def __init__(self, bandwidth: float = 0.15, grid: int = 1000, weights: str = "cell", *,
                 pred_as_logit: Optional[bool] = False, **torchmetrics_kwargs: Any):
        super().__init__(**torchmetrics_kwargs)
        self.bandwidth, self.grid, self.weights = bandwidth, grid, weights
        self.pred_as_logit = _check_pred_as_logit(pred_as_logit)
        self._told_logits = False
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("cells", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, cells: torch.Tensor) -> None:
        """Add a batch of predictions ``(N,)``/``(N, 1)`` and their cell ids ``(N,)`` (or one-hot ``(N, G)``, an
        all-zero row meaning no cell, as id -1 does), or a :class:`~fairret.sensitive.SensitiveAttributes` with one
        intersection block (its cell ids). ``pred`` as ``pred_as_logit`` says."""
        from .functional.calibration import _cells
        from .sensitive import SensitiveAttributes

        if isinstance(cells, SensitiveAttributes):
            inter = [b.name for b in cells.blocks if b.kind == "intersection"]
            if len(inter) != 1:
                raise ValueError(f"Expected argument `cells` to hold exactly one intersection block to take the cells "
                                 f"from, but it has {inter}; pass cells.group_ids[name] for the one you mean")
            cells = cells.group_ids[inter[0]]

        pred = check_tensor(pred, "pred").detach().reshape(-1).to(torch.float64)
        pred = _metric_input(self, pred, rate=False)
        self.preds.append(pred)
        self.cells.append(_cells(cells, pred.shape[0]))

    def compute(self) -> torch.Tensor:
        """The generalised JSD in bits between the cells' prediction distributions: a scalar tensor (0: the same
        distribution in every cell)."""
        from .functional.calibration import intersectional_jsd

        return intersectional_jsd(dim_zero_cat(self.preds), dim_zero_cat(self.cells), bandwidth=self.bandwidth,
                                  grid=self.grid, weights=self.weights)

r"""The fairness monitor's engine, shared by the Lightning and Hugging Face callbacks (no trainer imports here).

A :class:`FairnessTracker` holds named torchmetrics metrics, feeds each batch to them by their kind, computes them
over everything seen (synchronised across DDP ranks by torchmetrics) and names every value after its metric, its
statistic and its group:

* ``{name}``: the metric's value (for a stack of statistics, the largest of their gaps);
* ``{name}/{stat}``: each stacked statistic's gap (``eo_relative_gap/tpr``, ``eo_relative_gap/fpr``);
* ``{name}/{stat}/{group}``: each group's statistic (``dp_relative_gap/pr/sex=Female``: that group's positive
  rate).

The metrics see the predictions as probabilities (:func:`monitor_probabilities`), so the default statistics are
soft rates: ``pr`` is a group's mean predicted probability, ``tpr``/``fpr`` its mean probability over the rows
with label 1/0 (not rates of 0/1 decisions at a threshold, which :func:`fairret.report.fairness_report` gives).

Groups: a :class:`~fairret.sensitive.SensitiveAttributes` batch entry is read as
:meth:`~fairret.sensitive.SensitiveAttributes.group_matrix`, as every rate loss and metric reads it (both groups of
a binary attribute; continuous attributes have no groups and reach only the dependence metrics, which get the
SensitiveAttributes itself); a tensor is the ``(N, S)`` group matrix as given. Statistic names are the initials of
their class (``PositiveRate`` → ``pr``, ``TruePositiveRate`` → ``tpr``); group names come from the caller
(``group_names``), else from the SensitiveAttributes' :meth:`~fairret.sensitive.SensitiveAttributes.group_names`,
else ``group_k``.

Small groups: as in :func:`fairret.report.fairness_report`, groups with fewer than ``min_group_size`` rows (default
30) over the epoch are shown (their per-group values are logged and tabled) but left out of the gaps: the logged
``{name}`` and ``{name}/{stat}`` (each metric's ``gap_fn``, :func:`fairret.metric.parity_gap`) and the table's
max − min and relative gap are over the groups with at least ``min_group_size`` rows and a defined value, NaN with
fewer than two such groups. The summary table marks them ``(small)`` and says why.

:meth:`FairnessResult.render` is the text table the callbacks print; its per-group values, overall values,
differences (max − min) and relative gaps come from :func:`fairret.report.compare_groups` on each linear-fractional
metric's sums over the epoch, the computation :func:`fairret.report.fairness_report` tables with.

Collapse check: the tracker also keeps the smallest and largest probability and the number of rows of each
decision (``prob > 0.5`` for one column, the arg-max class for several) over the epoch. When every row gets the same
decision, or the probabilities spread less than :data:`COLLAPSE_SPREAD`, :meth:`FairnessTracker.compute` warns
(:class:`~fairret._validation.CollapsedPredictionsWarning`, the usual causes and their fixes in the message): the
fairness figures of a constant model are no finding.

Example:
    >>> import torch
    >>> tr = FairnessTracker(group_names=["sex=Female", "sex=Male"], min_group_size=1)
    >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> tr.update(torch.tensor([[0.2], [0.6], [0.4], [0.8]]), sens, labels=torch.tensor([1., 0., 0., 1.]))
    >>> res = tr.compute()
    >>> round(res.values["dp_relative_gap"], 4), round(res.values["dp_relative_gap/pr/sex=Male"], 4)
    (0.2, 0.6)
    >>> sorted(k for k in res.values if k.startswith("eo_relative_gap/") and k.count("/") == 1)
    ['eo_relative_gap/fpr', 'eo_relative_gap/tpr']
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torchmetrics

from ._validation import CollapsedPredictionsWarning, check_min_group_size, to_probabilities
from .metric import DependenceMetric, DistanceCorrelation, IntersectionalJSD, LinearFractionalParity, parity_gap
from .report import compare_groups
from .sensitive import SensitiveAttributes
from .statistic import FalsePositiveRate, PositiveRate, StackedLinearFractionalStatistic, TruePositiveRate

__all__ = ["FairnessTracker", "FairnessResult", "SummaryColumn", "binary_cells", "statistic_names",
           "monitor_probabilities", "sens_matrix", "check_metrics", "collapse_message", "COLLAPSE_SPREAD"]

#: Probabilities spreading less than this over an evaluation (largest − smallest, per column) are a constant.
COLLAPSE_SPREAD = 1e-6


def binary_cells(sens: torch.Tensor) -> Optional[torch.Tensor]:
    """Cell ids of the rows of a 0/1 matrix (bit ``j`` = column ``j``), consistent across batches; else None."""
    sens = sens.reshape(sens.shape[0], -1)
    if sens.shape[1] > 62 or not bool(((sens == 0) | (sens == 1)).all()):
        return None
    weights = 2 ** torch.arange(sens.shape[1], device=sens.device, dtype=torch.long)
    return (sens.long() * weights).sum(1)


def statistic_names(statistic: Any) -> List[str]:
    """Short names of a statistic (one per stacked statistic): the lower-case initials of the class name.

    Example:
        >>> from fairret.statistic import EqualizedOdds, PositiveRate
        >>> statistic_names(PositiveRate()), statistic_names(EqualizedOdds())
        (['pr'], ['tpr', 'fpr'])
    """
    parts = list(getattr(statistic, "statistics", [])) if getattr(statistic, "stacked", False) else [statistic]
    names = ["".join(re.findall(r"[A-Z]", type(s).__name__)).lower() or type(s).__name__.lower() for s in parts]
    return [n if names.count(n) == 1 else f"{n}{k}" for k, n in enumerate(names)]


def sens_matrix(sens: Any) -> torch.Tensor:
    """The ``(N, S)`` group matrix the rate metrics read: a tensor as given, a
    :class:`~fairret.sensitive.SensitiveAttributes` as its
    :meth:`~fairret.sensitive.SensitiveAttributes.group_matrix` (both groups of a binary attribute; continuous
    blocks left out), as the rate losses and :class:`~fairret.metric.LinearFractionalParity` read it.

    Example:
        >>> from fairret.sensitive import SensitiveEncoder
        >>> sa = SensitiveEncoder({"sex": "binary"}).fit_transform({"sex": ["F", "M", "M"]})
        >>> sa.matrix.shape, sens_matrix(sa).tolist()
        (torch.Size([3, 1]), [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    """
    mat = sens.group_matrix() if isinstance(sens, SensitiveAttributes) else sens
    if not isinstance(mat, torch.Tensor):
        raise TypeError(f"Expected argument `sens` to select a tensor or a SensitiveAttributes, but got "
                        f"{type(sens).__name__}")
    return mat.reshape(mat.shape[0], -1)


def monitor_probabilities(pred: torch.Tensor, pred_as_logit: bool) -> torch.Tensor:
    """Detached float ``(N, 1)``/``(N, C)`` probabilities; two-class output becomes the positive class' column.

    Logits become probabilities by the losses' rule (:func:`fairret._validation.to_probabilities`); a two-column
    output (a Hugging Face sequence classifier's binary head) is reduced to ``P(class 1)`` so that the binary
    metrics apply.
    """
    pred = pred.detach().float()
    if pred.ndim == 1:
        pred = pred.unsqueeze(1)
    pred = pred.reshape(pred.shape[0], -1)
    if pred_as_logit:
        pred = to_probabilities(pred)
    if pred.shape[1] == 2:
        pred = pred[:, 1:]
    return pred


def check_metrics(metrics: Any) -> Optional[Dict[str, torchmetrics.Metric]]:
    """``None`` or a copy of a non-empty dict of name → torchmetrics Metric; a clear error otherwise."""
    if metrics is None:
        return None
    if not isinstance(metrics, dict) or not metrics:
        raise TypeError(f"Expected argument `metrics` to be a non-empty dict of name -> torchmetrics Metric, "
                        f"but got {metrics!r}")
    for name, m in metrics.items():
        if not isinstance(m, torchmetrics.Metric):
            raise TypeError(f"Expected `metrics[{name!r}]` to be a torchmetrics Metric, but got {type(m).__name__}")
    return dict(metrics)


class _EpochCounts(torchmetrics.Metric):
    """Column sums of the sensitive matrix (rows per group for 0/1 columns), the rows in each group (nonzero
    membership: what ``min_group_size`` counts, as in :func:`fairret.report.fairness_report`), rows seen, and what
    the collapse check reads of the probabilities: their smallest and largest value per column and the rows of each
    decision (below/above 0.5 for one column, the arg-max class for several)."""

    full_state_update = False
    # the states (add_state in __init__), declared for the type checker
    total: torch.Tensor
    members: torch.Tensor
    rows: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    decided: torch.Tensor

    def __init__(self, num_groups: int, num_columns: int):
        super().__init__()
        f64 = torch.float64
        self.add_state("total", default=torch.zeros(num_groups, dtype=f64), dist_reduce_fx="sum")
        self.add_state("members", default=torch.zeros(num_groups, dtype=f64), dist_reduce_fx="sum")
        self.add_state("rows", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("low", default=torch.full((num_columns,), math.inf, dtype=f64), dist_reduce_fx="min")
        self.add_state("high", default=torch.full((num_columns,), -math.inf, dtype=f64), dist_reduce_fx="max")
        self.add_state("decided", default=torch.zeros(max(num_columns, 2), dtype=f64), dist_reduce_fx="sum")

    def update(self, sens: torch.Tensor, prob: torch.Tensor) -> None:
        self.total += sens.detach().to(torch.float64).sum(0)
        self.members += (sens.detach() != 0).sum(0).to(torch.float64)
        self.rows += sens.shape[0]
        if prob.shape[0] == 0 or prob.shape[1] != self.low.shape[0]:
            return
        p = prob.detach().to(torch.float64)
        self.low = torch.minimum(self.low, p.amin(0))
        self.high = torch.maximum(self.high, p.amax(0))
        cls = (p[:, 0] > 0.5).long() if p.shape[1] == 1 else p.argmax(1)
        self.decided += torch.bincount(cls, minlength=self.decided.shape[0]).to(torch.float64)

    def compute(self) -> Tuple[torch.Tensor, ...]:
        """``(total, members, rows, low, high, decided)`` over everything seen (all ranks)."""
        return self.total, self.members, self.rows, self.low, self.high, self.decided


def collapse_message(low: Sequence[float], high: Sequence[float], decided: Sequence[float]) -> Optional[str]:
    """The collapse warning's text for an evaluation's smallest and largest probability per column and its rows
    per decision (below/above 0.5 for one column, per arg-max class for several), or None when the predictions
    have not collapsed (at least two decisions and a spread of at least :data:`COLLAPSE_SPREAD`; fewer than two rows
    say nothing).

    Example:
        >>> collapse_message([0.2], [0.9], [30, 70]) is None
        True
        >>> collapse_message([0.02], [0.31], [100, 0]).split(":")[0]
        'The fairness monitor saw collapsed predictions'
    """
    rows = float(sum(decided))
    if rows < 2 or not low or not all(math.isfinite(v) for v in list(low) + list(high)):
        return None
    spread = max(h - lo for h, lo in zip(high, low))
    full = [k for k, c in enumerate(decided) if c == rows]
    if spread >= COLLAPSE_SPREAD and not full:
        return None
    if spread < COLLAPSE_SPREAD:
        what = (f"every one of the {int(rows)} rows of this evaluation has the same prediction (probability "
                f"{low[0]:.4g}" + (" in the first column" if len(low) > 1 else "") + f"; spread {spread:.2g})")
    elif len(low) == 1:
        what = (f"all {int(rows)} rows of this evaluation are predicted {'positive' if full[0] == 1 else 'negative'} "
                f"at the 0.5 threshold (probabilities from {low[0]:.3g} to {high[0]:.3g})")
    else:
        what = f"all {int(rows)} rows of this evaluation are predicted class {full[0]}"
    return ("The fairness monitor saw collapsed predictions: " + what + ". The fairness figures of a constant model "
            "are no finding. Usual causes and fixes: a penalty weight λ too large for the loss (a constant prediction "
            "is perfectly fair: lower λ; see 'Choosing λ' in the README, or "
            "fairret.functional.calibration.calibrate_lambda); a rate loss given one indicator column per binary "
            "attribute (give it both groups: the SensitiveAttributes itself, or SensitiveEncoder 'categorical'); "
            "or a model that outputs probabilities monitored with pred_as_logit=True (read as logits they all lie "
            "in [0.5, 0.73]: pass pred_as_logit=False). Where every row rightly gets one decision (rare positives), "
            "filter fairret._validation.CollapsedPredictionsWarning.")


class SummaryColumn(NamedTuple):
    """One statistic (row of a linear-fractional metric) in the summary table: its label, per-group values (NaN
    where undefined), overall value, relative gap and difference (max − min) over the groups
    (:func:`fairret.report.compare_groups`). The first four fields are the ``(label, per-group values, overall,
    relative gap)`` tuples of earlier versions."""

    label: str
    values: List[float]
    overall: float
    relative: float
    difference: float


#: What the default statistics' columns are (the predictions reach the metrics as probabilities).
_COLUMN_MEANINGS = {"pr": "mean predicted probability", "tpr": "mean probability where y = 1",
                    "fpr": "mean probability where y = 0"}


@dataclass
class FairnessResult:
    """The values of one epoch, named (see the module docstring), and what the summary table shows.

    Attributes:
        values: relative key → value (``dp_relative_gap``, ``eo_relative_gap/tpr``, ``dp_relative_gap/pr/sex=Male``).
        headline: metric name → value (the keys without a ``/``).
        group_names: the S group names.
        counts: rows per group (column sums of the sensitive matrix), or None.
        rows: rows seen.
        columns: the statistics of the table, each a :class:`SummaryColumn` (per-group values, overall, relative
            gap and difference, from :func:`fairret.report.compare_groups`).
        collapse: the collapse warning's text when the predictions collapsed (:func:`collapse_message`), else None.
        small: per group, whether it had fewer than ``min_group_size`` rows (shown, but left out of the gaps);
            empty when not known.
        min_group_size: the tracker's ``min_group_size``.
    """

    values: Dict[str, float]
    headline: Dict[str, float]
    group_names: List[str]
    counts: Optional[List[float]] = None
    rows: int = 0
    columns: List[SummaryColumn] = field(default_factory=list)
    collapse: Optional[str] = None
    small: List[bool] = field(default_factory=list)
    min_group_size: int = 0

    def prefixed(self, prefix: str) -> Dict[str, float]:
        """``values`` with keys ``{prefix}/{key}``."""
        return {f"{prefix}/{k}": v for k, v in self.values.items()}

    def render(self, title: str) -> str:
        """A text table: one row per group (n and each statistic; ``(small)`` after a group with fewer than
        ``min_group_size`` rows), the overall value, the largest difference between two groups (max − min, same
        units as the statistic) and the relative gap (the largest |group / overall - 1|), both over the groups that
        are not small, then the other metrics' values and notes on what the columns are.

        Example:
            >>> res = FairnessResult({"dp": 0.6, "dp/pr/a": 0.5, "dp/pr/b": 1.0, "jsd": 0.01},
            ...                      {"dp": 0.6, "jsd": 0.01}, ["a", "b"], [3.0, 1.0], 4,
            ...                      [SummaryColumn("pr", [0.5, 1.0], 0.625, 0.6, 0.5)])
            >>> print(res.render("Fairness (test)"))
            Fairness (test), 4 rows
            group              n     pr
            a                  3  0.500
            b                  1  1.000
            all                4  0.625
            max - min             0.500
            relative gap          0.600
            jsd                  0.0100
            pr: mean predicted probability (soft rates, not rates of 0/1 decisions)
        """
        fmt = lambda v: "nan" if v != v else f"{v:.3f}"  # noqa: E731
        width = max([len("relative gap")] + [len(g) for g in self.group_names]) + 2
        cw = max([7] + [len(c.label) + 1 for c in self.columns])
        lines = [f"{title}, {self.rows} rows"]
        if self.columns:
            lines.append(f"{'group':<{width}}{'n':>6}" + "".join(f"{c.label:>{cw}}" for c in self.columns))
            counts = self.counts or [float("nan")] * len(self.group_names)

            def n_str(v: float) -> str:
                return "" if v != v else (f"{int(v)}" if float(v).is_integer() else f"{v:.1f}")

            for g, name in enumerate(self.group_names):
                flag = "  (small)" if g < len(self.small) and self.small[g] else ""
                lines.append(f"{name:<{width}}{n_str(counts[g]):>6}" + "".join(
                    f"{fmt(c.values[g]):>{cw}}" for c in self.columns) + flag)
            lines.append(f"{'all':<{width}}{n_str(float(self.rows)):>6}" + "".join(
                f"{fmt(c.overall):>{cw}}" for c in self.columns))
            lines.append(f"{'max - min':<{width}}{'':>6}" + "".join(f"{fmt(c.difference):>{cw}}"
                                                                    for c in self.columns))
            lines.append(f"{'relative gap':<{width}}{'':>6}" + "".join(f"{fmt(c.relative):>{cw}}"
                                                                       for c in self.columns))
        for name, v in self.headline.items():  # the metrics without per-group values (JSD, dCor², ...)
            if not any(k.startswith(name + "/") for k in self.values):
                lines.append(f"{name:<{width}}{'':>6}{v:>{cw}.4f}")
        if self.columns and any(self.small):
            lines.append(f"(small): fewer than {max(self.min_group_size, 1)} rows (min_group_size): shown, but left "
                         f"out of max - min and the relative gap")
        meaning = [f"{k}: {v}" for k, v in _COLUMN_MEANINGS.items()
                   if any(c.label.split(":")[-1] == k for c in self.columns)]
        if meaning:
            lines.append("; ".join(meaning) + " (soft rates, not rates of 0/1 decisions)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render("Fairness")


def _compared_gap(sums: Any, gap_fn: Any, compared: Optional[torch.Tensor]) -> torch.Tensor:
    """A linear-fractional metric's gap (its ``gap_fn``, :func:`fairret.metric.parity_gap`) over the compared groups
    (``compared``: ``(S,)``, None for all) with a defined value; NaN for a row with fewer than two such groups, as
    in the summary table (:func:`fairret.report.group_gaps`)."""
    gap = parity_gap(sums, gap_fn, compared).double()
    valid = sums.valid if compared is None else sums.valid & compared.to(sums.valid.device)
    enough = valid.sum(-1) >= 2
    if gap.shape == enough.shape:
        return torch.where(enough, gap, torch.full_like(gap, float("nan"))).float()
    return (gap if bool(enough.any()) else torch.full_like(gap, float("nan"))).float()  # a gap_fn over all rows


class FairnessTracker:
    """Named fairness metrics over an epoch (see the module docstring).

    Args:
        metrics: name → torchmetrics metric, fed by kind: :class:`~fairret.metric.LinearFractionalParity` gets
            ``(prob, sens[, labels])``, every :class:`~fairret.metric.DependenceMetric` ``(prob, attributes)``,
            :class:`~fairret.metric.IntersectionalJSD` ``(prob, cells)``, any other ``(prob, labels)``. Default
            (``None``, built at the first update once S is known): ``dp_relative_gap`` (positive rate),
            ``eo_relative_gap`` (TPR and FPR stacked, with labels), ``jsd`` (with cells), ``dcor``.
        group_names: the S group names (default: as in the module docstring).
        min_group_size: groups with fewer rows over the epoch are shown but left out of the gaps (the module
            docstring); default 30, as in :func:`fairret.report.fairness_report`; 0 or 1 compares every group.
    """

    def __init__(self, metrics: Optional[Dict[str, torchmetrics.Metric]] = None,
                 group_names: Optional[Sequence[str]] = None, min_group_size: int = 30):
        self.metrics = check_metrics(metrics)
        if group_names is not None and (isinstance(group_names, str) or
                                        not all(isinstance(g, str) for g in group_names)):
            raise TypeError(f"Expected argument `group_names` to be a list of strings, but got {group_names!r}")
        self.min_group_size = check_min_group_size(min_group_size)
        self.group_names: Optional[List[str]] = list(group_names) if group_names is not None else None
        self.fallback_names: Optional[List[str]] = None  # e.g. a data module's, used when they fit S
        self._batch_names: Optional[List[str]] = None
        self._counts: Optional[_EpochCounts] = None
        self._device: Optional[torch.device] = None

    # --- state ----------------------------------------------------------------------------------------------------
    def _all(self) -> List[torchmetrics.Metric]:
        return list((self.metrics or {}).values()) + ([self._counts] if self._counts is not None else [])

    def to(self, device: Any) -> "FairnessTracker":
        self._device = torch.device(device)
        for m in self._all():
            m.to(device)
        return self

    def reset(self) -> None:
        for m in self._all():
            m.reset()

    def _default_metrics(self, s: int, classes: int, has_labels: bool, has_cells: bool) -> Dict[str, Any]:
        shape = (s,) if classes == 1 else (classes, s)
        # the predictions reach the metrics as probabilities already (update's ``prob``): taken as given
        metrics: Dict[str, torchmetrics.Metric] = {
            "dp_relative_gap": LinearFractionalParity(PositiveRate(), shape, pred_as_logit=False)}
        if has_labels:
            eo = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
            metrics["eo_relative_gap"] = LinearFractionalParity(eo, (2, *shape), pred_as_logit=False)
        if has_cells and classes == 1:
            metrics["jsd"] = IntersectionalJSD()
        metrics["dcor"] = DistanceCorrelation()
        return metrics

    # --- batches --------------------------------------------------------------------------------------------------
    def update(self, prob: torch.Tensor, sens: Any, labels: Any = None, attributes: Any = None,
               cells: Any = None) -> None:
        """Add a batch: probabilities ``(N, 1)``/``(N, C)`` (see :func:`monitor_probabilities`), the ``(N, S)``
        group matrix or a SensitiveAttributes (its group matrix, :func:`sens_matrix`), labels, the dependence
        metrics' attributes (default ``sens``) and intersectional cell ids (default: from a 0/1 group matrix)."""
        mat = sens_matrix(sens)
        if mat.device != prob.device:  # e.g. a SensitiveAttributes a Trainer left on the CPU
            mat = mat.to(prob.device)
        if self._batch_names is None and isinstance(sens, SensitiveAttributes):
            self._batch_names = sens.group_names()
        attrs = sens if attributes is None else attributes
        if cells is None:
            cells = binary_cells(mat)
        if self.metrics is None:
            self.metrics = self._default_metrics(mat.shape[1], prob.shape[1], labels is not None, cells is not None)
            if self._device is not None:
                for m in self.metrics.values():
                    m.to(self._device)
        if self._counts is None:
            self._counts = _EpochCounts(mat.shape[1], prob.shape[1]).to(self._device or mat.device)
        if self._counts.total.shape[0] == mat.shape[1]:
            self._counts.update(mat, prob)
        for name, metric in self.metrics.items():
            if isinstance(metric, LinearFractionalParity):
                if metric.requires_labels:
                    if labels is None:
                        raise ValueError(f"Metric {name!r} ({type(metric.stat).__name__}) takes the label: set "
                                         f"argument `labels`")
                    metric.update(prob, mat, labels)
                else:
                    metric.update(prob, mat)
            elif isinstance(metric, IntersectionalJSD):
                if cells is None:
                    raise ValueError(f"Metric {name!r} needs intersectional cells: set argument `cells` (the 0/1 "
                                     f"`sens` rule does not apply to this batch's sensitive matrix)")
                metric.update(prob[:, -1], cells)
            elif isinstance(metric, DependenceMetric):
                metric.update(prob, attrs)
            else:
                if labels is None:
                    raise ValueError(f"Metric {name!r} ({type(metric).__name__}) is updated with (prob, labels): set "
                                     f"argument `labels`")
                metric.update(prob.squeeze(1) if prob.shape[1] == 1 else prob, labels)

    # --- epoch end ------------------------------------------------------------------------------------------------
    def names_for(self, s: int) -> List[str]:
        """The S group names: ``group_names``, else the group names of a SensitiveAttributes seen
        (:meth:`~fairret.sensitive.SensitiveAttributes.group_names`), else ``fallback_names``, else ``group_k``."""
        if self.group_names is not None:
            if len(self.group_names) != s:
                raise ValueError(f"Expected argument `group_names` to name the S={s} columns of `sens`, but got "
                                 f"{len(self.group_names)} names: {self.group_names}")
            return list(self.group_names)
        for names in (self._batch_names, self.fallback_names):
            if names is not None and len(names) == s:
                return list(names)
        return [f"group_{k}" for k in range(s)]

    @staticmethod
    def _row_labels(metric: LinearFractionalParity) -> List[str]:
        stats = statistic_names(metric.stat)
        shape = metric.stat_shape
        lead = shape[1:-1] if getattr(metric.stat, "stacked", False) else shape[:-1]
        classes = math.prod(lead)
        if classes == 1:
            return stats
        return [f"{s}_class{c}" for s in stats for c in range(classes)]

    def compute(self, warn: bool = True) -> Optional[FairnessResult]:
        """Every metric over everything seen (all ranks), named; None before the first update.

        Per-group values, overall values, differences and relative gaps of the linear-fractional metrics come from
        :func:`fairret.report.compare_groups` on their sums. With ``warn`` (the callbacks pass it on the main
        process, outside Lightning's sanity check) collapsed predictions warn
        (:class:`~fairret._validation.CollapsedPredictionsWarning`; the text is also in ``result.collapse``).
        """
        if self.metrics is None:
            return None
        values: Dict[str, float] = {}
        headline: Dict[str, float] = {}
        columns: List[SummaryColumn] = []
        owners: List[str] = []
        names: List[str] = []
        counts, members, rows_seen, collapse = None, None, 0, None
        if self._counts is not None and self._counts.update_called:
            # synchronised (torchmetrics' compute, which also squeezes one-element states: reshaped back)
            total, members_t, rows_t, low, high, decided = (t.reshape(-1) for t in self._counts.compute())
            counts, members, rows_seen = total.tolist(), members_t, int(rows_t)
            collapse = collapse_message(low.tolist(), high.tolist(), decided.tolist())
        judged = None if members is None else members >= max(self.min_group_size, 1)
        for name, metric in self.metrics.items():
            if not metric.update_called:
                continue
            if isinstance(metric, LinearFractionalParity):
                sums = metric.compute_sums()
                compared = (judged.to(sums.num.device) if judged is not None and judged.shape[0] == sums.num.shape[-1]
                            else None)
                value = _compared_gap(sums, metric.gap_fn, compared)
            else:
                value = torch.as_tensor(metric.compute()).float()
            gaps = value.reshape(-1).tolist()
            if isinstance(metric, LinearFractionalParity):
                labels = self._row_labels(metric)
                table = compare_groups(sums, compared)
                names = self.names_for(table.values.shape[-1])
                if len(gaps) != len(labels):
                    gaps = gaps[:1] * len(labels)
                for r, label in enumerate(labels):
                    row = table.values[r].tolist()
                    if len(labels) > 1:
                        values[f"{name}/{label}"] = gaps[r]
                    for g, v in zip(names, row):
                        if v == v:  # skip groups never seen (NaN)
                            values[f"{name}/{label}/{g}"] = float(v)
                    columns.append(SummaryColumn(label, row, float(table.overall[r]), float(table.relative[r]),
                                                 float(table.difference[r])))
                    owners.append(name)
            finite = value[~value.isnan()]
            top = float(finite.max()) if finite.numel() else float("nan")  # the largest gap that is defined
            values[name] = headline[name] = top
        labels_seen = [c.label for c in columns]
        if len(set(labels_seen)) < len(labels_seen):  # the same statistic in two metrics: name the metric in it
            columns = [c._replace(label=f"{o}:{c.label}") if labels_seen.count(c.label) > 1 else c
                       for o, c in zip(owners, columns)]
        if counts is not None and not names:
            names = self.names_for(len(counts))
        small = (~judged).tolist() if judged is not None and len(judged) == len(names) else []
        if collapse is not None and warn:
            warnings.warn(collapse, CollapsedPredictionsWarning, stacklevel=2)
        return FairnessResult(values, headline, names, counts, rows_seen, columns, collapse, small,
                              self.min_group_size)

r"""A fairness audit of given predictions in one call: :func:`fairness_report`, and its command line.

``fairness_report(pred, labels, sens)`` takes predictions (logits or probabilities of the positive class, or
regression outputs with ``threshold=None``), optional 0/1 labels and the protected attributes, and returns a
:class:`FairnessReport`: for every attribute (and intersection, on request) a table of its groups (n, positive
rate, TPR, FPR, PPV, accuracy and mean score; mean prediction for regression) with bootstrap confidence intervals,
the between-group differences (max − min, in points for rates) and the relative gaps (the largest
:math:`|\gamma_k/\gamma - 1|`) with their intervals, and warnings for groups too small to judge.

Everything is computed by the library's statistics (:mod:`fairret.statistic`, through
:meth:`~fairret.statistic.LinearFractionalStatistic.sums`, the one implementation the losses and
:class:`~fairret.metric.LinearFractionalParity` use) and gap functions (:func:`~fairret.metric.gap_max_min`,
:func:`~fairret.metric.gap_relative_abs_max`), put together once in :func:`compare_groups` (per-group values and
between-group figures from sums) and :func:`group_gaps`; the intervals by :func:`fairret.stats.bootstrap_cis` (rows
resampled with replacement; a bootstrap replicate is a weighting of the rows, so it goes through the same sums).
The demo (:mod:`fairret.demo`: accuracy, DP and EO differences) reports through :func:`fairness_report`, and the
Lightning and Hugging Face fairness monitors build their summary tables with :func:`compare_groups` from their
metrics' sums over the epoch (synchronised across ranks).

Rates are on decisions ``prob > threshold`` (as the demo's DP and EO differences); the mean score is the mean
probability. Predictions follow the library's convention (:mod:`fairret._validation`): ``pred_as_logit=None``
(default) reads values outside [0, 1] as logits (``prob = sigmoid(pred)``) and says so with a
:class:`~fairret._validation.PredictionWarning`, the one category of the library for the prediction convention;
``True``/``False`` say it. The report's first line states what was done (``decisions sigmoid(pred) > 0.5, pred
read as logits`` or ``decisions pred > 0.5, pred read as probabilities``). What limits the report itself (small
groups, undefined statistics, left-out attributes) is a :class:`ReportWarning`, issued separately.

Groups: ``sens`` may be a :class:`~fairret.sensitive.SensitiveAttributes` (each binary, categorical or intersection
block an attribute; continuous blocks are left out with a note), a mapping of attribute name to raw values
(strings, numbers, bools; e.g. ``{"race": race, "sex": sex}``), a 1-D array of group values, or an ``(N, S)`` 0/1
group matrix (a single 0/1 column gives its two groups, 0 and 1). Groups with fewer than ``min_group_size`` rows
are listed but left out of the differences, with a warning.

Command line (a CSV with a header row)::

    python -m fairret.report preds.csv --pred score --label y --sens race,sex --intersections

Example:
    >>> import numpy as np
    >>> prob = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7, 0.4])
    >>> y = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    >>> sex = np.array(["F", "F", "F", "F", "M", "M", "M", "M"])
    >>> r = fairness_report(prob, y, {"sex": sex}, min_group_size=1, n_boot=0)
    >>> [(row["group"], row["n"], row["positive_rate"]) for row in r.table("sex")]
    [('F', 4, 0.75), ('M', 4, 0.25)]
    >>> round(r.gap("sex", "positive_rate").difference, 4)  # 75% - 25%
    0.5
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._validation import (PredictionWarning, check_groups, check_min_group_size, resolve_pred_as_logit,
                          to_probabilities)
from .functional.linear_fractional import LinearFractionalSums
from .metric import fill_absent, gap_max_min, gap_relative_abs_max
from .sensitive import SensitiveAttributes, one_hot_groups
from .statistic import (Accuracy, FalsePositiveRate, LinearFractionalStatistic, MeanPrediction,
                        PositivePredictiveValue, PositiveRate, TruePositiveRate)
from .stats import bootstrap_cis

__all__ = ["fairness_report", "FairnessReport", "GroupRow", "Gap", "ReportWarning", "compare_groups", "GroupComparison",
           "group_gaps", "main"]

#: Statistic name → (label, statistic, input it reads: ``hard`` decisions, ``soft`` scores, ``raw`` regression
#: outputs or ``resid`` prediction minus label, whether it takes the label, whether it is a rate (shown in %)).
_STATS: Dict[str, Tuple[str, LinearFractionalStatistic, str, bool, bool]] = {
    "positive_rate": ("positive rate", PositiveRate(), "hard", False, True),
    "tpr": ("TPR", TruePositiveRate(), "hard", True, True),
    "fpr": ("FPR", FalsePositiveRate(), "hard", True, True),
    "ppv": ("PPV", PositivePredictiveValue(), "hard", True, True),
    "accuracy": ("accuracy", Accuracy(), "hard", True, True),
    "mean_score": ("mean score", MeanPrediction(), "soft", False, True),
    "mean_prediction": ("mean prediction", MeanPrediction(), "raw", False, False),
    "mean_label": ("mean label", MeanPrediction(), "label", False, False),
    "mean_residual": ("mean residual", MeanPrediction(), "resid", False, False),
}


class ReportWarning(UserWarning):
    """Something in a fairness report that limits what it can say (small groups, undefined statistics, attributes
    left out). Reading ``pred`` as logits is a :class:`~fairret._validation.PredictionWarning` instead, as
    everywhere in the library."""


@dataclass
class GroupRow:
    """One group of one attribute: its size, statistic values (fractions for rates; NaN where undefined, e.g. a
    TPR without positives) and their bootstrap intervals ``(low, high)``; ``small`` when ``n < min_group_size``."""

    attribute: str
    group: str
    n: int
    values: Dict[str, float]
    ci: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    small: bool = False


@dataclass
class Gap:
    """Between-group figures of one statistic for one attribute, over the groups large enough to judge.

    Attributes:
        difference: max − min of the groups' values (:func:`~fairret.metric.gap_max_min`); a fraction for rates
            (×100 for points).
        relative: the largest relative gap of a group to the overall value,
            :math:`\\max_k |\\gamma_k/\\gamma - 1|` (:func:`~fairret.metric.gap_relative_abs_max`).
        ci, relative_ci: bootstrap intervals of both (NaN when no bootstrap was asked for).
        groups: the groups compared; ``highest``/``lowest``: where the maximum and minimum are.
    """

    attribute: str
    statistic: str
    difference: float
    relative: float
    ci: Tuple[float, float]
    relative_ci: Tuple[float, float]
    groups: List[str]
    highest: str
    lowest: str


@dataclass
class _Attribute:
    name: str
    groups: List[str]
    member: torch.Tensor  # (N, G) float64 membership weights


@dataclass
class FairnessReport:
    """The result of :func:`fairness_report`: per-group tables, gaps and warnings; render with :meth:`to_markdown`
    or ``str()``, export with :meth:`to_dict`, draw with :meth:`plot`."""

    task: str
    n: int
    threshold: Optional[float]
    pred_as_logit: bool
    statistics: List[str]
    overall: Dict[str, float]
    rows: List[GroupRow]
    gaps: List[Gap]
    warnings: List[str]
    level: float
    n_boot: int
    min_group_size: int

    @property
    def attributes(self) -> List[str]:
        """Attribute (and intersection) names, in order."""
        return list(dict.fromkeys(r.attribute for r in self.rows))

    def table(self, attribute: str) -> List[Dict[str, Any]]:
        """The rows of one attribute as dicts: ``group``, ``n``, ``small`` and one entry per statistic."""
        self._check_attribute(attribute)
        return [{"group": r.group, "n": r.n, "small": r.small, **r.values} for r in self.rows
                if r.attribute == attribute]

    def gap(self, attribute: str, statistic: str) -> Gap:
        """The :class:`Gap` of one statistic for one attribute."""
        self._check_attribute(attribute)
        for g in self.gaps:
            if g.attribute == attribute and g.statistic == statistic:
                return g
        raise KeyError(f"No statistic {statistic!r} in this report; have {self.statistics}")

    def _check_attribute(self, attribute: str) -> None:
        if attribute not in self.attributes:
            raise KeyError(f"No attribute {attribute!r} in this report; have {self.attributes}")

    def to_dict(self) -> Dict[str, Any]:
        """Everything as plain Python values (JSON-serialisable; NaN where undefined)."""
        return {
            "task": self.task, "n": self.n, "threshold": self.threshold, "pred_as_logit": self.pred_as_logit,
            "statistics": list(self.statistics), "overall": dict(self.overall), "level": self.level,
            "n_boot": self.n_boot, "min_group_size": self.min_group_size,
            "groups": [{"attribute": r.attribute, "group": r.group, "n": r.n, "small": r.small,
                        "values": dict(r.values), "ci": {k: list(v) for k, v in r.ci.items()}} for r in self.rows],
            "gaps": [{"attribute": g.attribute, "statistic": g.statistic, "difference": g.difference,
                      "relative": g.relative, "ci": list(g.ci), "relative_ci": list(g.relative_ci),
                      "groups": list(g.groups), "highest": g.highest, "lowest": g.lowest} for g in self.gaps],
            "warnings": list(self.warnings),
        }

    # -- rendering ---------------------------------------------------------------------------------------------
    def _fmt(self, stat: str, v: float, ci: Optional[Tuple[float, float]] = None, scale: Optional[float] = None
             ) -> str:
        if v is None or not math.isfinite(v):
            return "–"
        k = (100.0 if _STATS[stat][4] else 1.0) if scale is None else scale
        digits = 1 if k == 100.0 else 3
        s = f"{k * v:.{digits}f}"
        if ci is not None and all(math.isfinite(c) for c in ci):
            s += f" [{k * ci[0]:.{digits}f}, {k * ci[1]:.{digits}f}]"
        return s

    def _tables(self) -> List[Tuple[str, List[str], List[List[str]]]]:
        out = []
        for attr in self.attributes:
            head = ["group", "n"] + [_STATS[s][0] + (" %" if _STATS[s][4] else "") for s in self.statistics]
            body = []
            for r in self.rows:
                if r.attribute == attr:
                    body.append([r.group + (" (small)" if r.small else ""), str(r.n)]
                                + [self._fmt(s, r.values[s], r.ci.get(s)) for s in self.statistics])
            out.append((f"{attr}: groups", head, body))
            head = ["statistic", "difference" + (" (points)" if self.task == "classification" else ""),
                    "relative gap", "highest", "lowest"]
            body = [[_STATS[g.statistic][0], self._fmt(g.statistic, g.difference, g.ci),
                     self._fmt(g.statistic, g.relative, g.relative_ci, scale=1.0), g.highest, g.lowest]
                    for g in self.gaps if g.attribute == attr]
            out.append((f"{attr}: between groups", head, body))
        return out

    def _intro(self) -> str:
        if self.task != "classification":
            what = "regression outputs"
        elif self.pred_as_logit:
            what = f"decisions sigmoid(pred) > {self.threshold:g}, pred read as logits"
        else:
            what = f"decisions pred > {self.threshold:g}, pred read as probabilities"
        ci = (f"{100 * self.level:g}% bootstrap intervals ({self.n_boot} replicates)" if self.n_boot else
              "no intervals (n_boot=0)")
        least = max(self.min_group_size, 1)
        return (f"Fairness report: {self.n} rows, {what}; {ci}. Differences are max − min over groups with at least "
                f"{least} row{'' if least == 1 else 's'}; the relative gap is the largest |group / overall − 1|.")

    def to_markdown(self) -> str:
        """Markdown: an introduction, two tables per attribute (groups; between groups) and the warnings."""
        parts = [self._intro(), ""]
        for title, head, body in self._tables():
            parts += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            parts += ["| " + " | ".join(row) + " |" for row in body] + [""]
        if self.warnings:
            parts += ["**Warnings**", ""] + [f"- {w}" for w in self.warnings] + [""]
        return "\n".join(parts)

    def to_text(self) -> str:
        """Plain text with aligned columns (what ``str(report)`` gives)."""
        parts = [self._intro(), ""]
        for title, head, body in self._tables():
            widths = [max(len(x) for x in col) for col in zip(head, *body)]
            parts.append(title)
            for row in [head] + body:
                parts.append("  " + "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
            parts.append("")
        parts += ["Warnings:"] + [f"  - {w}" for w in self.warnings] if self.warnings else []
        return "\n".join(parts).rstrip() + "\n"

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, statistics: Optional[Sequence[str]] = None, attributes: Optional[Sequence[str]] = None):
        """Per-group values with their intervals, one panel per statistic (needs matplotlib, the ``plot`` extra).

        Two panels a row; small groups are drawn hollow, the overall value dashed. Returns ``(figure, axes)``, one
        axis per statistic.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("FairnessReport.plot needs matplotlib: pip install 'fairret-plus[plot]'") from err
        stats = list(statistics or self.statistics)
        attrs = list(attributes or self.attributes)
        for s in stats:
            if s not in self.statistics:
                raise ValueError(f"Expected argument `statistics` to name statistics of this report "
                                 f"{self.statistics}, but got {s!r}")
        rows = [r for r in self.rows if r.attribute in attrs]
        ncols = min(2, len(stats))
        nrows = -(-len(stats) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * max(4.0, 2.0 + 0.3 * len(rows)), 3.8 * nrows),
                                 squeeze=False)
        axes = axes.reshape(-1)
        for ax in axes[len(stats):]:
            ax.set_visible(False)
        axes = axes[:len(stats)]
        xs = np.arange(len(rows))
        names = [f"{r.attribute}={r.group}" for r in rows]
        for ax, s in zip(axes, stats):
            k = 100.0 if _STATS[s][4] else 1.0
            for x, r in zip(xs, rows):
                v = r.values[s]
                if not math.isfinite(v):
                    continue
                lo, hi = r.ci.get(s, (float("nan"), float("nan")))
                yerr = [[k * (v - lo)], [k * (hi - v)]] if math.isfinite(lo) and math.isfinite(hi) else None
                ax.errorbar([x], [k * v], yerr=yerr, fmt="o", color="C0", capsize=3,
                            markerfacecolor="white" if r.small else "C0")
            if s in self.overall and math.isfinite(self.overall[s]):
                ax.axhline(k * self.overall[s], linestyle="--", color="k", linewidth=1, label="overall")
            ax.set_xticks(xs)
            ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
            ax.set_title(_STATS[s][0] + (" (%)" if k == 100.0 else ""))
        fig.tight_layout()
        return fig, list(axes)


# -- inputs ------------------------------------------------------------------------------------------------------
def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            arr = np.asarray(x)
        except Exception as err:  # pragma: no cover - numpy accepts nearly anything
            raise TypeError(f"Expected argument `{name}` to be array-like, but got {type(x).__name__}") from err
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"Expected argument `{name}` to hold numbers or bools, but got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.float64))
    t = t.to(torch.float64)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"Expected argument `{name}` to have shape (N,) or (N, 1) (one score per row: the positive "
                         f"class's logit or probability, or a regression output), but got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"Expected argument `{name}` to be finite, but it holds "
                         f"{int((~torch.isfinite(t)).sum())} NaN or infinite values")
    return t


def _categories(values: Any, name: str, n: int) -> _Attribute:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"Expected attribute `{name}` of `sens` to have shape ({n},) like `pred`, but got "
                         f"{arr.shape}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"Expected attribute `{name}` of `sens` to have no missing values, but it holds NaN; give "
                         f"them a category of their own or drop those rows")
    if arr.dtype.kind == "f" and bool((arr == np.round(arr)).all()):
        arr = arr.astype(np.int64)  # group codes given as floats: name them 0, 1, not 0.0, 1.0
    cats = sorted(set(arr.tolist()), key=lambda c: (str(type(c)), c))
    index = {c: i for i, c in enumerate(cats)}
    codes = torch.tensor([index[v] for v in arr.tolist()], dtype=torch.long)
    member = torch.zeros(n, len(cats), dtype=torch.float64)
    member[torch.arange(n), codes] = 1.0
    return _Attribute(name, [str(c) for c in cats], member)


def _attributes(sens: Any, n: int, group_names: Optional[Sequence[str]], notes: List[str]) -> List[_Attribute]:
    if isinstance(sens, SensitiveAttributes):
        if len(sens) != n:
            raise ValueError(f"Expected argument `sens` to have N={n} rows like `pred`, but got {len(sens)}")
        out = []
        for b in sens.blocks:
            if b.kind not in sens.GROUP_KINDS:
                notes.append(f"`{b.name}` is continuous and has no groups: it is left out (bin it into categories, "
                             f"or measure it with DistanceCorrelation)")
                continue
            names = [g.split("=", 1)[1] for g in sens.group_names([b.name])]  # membership, not the weights
            out.append(_Attribute(b.name, names, one_hot_groups(sens.group_ids[b.name].cpu(), len(names),
                                                                torch.float64)))
        return out
    if isinstance(sens, Mapping) or (hasattr(sens, "items") and hasattr(sens, "columns")):  # dict, DataFrame
        return [_categories(v, str(k), n) for k, v in sens.items()]
    if isinstance(sens, (list, tuple)) and sens and not np.isscalar(sens[0]) and len(sens) != n:
        raise TypeError("Expected argument `sens` to be a SensitiveAttributes, a mapping of name to values, a 1-D "
                        "array or an (N, S) group matrix; give several attributes as a dict")
    if isinstance(sens, torch.Tensor):
        mat = sens.detach().cpu()
    else:
        arr = np.asarray(sens)
        if arr.dtype.kind not in "biuf":
            if arr.ndim != 1:
                raise ValueError(f"Expected a non-numeric `sens` to be one column of group values, but got shape "
                                 f"{arr.shape}")
            return [_categories(arr, "group", n)]
        mat = torch.from_numpy(arr.astype(np.float64))
    if mat.ndim == 1 or (mat.ndim == 2 and mat.shape[1] == 1):
        return [_categories(mat.reshape(-1).double().numpy(), "group", n)]
    if mat.ndim != 2 or mat.shape[0] != n:
        raise ValueError(f"Expected argument `sens` to be (N,) group values or an (N, S) group matrix with N={n}, "
                         f"but got shape {tuple(mat.shape)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_groups(mat.double(), "fairness_report", read_values=True)
    notes.extend(str(w.message) for w in caught)
    names = list(group_names) if group_names is not None else [str(k) for k in range(mat.shape[1])]
    if len(names) != mat.shape[1]:
        raise ValueError(f"Expected argument `group_names` to name the {mat.shape[1]} columns of `sens`, but got "
                         f"{len(names)}")
    return [_Attribute("group", names, mat.double())]


def _intersections(attrs: List[_Attribute], which: Union[bool, Sequence[Sequence[str]]]) -> List[_Attribute]:
    if which is False or which is None:
        return []
    by_name = {a.name: a for a in attrs}
    combos = [tuple(a.name for a in attrs)] if which is True else [tuple(c) for c in which]
    out = []
    for combo in combos:
        if len(combo) < 2:
            if which is True:
                return []
            raise ValueError(f"Expected each intersection to name at least two attributes, but got {combo!r}")
        parts = []
        for name in combo:
            if name not in by_name:
                raise ValueError(f"Intersection {combo!r} names `{name}`, which is not an attribute of `sens` "
                                 f"{list(by_name)}")
            m = by_name[name].member
            if not bool(((m == 0) | (m == 1)).all()) or bool((m.sum(1) > 1).any()):
                raise ValueError(f"Attribute `{name}` is not a partition into groups (rows in several groups, or "
                                 f"weights): it cannot be intersected")
            parts.append(by_name[name])
        member = parts[0].member
        names = list(parts[0].groups)
        for p in parts[1:]:
            member = (member[:, :, None] * p.member[:, None, :]).reshape(member.shape[0], -1)
            names = [f"{a}&{b}" for a in names for b in p.groups]
        keep = member.sum(0) > 0  # empty cells are not groups
        out.append(_Attribute("&".join(combo), [g for g, k in zip(names, keep.tolist()) if k], member[:, keep]))
    return out


# -- computation -------------------------------------------------------------------------------------------------
def _inputs(stats: Sequence[str], hard: Optional[torch.Tensor], soft: Optional[torch.Tensor],
            raw: Optional[torch.Tensor], y: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    src = {"hard": hard, "soft": soft, "raw": raw, "label": y,
           "resid": None if raw is None or y is None else raw - y}
    out = {}
    for s in stats:
        t = src[_STATS[s][2]]
        if t is None:  # fairness_report picks the statistics from the inputs it has
            raise RuntimeError(f"fairness_report: statistic {s!r} has no {_STATS[s][2]!r} input")
        out[s] = t.unsqueeze(1)
    return out


def _sums(stats: Sequence[str], inputs: Dict[str, torch.Tensor], y: Optional[torch.Tensor], member: torch.Tensor
          ) -> LinearFractionalSums:
    """The statistics' sums over the groups (columns) of ``member``, stacked: ``(K, G)``, overall ``(K, 1)``."""
    parts = []
    for s in stats:
        stat, takes_label = _STATS[s][1], _STATS[s][3]
        label_args: Tuple[torch.Tensor, ...] = ()
        if takes_label:
            if y is None:  # fairness_report picks the statistics that take the label only when it has labels
                raise RuntimeError(f"fairness_report: statistic {s!r} takes the labels, but none were given")
            label_args = (y.unsqueeze(1),)
        parts.append(stat.sums(inputs[s], member, *label_args))
    g = member.shape[1]
    group = [torch.cat([getattr(p, k).reshape(1, g) for p in parts]) for k in ("num", "denom")]
    overall = [torch.cat([getattr(p, k).reshape(1, 1) for p in parts]) for k in ("overall_num", "overall_denom")]
    return LinearFractionalSums.from_sums(*group, *overall)


def group_gaps(vals: torch.Tensor, valid: torch.Tensor, overall: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The between-group figures of per-group values: the difference max − min
    (:func:`~fairret.metric.gap_max_min`) and the relative gap :math:`\max_k |\gamma_k/\gamma - 1|`
    (:func:`~fairret.metric.gap_relative_abs_max`), over the groups with a defined value.

    The one place these figures are taken from per-group values: :func:`fairness_report`, its bootstrap, the demo
    and the fairness monitors' summary tables (:func:`compare_groups`) all use it.

    Args:
        vals: ``(..., G)`` per-group values (anything where ``valid`` is False).
        valid: ``(..., G)`` True where the group's value is defined.
        overall: ``(..., 1)`` overall values (the reference of the relative gap).

    Returns:
        ``(difference, relative)``, each ``(...)``; NaN where fewer than two groups have a defined value.

    Example:
        >>> d, r = group_gaps(torch.tensor([0.2, 0.5, 9.0]), torch.tensor([True, True, False]), torch.tensor([0.4]))
        >>> round(d.item(), 4), round(r.item(), 4)  # 0.5 - 0.2; |0.2 / 0.4 - 1|
        (0.3, 0.5)
    """
    if vals.shape[-1] == 0:
        nan = torch.full(vals.shape[:-1], float("nan"), dtype=vals.dtype)
        return nan, nan.clone()
    filled = fill_absent(vals, valid, overall)
    enough = valid.sum(-1) >= 2
    nan = torch.full(enough.shape, float("nan"), dtype=vals.dtype)
    return (torch.where(enough, gap_max_min(filled), nan),
            torch.where(enough, gap_relative_abs_max(filled, overall), nan))


@dataclass
class GroupComparison:
    """Per-group values of statistics and their between-group figures (:func:`compare_groups`); ``R`` rows (one
    per statistic, stacked statistic and class), ``G`` groups.

    Attributes:
        values: ``(R, G)`` float64 per-group values, NaN where undefined (a group without rows, or without the rows
            the statistic conditions on).
        valid: ``(R, G)`` True where defined.
        overall: ``(R,)`` the values over all rows.
        difference: ``(R,)`` max − min over the compared groups with a defined value (NaN with fewer than two).
        relative: ``(R,)`` the largest :math:`|\\gamma_k/\\gamma - 1|` over the same groups (NaN likewise).
    """

    values: torch.Tensor
    valid: torch.Tensor
    overall: torch.Tensor
    difference: torch.Tensor
    relative: torch.Tensor


def compare_groups(sums: LinearFractionalSums, compared: Optional[torch.Tensor] = None) -> GroupComparison:
    """Per-group values and between-group figures of statistics from their sums.

    ``sums`` are those of :meth:`~fairret.statistic.LinearFractionalStatistic.sums` (one batch) or of
    :meth:`~fairret.metric.LinearFractionalParity.compute_sums` (accumulated over an epoch and all ranks): the
    per-group values are the statistic's own (one implementation, as in the losses), the figures those of
    :func:`group_gaps`. :func:`fairness_report` tables its groups through it, and the Lightning and Hugging Face
    monitors' summary tables are built from it.

    Args:
        sums: sums with groups on the last axis (leading axes, statistics and classes, are flattened to rows).
        compared: ``(G,)`` boolean mask of the groups the differences compare (default: all; the report leaves
            out groups smaller than its ``min_group_size``).

    Example:
        >>> from fairret.statistic import PositiveRate
        >>> sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
        >>> c = compare_groups(PositiveRate().sums(torch.tensor([[1.], [0.], [1.], [1.]]), sens))
        >>> c.values, c.overall, c.difference
        (tensor([[0.5000, 1.0000]]), tensor([0.7500]), tensor([0.5000]))
    """
    g = sums.num.shape[-1]
    vals = sums.group_values().reshape(-1, g)
    valid = sums.valid.reshape(-1, g)
    overall = sums.overall_values().reshape(-1, 1).to(vals.dtype)
    if overall.shape[0] != vals.shape[0]:
        raise ValueError(f"Expected argument `sums` to have one overall value per row of groups, but got "
                         f"{overall.shape[0]} for {vals.shape[0]} rows")
    if compared is None:
        diff, rel = group_gaps(vals, valid, overall)
    else:
        diff, rel = group_gaps(vals[:, compared], valid[:, compared], overall)
    return GroupComparison(torch.where(valid, vals, torch.full_like(vals, float("nan"))), valid, overall[:, 0],
                           diff, rel)


def fairness_report(pred: Any, labels: Any = None, sens: Any = None, *, threshold: Optional[float] = 0.5,
                    pred_as_logit: Optional[bool] = None, intersections: Union[bool, Sequence[Sequence[str]]] = False,
                    group_names: Optional[Sequence[str]] = None, min_group_size: int = 30, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> FairnessReport:
    """Audit given predictions: per-group statistics, between-group differences, intervals and warnings.

    Args:
        pred: ``(N,)`` or ``(N, 1)`` scores (tensor, NumPy array, list; bools are decisions): logits or
            probabilities of the positive class, or regression outputs when ``threshold`` is None.
        labels: ``(N,)`` 0/1 labels (numbers or bools) for TPR, FPR, PPV and accuracy; for regression, targets
            (mean label and mean residual). Optional.
        sens: the protected attributes (see the module: a SensitiveAttributes, a mapping name → values, 1-D group
            values or an ``(N, S)`` group matrix).
        threshold: decisions are ``prob > threshold``; None for regression outputs (no thresholding, no
            probabilities).
        pred_as_logit: the library's convention (:mod:`fairret._validation`): None decides from the values
            (outside [0, 1]: logits), True/False say it. Ignored for regression.
        intersections: True for the cross of all attributes, or a list of tuples of attribute names; empty cells
            are dropped.
        group_names: names of the columns of an ``(N, S)`` group matrix.
        min_group_size: groups with fewer rows are shown but left out of the differences, with a warning.
        n_boot: bootstrap replicates for the intervals (0: none).
        level: coverage of the intervals.
        seed: the bootstrap's seed (the report is reproducible).

    Returns:
        A :class:`FairnessReport`. Its ``warnings`` are also issued: reading ``pred`` as logits (``pred_as_logit``
        None and values outside [0, 1]) as a :class:`~fairret._validation.PredictionWarning`, the others (small
        groups, undefined statistics, left-out attributes) together as one :class:`ReportWarning`.

    Raises:
        ValueError: non-finite or mis-shaped inputs, labels other than 0/1 for classification, a threshold outside
            [0, 1], fewer than one attribute.
        TypeError: inputs that are not array-like numbers.
    """
    return _fairness_report(pred, labels, sens, threshold=threshold, pred_as_logit=pred_as_logit,
                            intersections=intersections, group_names=group_names, min_group_size=min_group_size,
                            n_boot=n_boot, level=level, seed=seed, logit_hint="pass pred_as_logit=True")


def _fairness_report(pred: Any, labels: Any, sens: Any, *, threshold: Optional[float],
                     pred_as_logit: Optional[bool], intersections: Union[bool, Sequence[Sequence[str]]],
                     group_names: Optional[Sequence[str]], min_group_size: int, n_boot: int, level: float, seed: int,
                     logit_hint: str) -> FairnessReport:
    """:func:`fairness_report`; ``logit_hint`` says how its caller says ``pred`` holds logits (the argument or the
    command line's flag)."""
    if sens is None:
        raise ValueError("Expected argument `sens`: the protected attributes to report on")
    p = _to_tensor(pred, "pred")
    n = p.shape[0]
    if n == 0:
        raise ValueError("Expected argument `pred` to hold at least one row, but got none")
    y = None if labels is None else _to_tensor(labels, "labels")
    if y is not None and y.shape[0] != n:
        raise ValueError(f"Expected argument `labels` to have N={n} rows like `pred`, but got {y.shape[0]}")
    check_min_group_size(min_group_size)
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 0:
        raise ValueError(f"Expected argument `n_boot` to be an int >= 0, but got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"Expected argument `level` in (0, 1), but got {level!r}")

    regression = threshold is None
    hard = soft = raw = None
    as_logit = False
    if regression:
        raw = p
        stats = ["mean_prediction"] + (["mean_label", "mean_residual"] if y is not None else [])
    else:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ValueError(f"Expected argument `threshold` to be a probability in [0, 1] (or None for regression), "
                             f"but got {threshold!r}")
        if y is not None and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("Expected argument `labels` to hold 0/1 labels for classification (threshold set); for "
                             "regression targets pass threshold=None")
        as_logit = resolve_pred_as_logit(p, pred_as_logit, "fairness_report")
        soft = to_probabilities(p) if as_logit else p
        hard = (soft > threshold).to(torch.float64)
        stats = ["positive_rate"] + (["tpr", "fpr", "ppv", "accuracy"] if y is not None else []) + ["mean_score"]

    notes: List[str] = []
    attrs = _attributes(sens, n, group_names, notes)
    attrs = attrs + _intersections(attrs, intersections)
    if not attrs:
        raise ValueError("Expected argument `sens` to hold at least one attribute with groups, but got none")
    logit_note = None
    if as_logit and pred_as_logit is None:
        logit_note = (f"`pred` holds values outside [0, 1]: read as logits, decisions sigmoid(pred) > {threshold:g} "
                      f"({logit_hint} to say so and silence this)")
        notes.append(logit_note)
    inputs = _inputs(stats, hard, soft, raw, y)

    rows: List[GroupRow] = []
    gaps: List[Gap] = []
    overall_vals: Optional[torch.Tensor] = None
    for a_i, attr in enumerate(attrs):
        counts = (attr.member != 0).sum(0)
        judged = counts >= max(min_group_size, 1)
        table = compare_groups(_sums(stats, inputs, y, attr.member), judged)
        vals, valid, diff, rel = table.values, table.valid, table.difference, table.relative
        overall_vals = table.overall
        small = [g for g, c, ok in zip(attr.groups, counts.tolist(), judged.tolist()) if not ok and c > 0]
        if small:
            notes.append(f"`{attr.name}`: groups with fewer than {min_group_size} rows are shown but not compared: "
                         + ", ".join(f"{g} (n={int(c)})" for g, c in zip(attr.groups, counts.tolist())
                                     if g in small))
        empty = [g for g, c in zip(attr.groups, counts.tolist()) if c == 0]
        if empty:
            notes.append(f"`{attr.name}`: groups without rows: {', '.join(empty)}")
        jv, jvalid = vals[:, judged], valid[:, judged]
        if int(judged.sum()) < 2:
            notes.append(f"`{attr.name}`: fewer than two groups with at least {min_group_size} rows: no "
                         f"differences (lower min_group_size to compare small groups)")
        for k, s in enumerate(stats):
            undefined = [g for g, ok, v in zip(attr.groups, judged.tolist(), valid[k].tolist()) if ok and not v]
            if undefined and not math.isnan(float(diff[k])):
                notes.append(f"`{attr.name}`: {_STATS[s][0]} is undefined for {', '.join(undefined)} (no rows it "
                             f"conditions on) and left out of its difference")

        lo: Optional[torch.Tensor] = None
        hi: Optional[torch.Tensor] = None
        glo: Optional[torch.Tensor] = None
        ghi: Optional[torch.Tensor] = None
        rlo: Optional[torch.Tensor] = None
        rhi: Optional[torch.Tensor] = None
        if n_boot:
            member, g = attr.member, attr.member.shape[1]
            jidx = judged.nonzero().flatten()

            def replicate(idx: torch.Tensor) -> torch.Tensor:
                out = []
                for start in range(0, idx.shape[0], 64):  # bounded memory: (N, G * 64) weights at a time
                    part = idx[start:start + 64].long()
                    b = part.shape[0]
                    w = torch.zeros(b, n, dtype=torch.float64).scatter_add_(1, part, torch.ones_like(part,
                                                                                                  dtype=torch.float64))
                    weighted = (member[:, :, None] * w.T[:, None, :]).reshape(n, g * b)
                    rs = _sums(stats, inputs, y, weighted)
                    rv = rs.group_values().reshape(len(stats), g, b).permute(2, 0, 1)
                    rvalid = rs.valid.reshape(len(stats), g, b).permute(2, 0, 1)
                    # the overall of each replicate: its weights as the one "group" of a column
                    ov = _sums(stats, inputs, y, w.T.contiguous()).group_values().T.unsqueeze(-1)  # (b, K, 1)
                    d, r = group_gaps(rv[..., jidx], rvalid[..., jidx], ov)
                    rv = torch.where(rvalid, rv, torch.full_like(rv, float("nan")))
                    out.append(torch.cat([rv.reshape(b, -1), d, r], dim=1))
                return torch.cat(out)

            with torch.no_grad():
                lo_all, hi_all = bootstrap_cis(torch.arange(n), replicate, n_boot=n_boot, level=level,
                                               seed=seed + a_i, omit_nan=True)
            kg = len(stats) * g
            lo, hi = lo_all[:kg].reshape(len(stats), g), hi_all[:kg].reshape(len(stats), g)
            glo, ghi = lo_all[kg:kg + len(stats)], hi_all[kg:kg + len(stats)]
            rlo, rhi = lo_all[kg + len(stats):], hi_all[kg + len(stats):]

        for j, gname in enumerate(attr.groups):
            values = {s: float(vals[k, j]) for k, s in enumerate(stats)}  # NaN where undefined
            ci = ({s: (float(lo[k, j]), float(hi[k, j])) for k, s in enumerate(stats)}
                  if lo is not None and hi is not None else {})
            rows.append(GroupRow(attr.name, gname, int(counts[j]), values, ci, not bool(judged[j])))
        jnames = [gname for gname, ok in zip(attr.groups, judged.tolist()) if ok]
        for k, s in enumerate(stats):
            defined = [(float(jv[k, i]), jnames[i]) for i in range(len(jnames)) if bool(jvalid[k, i])]
            hi_g = max(defined)[1] if len(defined) >= 2 else ""
            lo_g = min(defined)[1] if len(defined) >= 2 else ""
            nan2 = (float("nan"), float("nan"))
            gaps.append(Gap(attr.name, s, float(diff[k]), float(rel[k]),
                            (float(glo[k]), float(ghi[k])) if glo is not None and ghi is not None else nan2,
                            (float(rlo[k]), float(rhi[k])) if rlo is not None and rhi is not None else nan2,
                            jnames, hi_g, lo_g))

    if overall_vals is None:  # attrs is not empty (checked above)
        raise RuntimeError("fairness_report: no attribute was measured")
    overall_by_stat = {s: float(overall_vals[k]) for k, s in enumerate(stats)}
    report = FairnessReport("regression" if regression else "classification", n,
                            None if threshold is None else float(threshold), as_logit, stats, overall_by_stat, rows,
                            gaps, notes, level, n_boot, min_group_size)
    if logit_note is not None:  # the prediction convention: the library's one category for it
        warnings.warn("fairness_report: " + logit_note, PredictionWarning, stacklevel=3)
    limits = [note for note in notes if note is not logit_note]
    if limits:
        warnings.warn("fairness_report: " + " | ".join(limits), ReportWarning, stacklevel=3)
    return report


# -- command line ------------------------------------------------------------------------------------------------
def _read_csv(path: str) -> Dict[str, List[str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: the CSV file is empty (a header row is needed)")
        cols: Dict[str, List[str]] = {c: [] for c in reader.fieldnames}
        for row in reader:
            for c in reader.fieldnames:
                cols[c].append(row[c])
    return cols


def _numbers(values: List[str], column: str) -> np.ndarray:
    table = {"true": 1.0, "false": 0.0}
    out = []
    for v in values:
        key = v.strip().lower()
        try:
            out.append(table[key] if key in table else float(key))
        except ValueError:
            raise ValueError(f"Column `{column}` must hold numbers (or true/false), but holds {v!r}") from None
    return np.array(out, dtype=np.float64)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fairret.report preds.csv --label y --sens race,sex``: print the report of a CSV's predictions."""
    ap = argparse.ArgumentParser(prog="python -m fairret.report",
                                 description="Fairness report of given predictions in a CSV file (a header row).")
    ap.add_argument("csv", help="CSV file with a header row")
    ap.add_argument("--pred", default="pred", help="column of scores: logits or probabilities (default: pred)")
    ap.add_argument("--label", default=None, help="column of 0/1 labels (regression: targets)")
    ap.add_argument("--sens", required=True, help="comma-separated columns of protected attributes")
    ap.add_argument("--threshold", default="0.5", help="decision threshold on probabilities, or 'none' for "
                                                       "regression outputs (default 0.5)")
    ap.add_argument("--pred-as-logit", choices=("auto", "true", "false"), default="auto",
                    help="whether the scores are logits (auto: values outside [0, 1] are)")
    ap.add_argument("--intersections", action="store_true", help="also report the cross of all attributes")
    ap.add_argument("--min-group-size", type=int, default=30)
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (0: no intervals)")
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    ap.add_argument("--plot", default=None, help="also save a plot of the groups with their intervals (needs "
                                                 "matplotlib)")
    args = ap.parse_args(argv)
    try:
        cols = _read_csv(args.csv)
        wanted = [args.pred] + ([args.label] if args.label else []) + [s.strip() for s in args.sens.split(",")]
        missing = [c for c in wanted if c not in cols]
        if missing:
            raise ValueError(f"{args.csv} has no column(s) {missing}; it has {list(cols)}")
        threshold = None if args.threshold.lower() == "none" else float(args.threshold)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReportWarning)  # the report lists them itself
            warnings.simplefilter("ignore", PredictionWarning)
            report = _fairness_report(
                _numbers(cols[args.pred], args.pred),
                None if args.label is None else _numbers(cols[args.label], args.label),
                {s.strip(): np.array(cols[s.strip()]) for s in args.sens.split(",")},
                threshold=threshold, pred_as_logit={"auto": None, "true": True, "false": False}[args.pred_as_logit],
                intersections=args.intersections, group_names=None, min_group_size=args.min_group_size,
                n_boot=args.n_boot, level=args.level, seed=args.seed, logit_hint="pass --pred-as-logit true")
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "markdown":
        print(report.to_markdown())
    else:
        print(report.to_text())
    if args.plot:
        fig, _ = report.plot()
        fig.savefig(args.plot, dpi=120)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in the tests
    sys.exit(main())

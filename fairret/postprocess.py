r"""Demographic-parity post-processing: one decision threshold per group, applied to a trained model's scores.

Post-processing changes no weights: it picks, for each group, the score above which a row is predicted positive,
so that the groups' positive rates agree. It is the reference an in-processing penalty (a fairret loss) has to
beat at a given demographic-parity difference (:func:`fairret.metric.gap_max_min` of
:class:`~fairret.statistic.PositiveRate` on the thresholded predictions); it needs the group of every row at
prediction time, which a penalty does not.

* :func:`group_thresholds` chooses the thresholds on labelled rows (the training split): every group gets the same
  share of positives, the share that maximises accuracy there.
* :func:`apply_thresholds` applies them to new rows, as probabilities shifted so that 0.5 is each group's
  threshold (so any code that thresholds at 0.5, or computes AUC and calibration measures, can use them).
* :func:`dp_accuracy_ceiling` is the best accuracy one threshold per group reaches on the rows given within a
  demographic-parity difference: on a test split with its labels it is an oracle, an upper bound for any
  post-processing of those scores.

Accuracies and gaps are fractions in [0, 1]. All three work in float64 on the CPU and are exact (no grid over
thresholds): the accuracy of a group's "top ``k`` are positive" rule is a cumulative sum over its sorted scores.

Example:
    >>> import torch
    >>> prob = torch.tensor([.9, .8, .7, .2, .45, .4, .1, .05])
    >>> y = torch.tensor([1., 1, 0, 0, 1, 1, 0, 0])
    >>> groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    >>> (prob > 0.5).tolist() == [True, True, True, False, False, False, False, False]  # 62.5% right, rates 3/4, 0
    True
    >>> t = group_thresholds(prob, y, groups)
    >>> (apply_thresholds(prob, groups, t) > 0.5).tolist()  # half of each group positive, all right
    [True, True, False, False, True, True, False, False]
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from ._validation import check_finite, check_probability, check_tensor

__all__ = ["group_thresholds", "apply_thresholds", "dp_accuracy_ceiling"]


def group_thresholds(prob: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> Dict[int, float]:
    """Demographic-parity post-processing: one threshold per group such that every group gets the same share of
    positives, that share chosen to maximise accuracy on the rows given (the training split).

    For a common share ``r`` each group's ``round(r * n_g)`` highest scores are positive; all shares ``k / N`` of
    the ``N`` rows are tried (in float64, exactly: the accuracy of a group's top-``k`` rule is a cumulative sum over
    its sorted scores). Each threshold lies halfway between the last positive and the first negative score (or
    between the extreme score and 1 or 0 when a group gets no or only positives), so ``prob > threshold`` reproduces
    the chosen rule on these rows up to tied scores. The positive rates then differ by at most one row's share of
    the smallest group (rounding).

    Args:
        prob: ``(N,)`` finite scores (predicted probabilities) of the rows that choose the thresholds.
        y: ``(N,)`` labels in {0, 1}.
        groups: ``(N,)`` integer group of each row.

    Returns:
        ``{group: threshold}`` for every group in ``groups``.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: shapes differ or are empty, ``prob`` is not finite, ``y`` holds values other than 0 and 1.

    Example:
        >>> prob = torch.tensor([.9, .8, .7, .2, .45, .4, .1, .05])
        >>> t = group_thresholds(prob, torch.tensor([1., 1, 0, 0, 1, 1, 0, 0]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
        >>> {g: round(v, 2) for g, v in t.items()}  # half of each group positive; group 1 below 0.5
        {0: 0.75, 1: 0.25}
    """
    ranked = _ranked(prob, y, groups)
    n = sum(p.numel() for p, _ in ranked.values())
    share = torch.arange(n + 1, dtype=torch.float64) / n
    correct = torch.zeros_like(share)
    for p, right in ranked.values():
        correct += right[torch.round(share * p.numel()).long()]
    best = share[int(torch.argmax(correct))]
    out = {}
    for g, (p, _) in ranked.items():
        k = int(torch.round(best * p.numel()))
        hi = float(p[k - 1]) if k > 0 else 1.0  # no positive: above every score; all positive: below
        lo = float(p[k]) if k < p.numel() else 0.0
        out[g] = (hi + lo) / 2
    return out


def apply_thresholds(prob: torch.Tensor, groups: torch.Tensor, thresholds: Dict[int, float]) -> torch.Tensor:
    """Probabilities shifted per group so that 0.5 falls on the group's threshold: ``sigmoid(logit(p) -
    logit(t_g))`` in float64, above 0.5 exactly when ``p > t_g`` (a group without a threshold keeps 0.5).

    Args:
        prob: ``(N,)`` probabilities in [0, 1].
        groups: ``(N,)`` integer group of each row.
        thresholds: ``{group: threshold}``, e.g. from :func:`group_thresholds` on the training split.

    Returns:
        ``(N,)`` float64 probabilities; threshold them at 0.5 for the post-processed decisions.

    Raises:
        TypeError: ``prob`` or ``groups`` is not a tensor.
        ValueError: their shapes differ, or ``prob`` is not finite or not in [0, 1].

    Example:
        >>> apply_thresholds(torch.tensor([0.3, 0.3, 0.6]), torch.tensor([0, 1, 1]), {0: 0.2, 1: 0.4})
        tensor([0.6316, 0.3913, 0.6923], dtype=torch.float64)
    """
    prob, groups = check_tensor(prob, "prob").reshape(-1), check_tensor(groups, "groups").reshape(-1)
    if prob.shape != groups.shape:
        raise ValueError(f"Expected `prob` and `groups` of one shape (N,), but got {tuple(prob.shape)} and "
                         f"{tuple(groups.shape)}")
    check_finite(prob, "prob")
    check_probability(prob, "prob")
    t = torch.tensor([thresholds.get(int(g), 0.5) for g in groups.tolist()], dtype=torch.float64)
    return torch.sigmoid(torch.logit(prob.double(), eps=1e-12) - torch.logit(t, eps=1e-12))


def dp_accuracy_ceiling(prob: torch.Tensor, y: torch.Tensor, groups: torch.Tensor,
                        max_gap: float = 0.01) -> Tuple[float, float]:
    """The best accuracy that one threshold per group reaches on the rows given with a demographic-parity
    difference (of positive rates between the two groups) of at most ``max_gap``, and that rule's difference. On
    the test split it is an oracle (it sees the test labels): an upper bound for any post-processing of these scores
    for demographic parity.

    Exact over every pair of per-group top-``k`` rules (two groups; ties broken by order, as thresholds between
    distinct scores give): for each ``k0`` the best ``k1`` within the gap, from cumulative sums over each group's
    sorted scores.

    Args:
        prob: ``(N,)`` finite scores.
        y: ``(N,)`` labels in {0, 1}.
        groups: ``(N,)`` integer group of each row, two distinct values.
        max_gap: the largest allowed difference of positive rates, a fraction in [0, 1] (0.01: one point).

    Returns:
        ``(accuracy, gap)``, fractions.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: as :func:`group_thresholds`, ``groups`` does not hold exactly two groups, or ``max_gap`` is not
            a finite number >= 0.

    Example:
        >>> prob = torch.tensor([.9, .8, .7, .2, .45, .4, .1, .05])
        >>> dp_accuracy_ceiling(prob, torch.tensor([1., 1, 0, 0, 1, 1, 0, 0]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
        ...                     max_gap=0.0)
        (1.0, 0.0)
    """
    if isinstance(max_gap, bool) or not (isinstance(max_gap, (int, float)) and 0 <= max_gap < float("inf")):
        raise ValueError(f"Expected argument `max_gap` to be a finite number >= 0, but got {max_gap!r}")
    ranked = _ranked(prob, y, groups)
    if len(ranked) != 2:
        raise ValueError(f"Expected `groups` to hold exactly two groups, but got {len(ranked)}")
    (p0, c0), (p1, c1) = ranked.values()
    n0, n1 = p0.numel(), p1.numel()
    best, gap = -1.0, 0.0
    for k0 in range(n0 + 1):
        lo = max(math.ceil((k0 / n0 - max_gap) * n1 - 1e-9), 0)
        hi = min(math.floor((k0 / n0 + max_gap) * n1 + 1e-9), n1)
        if lo <= hi:
            k1 = lo + int(torch.argmax(c1[lo:hi + 1]))
            if float(c0[k0] + c1[k1]) > best:
                best, gap = float(c0[k0] + c1[k1]), abs(k0 / n0 - k1 / n1)
    return best / (n0 + n1), gap


def _ranked(prob: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
            ) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """Per group: its scores sorted in descending order and, for ``k = 0..n_g``, the rows the rule "the top ``k``
    are positive" gets right (float64; validated inputs)."""
    for value, name in ((prob, "prob"), (y, "y"), (groups, "groups")):
        check_tensor(value, name)
    prob, y, groups = prob.reshape(-1).double(), y.reshape(-1).double(), groups.reshape(-1)
    if not (prob.shape == y.shape == groups.shape) or prob.numel() == 0:
        raise ValueError(f"Expected `prob`, `y` and `groups` of one non-empty shape (N,), but got "
                         f"{tuple(prob.shape)}, {tuple(y.shape)} and {tuple(groups.shape)}")
    check_finite(prob, "prob")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("Expected `y` to hold labels 0 and 1 only")
    out = {}
    for g in groups.unique().tolist():
        rows = groups == g
        order = torch.argsort(prob[rows], descending=True)
        p, t = prob[rows][order], y[rows][order]
        hits = torch.cat([t.new_zeros(1), torch.cumsum(t, 0)])  # positives among the top k, k = 0..n_g
        k = torch.arange(p.numel() + 1, dtype=torch.float64)
        out[g] = (p, hits + (p.numel() - k) - (hits[-1] - hits))  # true positives + true negatives
    return out

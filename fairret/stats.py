"""Resampling intervals and paired tests for the figures fairret reports (pure torch and the standard library).

* :func:`bootstrap_ci`: a percentile bootstrap interval of a statistic of per-item values (items resampled with
  replacement, several value columns resampled together, so ratios and products of per-item sums work).
* :func:`binomial_two_sided`: the exact two-sided binomial p-value (the probability under ``p = 1/2`` of a split at
  least as unbalanced as the one seen).
* :func:`paired_flips`: the exact McNemar test for two models judged on the same items: how many items flip from
  "no" to "yes" and back, and the two-sided p-value of that imbalance.

Example:
    >>> import torch
    >>> wins = torch.tensor([1., 0., 1., 1., 0., 1., 1., 0.] * 25)
    >>> lo, hi = bootstrap_ci(wins, lambda v: 100 * v.mean(-1), seed=0)
    >>> bool(lo < 62.5 < hi)
    True
    >>> binomial_two_sided(8, 10) == binomial_two_sided(2, 10)
    True
    >>> f = paired_flips(torch.tensor([0, 0, 1, 1, 0]), torch.tensor([1, 1, 1, 0, 0]))
    >>> f.to_yes, f.to_no, round(f.p_value, 3)
    (2, 1, 1.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple, Union

import torch

__all__ = ["bootstrap_ci", "binomial_two_sided", "Flips", "paired_flips", "pool_flips"]


def bootstrap_ci(values: Union[torch.Tensor, Sequence[torch.Tensor]], statistic: Callable[..., torch.Tensor],
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over items.

    Args:
        values: per-item values ``(N,)`` or ``(N, k)``, or a sequence of such tensors with one N (resampled
            together: the same items are drawn for every tensor).
        statistic: maps the resampled tensors, each with a leading replicate dimension (``(B, N)`` or
            ``(B, N, k)``), to ``(B,)`` statistics; it must reduce over the item dimension (dim 1, or -1 for
            ``(B, N)`` inputs).
        n_boot: replicates.
        level: coverage of the interval.
        seed: the generator's seed (the interval is reproducible).

    Returns:
        ``(low, high)`` as floats.

    Raises:
        ValueError: no items, tensors of different lengths, ``level`` outside (0, 1) or ``n_boot < 1``.
    """
    tensors = [values] if isinstance(values, torch.Tensor) else list(values)
    if not tensors or any(not isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("Expected argument `values` to be a tensor or a sequence of tensors")
    n = tensors[0].shape[0]
    if n == 0:
        raise ValueError("Expected argument `values` to hold at least one item, but got none")
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"Expected every tensor in `values` to have {n} items, but got "
                         f"{[t.shape[0] for t in tensors]}")
    if not 0 < level < 1:
        raise ValueError(f"Expected argument `level` in (0, 1), but got {level!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"Expected argument `n_boot` to be a positive int, but got {n_boot!r}")
    gen = torch.Generator().manual_seed(seed)
    stats = []
    chunk = max(1, 2_000_000 // n)  # bounded memory: at most ~2M drawn indices at a time
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = torch.randint(0, n, (b, n), generator=gen)
        stats.append(statistic(*[t.cpu()[idx] for t in tensors]).reshape(b).to(torch.float64))
    s = torch.cat(stats)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(s, q).tolist()
    return lo, hi


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair trials: the probability of every outcome no more
    likely than ``k`` (1.0 when ``n = 0``)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"Expected 0 <= k <= n, but got k={k!r}, n={n!r}")
    if n == 0:
        return 1.0
    # log-probabilities avoid overflow for large n; outcomes as likely as k (within rounding) count
    logp = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(n + 1)]
    ref = logp[k] + 1e-9
    return min(1.0, sum(math.exp(lp) for lp in logp if lp <= ref))


@dataclass(frozen=True)
class Flips:
    """Items whose binary outcome changed between two models: ``to_yes`` (0 -> 1), ``to_no`` (1 -> 0), out of
    ``n`` items, and the exact McNemar two-sided ``p_value`` of ``to_yes`` against ``to_no``."""

    to_yes: int
    to_no: int
    n: int
    p_value: float


def paired_flips(before: torch.Tensor, after: torch.Tensor) -> Flips:
    """Exact McNemar test of two binary outcomes on the same items (``(N,)`` each, values 0/1 or bool).

    Raises:
        ValueError: different lengths, or values other than 0 and 1.
    """
    a, b = torch.as_tensor(before).flatten(), torch.as_tensor(after).flatten()
    if a.shape != b.shape:
        raise ValueError(f"Expected `before` and `after` to judge the same items, but got {a.numel()} and {b.numel()}")
    for name, t in (("before", a), ("after", b)):
        if t.numel() and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"Expected argument `{name}` to hold 0/1 outcomes")
    a, b = a.bool(), b.bool()
    up, down = int((~a & b).sum()), int((a & ~b).sum())
    return Flips(up, down, int(a.numel()), binomial_two_sided(up, up + down))


def pool_flips(flips: Sequence[Flips]) -> Flips:
    """Flips summed over independent comparisons (e.g. calibration/evaluation splits, each with its own models),
    tested as one McNemar test on the pooled discordant items."""
    up, down = sum(f.to_yes for f in flips), sum(f.to_no for f in flips)
    return Flips(up, down, sum(f.n for f in flips), binomial_two_sided(up, up + down))

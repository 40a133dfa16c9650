"""Bootstrap intervals and the exact paired test against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from fairret.stats import Flips, binomial_two_sided, bootstrap_ci, paired_flips, pool_flips


def test_binomial_two_sided_closed_forms():
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(1, 10) == pytest.approx(2 * 11 / 1024)
    assert binomial_two_sided(5, 10) == pytest.approx(1.0)
    assert binomial_two_sided(3, 7) == pytest.approx(1.0)  # as likely as 4: every outcome counts
    assert binomial_two_sided(0, 0) == 1.0
    # large n: the normal approximation of a 3-sigma split
    n = 10_000
    k = int(n / 2 + 3 * math.sqrt(n) / 2)
    assert binomial_two_sided(k, n) == pytest.approx(math.erfc(3 / math.sqrt(2)), rel=0.1)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial_two_sided(6, 5)


def test_paired_flips_counts_discordant_items():
    before = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    after = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1])
    f = paired_flips(before, after)
    assert (f.to_yes, f.to_no, f.n) == (3, 1, 8)
    assert f.p_value == pytest.approx(binomial_two_sided(3, 4))
    assert pool_flips([f, Flips(4, 0, 10, 0.0)]) == Flips(7, 1, 18, binomial_two_sided(7, 8))
    with pytest.raises(ValueError, match="the same items"):
        paired_flips(before, after[:3])
    with pytest.raises(ValueError, match="`after` to hold 0/1"):
        paired_flips(before, after * 2)


def test_bootstrap_interval_of_a_share_matches_the_normal_approximation():
    g = torch.Generator().manual_seed(1)
    wins = (torch.rand(4000, generator=g) < 0.6).double()
    p = float(wins.mean())
    lo, hi = bootstrap_ci(wins, lambda v: v.mean(-1), n_boot=4000, seed=3)
    half = 1.96 * math.sqrt(p * (1 - p) / 4000)
    assert lo == pytest.approx(p - half, abs=0.003) and hi == pytest.approx(p + half, abs=0.003)
    assert bootstrap_ci(wins, lambda v: v.mean(-1), n_boot=200, seed=3) == bootstrap_ci(
        wins, lambda v: v.mean(-1), n_boot=200, seed=3)  # reproducible


def test_bootstrap_resamples_columns_together():
    """A ratio of sums: the same items are drawn for numerator and denominator, so a constant ratio has a
    zero-width interval."""
    num = torch.arange(1.0, 101.0)
    lo, hi = bootstrap_ci([num, 2 * num], lambda a, b: a.sum(-1) / b.sum(-1), n_boot=300)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one item"):
        bootstrap_ci(torch.zeros(0), lambda v: v.mean(-1))
    with pytest.raises(ValueError, match="100 items"):
        bootstrap_ci([num, num[:5]], lambda a, b: a.mean(-1))
    with pytest.raises(ValueError, match="`level` in \\(0, 1\\)"):
        bootstrap_ci(num, lambda v: v.mean(-1), level=1.5)

"""fairret.postprocess against brute force in plain Python: the best equal-share rule, every threshold pair."""
import pytest
import torch

from fairret.metric import LinearFractionalParity, gap_max_min
from fairret.postprocess import apply_thresholds, dp_accuracy_ceiling, group_thresholds
from fairret.statistic import PositiveRate


def _best_common_share_by_brute_force(prob, y, groups):
    """Accuracy of the best rule 'the round(r * n_g) highest scores of each group are positive' over r = k / N, by
    explicit loops in plain Python."""
    p, t, g = prob.tolist(), y.tolist(), groups.tolist()
    n = len(p)
    best = -1
    for k in range(n + 1):
        right = 0
        for grp in set(g):
            rows = sorted((i for i in range(n) if g[i] == grp), key=lambda i: -p[i])
            top = round(k / n * len(rows))
            right += sum(t[i] == 1 for i in rows[:top]) + sum(t[i] == 0 for i in rows[top:])
        best = max(best, right)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_thresholds_reach_the_best_equal_share_rule(seed):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 3, (60,), generator=g)
    y = (torch.rand(60, generator=g) < 0.3 + 0.2 * groups).double()
    prob = torch.sigmoid(2 * y - 1 + groups + torch.randn(60, generator=g))  # a group-dependent shift
    th = group_thresholds(prob, y, groups)
    hard = prob > torch.tensor([th[int(v)] for v in groups])
    assert int((hard.double() == y).sum()) == _best_common_share_by_brute_force(prob, y, groups)
    # every group gets the same share of positives up to rounding of share * group size
    sizes = torch.bincount(groups).double()
    shares = torch.bincount(groups, weights=hard.double()) / sizes
    assert float(shares.max() - shares.min()) <= float((1 / sizes).max()) + 1e-12
    # apply_thresholds gives the same decisions at 0.5, and the metric's between-group gap is that share difference
    shifted = apply_thresholds(prob, groups, th)
    assert torch.equal(shifted > 0.5, hard)
    m = LinearFractionalParity(PositiveRate(), 3, gap_fn=gap_max_min)
    m.update((shifted > 0.5).double()[:, None], torch.nn.functional.one_hot(groups, 3).double())
    assert m.compute().item() == pytest.approx(float(shares.max() - shares.min()), abs=1e-7)


@pytest.mark.parametrize("seed,max_gap", [(0, 0.0), (1, 0.05), (2, 0.125), (3, 1.0)])
def test_dp_accuracy_ceiling_is_the_best_threshold_pair(seed, max_gap):
    """Against every pair of thresholds (one per group, at each distinct score and above all), in plain Python."""
    g = torch.Generator().manual_seed(seed)
    groups = (torch.rand(23, generator=g) < 0.4).long()
    y = (torch.rand(23, generator=g) < 0.3 + 0.3 * groups).double()
    prob = torch.sigmoid(1.5 * y - 1 + groups + torch.randn(23, generator=g))  # distinct scores, group-shifted
    p, lab, grp = prob.tolist(), y.tolist(), groups.tolist()
    cand = sorted(set(p)) + [2.0]
    best = -1
    for t0 in cand:
        for t1 in cand:
            hard = [pi >= (t0 if gi == 0 else t1) for pi, gi in zip(p, grp)]
            rates = [sum(h for h, gi in zip(hard, grp) if gi == v) / grp.count(v) for v in (0, 1)]
            gap = abs(rates[0] - rates[1])
            right = sum(h == (li == 1) for h, li in zip(hard, lab))
            if gap <= max_gap + 1e-9 and right > best:
                best = right
    acc, gap = dp_accuracy_ceiling(prob, y, groups, max_gap)
    assert acc == pytest.approx(best / 23, abs=1e-12)
    assert gap <= max_gap + 1e-9


def test_dp_accuracy_ceiling_errors():
    prob, y = torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([1.0, 0, 1, 0])
    with pytest.raises(ValueError, match="exactly two groups, but got 3"):
        dp_accuracy_ceiling(prob, y, torch.tensor([0, 1, 2, 2]))
    for bad in (-0.01, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="`max_gap` to be a finite number >= 0"):
            dp_accuracy_ceiling(prob, y, torch.tensor([0, 0, 1, 1]), max_gap=bad)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        dp_accuracy_ceiling(prob, torch.tensor([0.0, 2.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]))


def test_group_thresholds_edges_and_errors():
    # everyone negative is best: the threshold lies above every score; everyone positive: below every score
    prob, groups = torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([0, 0, 1, 1])
    th = group_thresholds(prob, torch.zeros(4), groups)
    assert all(not bool((prob[groups == k] > v).any()) for k, v in th.items())
    th = group_thresholds(prob, torch.ones(4), groups)
    assert all(bool((prob[groups == k] > v).all()) for k, v in th.items())
    with pytest.raises(ValueError, match="of one non-empty shape"):
        group_thresholds(prob, torch.ones(3), groups)
    with pytest.raises(ValueError, match="of one non-empty shape"):
        group_thresholds(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="labels 0 and 1"):
        group_thresholds(prob, torch.tensor([0.0, 2.0, 1.0, 0.0]), groups)
    with pytest.raises(ValueError, match="Expected argument `prob` to be finite, but it holds 1 NaN"):
        group_thresholds(torch.tensor([0.9, float("nan"), 0.7, 0.1]), torch.ones(4), groups)
    with pytest.raises(TypeError, match="Expected argument `y` to be a torch.Tensor, but got list"):
        group_thresholds(prob, [1, 0, 1, 0], groups)


def test_apply_thresholds_shift_and_errors():
    prob = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95, 0.3])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])  # group 2 has no threshold: it keeps 0.5
    out = apply_thresholds(prob, groups, {0: 0.4, 1: 0.8})
    assert out.dtype == torch.float64
    assert (out > 0.5).tolist() == [False, False, True, False, True, False]
    # logit(out) = logit(p) - logit(t): a group at threshold 0.5 is unchanged
    torch.testing.assert_close(torch.logit(out), torch.logit(prob.double()) - torch.logit(
        torch.tensor([0.4, 0.4, 0.4, 0.8, 0.8, 0.5], dtype=torch.float64)))
    with pytest.raises(ValueError, match="of one shape"):
        apply_thresholds(prob, groups[:3], {})
    with pytest.raises(ValueError, match=r"Expected argument `prob` to lie in \[0.0, 1.0\]"):
        apply_thresholds(prob * 2, groups, {})
    with pytest.raises(ValueError, match="Expected argument `prob` to be finite"):
        apply_thresholds(torch.full((6,), float("nan")), groups, {})

"""Statistics: values against fairret 0.1.3's golden values and a brute-force float64 reference."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairret.statistic import (Accuracy, CustomLinearFractionalStatistic, FalseDiscoveryRate,
                               FalseNegativeFalsePositiveFraction, FalseNegativeRate, FalseOmissionRate,
                               FalsePositiveRate, FScore, MeanPrediction, NegativePredictiveValue,
                               PositivePredictiveValue, PositiveRate, StackedLinearFractionalStatistic,
                               TrueNegativeRate, TruePositiveRate)

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_fairret013.json").read_text())


def golden_inputs():
    g = torch.Generator().manual_seed(2024)
    logits = torch.randn(64, 1, generator=g, dtype=torch.float64)
    label = (torch.rand(64, 1, generator=g, dtype=torch.float64) < 0.4).double()
    groups = torch.randint(0, 3, (64,), generator=g)
    return logits, label, torch.nn.functional.one_hot(groups, 3).double()


STATS_013 = {
    "PositiveRate": lambda: PositiveRate(), "TruePositiveRate": lambda: TruePositiveRate(),
    "FalsePositiveRate": lambda: FalsePositiveRate(), "PositivePredictiveValue": lambda: PositivePredictiveValue(),
    "FalseOmissionRate": lambda: FalseOmissionRate(), "Accuracy": lambda: Accuracy(),
    "FalseNegativeFalsePositiveFraction": lambda: FalseNegativeFalsePositiveFraction(),
    "FScore(2)": lambda: FScore(2.0),
    "Stacked(TPR,FPR)": lambda: StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()),
}


@pytest.mark.parametrize("name", list(STATS_013))
def test_matches_fairret_013(name):
    logits, label, sens = golden_inputs()
    stat = STATS_013[name]()
    args = () if name == "PositiveRate" else (label,)
    pred = torch.sigmoid(logits)
    torch.testing.assert_close(stat(pred, sens, *args), torch.tensor(GOLDEN["statistics"][name], dtype=torch.float64))
    torch.testing.assert_close(stat.overall_statistic(pred, *args),
                               torch.tensor(GOLDEN["overall"][name], dtype=torch.float64))


def _confusion_reference(p, y, mask):
    """Expected confusion-matrix entries of probabilistic predictions within a group (float64 loops)."""
    tp = sum(pi * yi for pi, yi, m in zip(p, y, mask) if m)
    fp = sum(pi * (1 - yi) for pi, yi, m in zip(p, y, mask) if m)
    fn = sum((1 - pi) * yi for pi, yi, m in zip(p, y, mask) if m)
    tn = sum((1 - pi) * (1 - yi) for pi, yi, m in zip(p, y, mask) if m)
    return tp, fp, fn, tn


REFERENCE = {
    PositiveRate: lambda tp, fp, fn, tn: (tp + fp) / (tp + fp + fn + tn),
    TruePositiveRate: lambda tp, fp, fn, tn: tp / (tp + fn),
    FalsePositiveRate: lambda tp, fp, fn, tn: fp / (fp + tn),
    PositivePredictiveValue: lambda tp, fp, fn, tn: tp / (tp + fp),
    FalseOmissionRate: lambda tp, fp, fn, tn: fn / (fn + tn),
    Accuracy: lambda tp, fp, fn, tn: (tp + tn) / (tp + fp + fn + tn),
    FalseNegativeFalsePositiveFraction: lambda tp, fp, fn, tn: fn / fp,
    FalseNegativeRate: lambda tp, fp, fn, tn: fn / (tp + fn),
    TrueNegativeRate: lambda tp, fp, fn, tn: tn / (tn + fp),
    NegativePredictiveValue: lambda tp, fp, fn, tn: tn / (tn + fn),
    FalseDiscoveryRate: lambda tp, fp, fn, tn: fp / (tp + fp),
}


@pytest.mark.parametrize("cls", list(REFERENCE))
def test_against_confusion_matrix(cls):
    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, 57)
    y = (rng.uniform(size=57) < 0.5).astype(float)
    groups = rng.integers(0, 4, 57)
    sens = torch.nn.functional.one_hot(torch.tensor(groups), 4).double()
    args = () if cls is PositiveRate else (torch.tensor(y)[:, None],)
    got = cls()(torch.tensor(p)[:, None], sens, *args)
    want = [REFERENCE[cls](*_confusion_reference(p, y, groups == k)) for k in range(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_fscore_against_harmonic_mean():
    rng = np.random.default_rng(4)
    p = rng.uniform(size=40)
    y = (rng.uniform(size=40) < 0.5).astype(float)
    tp, fp, fn, tn = _confusion_reference(p, y, np.ones(40, bool))
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    beta = 0.5
    want = (1 + beta**2) * prec * rec / (beta**2 * prec + rec)
    got = FScore(beta)(torch.tensor(p)[:, None], torch.ones(40, 1, dtype=torch.float64), torch.tensor(y)[:, None])
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_custom_statistic_equals_builtin():
    logits, label, sens = golden_inputs()
    pred = torch.sigmoid(logits)
    custom = CustomLinearFractionalStatistic(lambda y: y, lambda y: -y, 1.0, -1.0)
    torch.testing.assert_close(custom(pred, sens, label), FalseOmissionRate()(pred, sens, label))


def test_multiclass_is_one_vs_rest_never_summed():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, 3, dtype=torch.float64), dim=1)
    label = torch.randint(0, 3, (50,))
    sens = torch.nn.functional.one_hot(torch.randint(0, 2, (50,)), 2).double()
    got = TruePositiveRate()(probs, sens, label)
    assert got.shape == (3, 2)
    for c in range(3):
        yc = (label == c).double()[:, None]
        torch.testing.assert_close(got[c], TruePositiveRate()(probs[:, c:c + 1], sens, yc))
    stacked = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())(probs, sens, label)
    assert stacked.shape == (2, 3, 2)
    torch.testing.assert_close(stacked[0], got)


def test_regression_mean_prediction():
    out = torch.tensor([[1.0], [3.0], [10.0], [20.0]])
    sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    torch.testing.assert_close(MeanPrediction()(out, sens), torch.tensor([2.0, 15.0]))


def test_absent_group_is_zero_not_error():
    pred = torch.tensor([[0.3], [0.6]])
    sens = torch.tensor([[1., 0.], [1., 0.]])
    assert PositiveRate()(pred, sens).tolist() == pytest.approx([0.45, 0.0])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), s=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_rates_in_unit_interval_and_order_invariant(n, s, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, 1, generator=g, dtype=torch.float64)
    label = (torch.rand(n, 1, generator=g) < 0.5).double()
    sens = torch.nn.functional.one_hot(torch.randint(0, s, (n,), generator=g), s).double()
    perm = torch.randperm(n, generator=g)
    for stat in (PositiveRate(), TruePositiveRate(), Accuracy(), NegativePredictiveValue()):
        args = () if isinstance(stat, PositiveRate) else (label,)
        v = stat(pred, sens, *args)
        assert bool(((v >= 0) & (v <= 1 + 1e-12)).all())
        vp = stat(pred[perm], sens[perm], *[a[perm] for a in args])
        torch.testing.assert_close(v, vp)


def test_errors():
    pred = torch.rand(8, 1)
    with pytest.raises(ValueError, match=r"Expected argument `sens` to have N=8 rows like `pred`, but got 7"):
        PositiveRate()(pred, torch.ones(7, 2))
    with pytest.raises(TypeError, match=r"Expected argument `pred` to be a floating-point tensor"):
        PositiveRate()(torch.ones(8, 1, dtype=torch.long), torch.ones(8, 2))
    with pytest.raises(TypeError, match=r"No arguments were passed along to the TruePositiveRate statistic"):
        TruePositiveRate()(pred, torch.ones(8, 2))
    with pytest.raises(TypeError, match=r"does not expect any arguments"):
        PositiveRate()(pred, torch.ones(8, 2), torch.ones(8, 1))
    with pytest.raises(ValueError, match=r"Expected argument `label` to have N=8 rows"):
        TruePositiveRate()(pred, torch.ones(8, 2), label=torch.ones(5, 1))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        TruePositiveRate()(torch.rand(8, 3), torch.ones(8, 2), torch.full((8,), 3))
    with pytest.raises(ValueError, match=r"At least one statistic"):
        StackedLinearFractionalStatistic()
    with pytest.raises(ValueError, match=r"Expected argument `beta` to be a finite number > 0"):
        FScore(0)
    with pytest.raises(ValueError, match=r"Expected argument `pred` to have shape \(N,\) or \(N, C\)"):
        PositiveRate()(torch.rand(2, 2, 2), torch.ones(2, 1))


def test_signature_mismatch_rejected():
    with pytest.raises(TypeError, match="should share the same signature"):
        class Bad(PositiveRate):
            def num_slope(self, label):
                return label


def test_sums_against_brute_force_with_empty_groups():
    # the one place the losses and the metric take their sums from: group sums, overall sums, valid-group mask
    g = torch.Generator().manual_seed(11)
    n = 30
    pred = torch.rand(n, 1, generator=g, dtype=torch.float64)
    label = (torch.rand(n, 1, generator=g) < 0.5).double()
    sens = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 4).double()  # column 3: empty
    label[sens[:, 2] == 1] = 0.0  # group 2 has no positives: TPR undefined there, FPR defined
    sums = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()).sums(pred, sens, label)
    f, y = pred[:, 0].tolist(), label[:, 0].tolist()
    want_num = [[sum(sens[i, k].item() * w(i) * f[i] for i in range(n)) for k in range(4)]
                for w in (lambda i: y[i], lambda i: 1 - y[i])]
    want_den = [[sum(sens[i, k].item() * w(i) for i in range(n)) for k in range(4)]
                for w in (lambda i: y[i], lambda i: 1 - y[i])]
    assert sums.num.shape == sums.denom.shape == sums.valid.shape == (2, 1, 4)
    assert sums.overall_num.shape == sums.overall_denom.shape == (2, 1)
    torch.testing.assert_close(sums.num[:, 0], torch.tensor(want_num, dtype=torch.float64))
    torch.testing.assert_close(sums.denom[:, 0], torch.tensor(want_den, dtype=torch.float64))
    torch.testing.assert_close(sums.overall_num[:, 0], torch.tensor([sum(y[i] * f[i] for i in range(n)),
                                                                     sum((1 - y[i]) * f[i] for i in range(n))],
                                                                    dtype=torch.float64))
    torch.testing.assert_close(sums.overall_denom[:, 0], torch.tensor([sum(y), n - sum(y)], dtype=torch.float64))
    assert sums.valid[:, 0].tolist() == [[True, True, False, False], [True, True, True, False]]
    want_vals = [[a / b if b else 0.0 for a, b in zip(rn, rd)] for rn, rd in zip(want_num, want_den)]
    torch.testing.assert_close(sums.group_values()[:, 0], torch.tensor(want_vals, dtype=torch.float64))
    torch.testing.assert_close(sums.overall_values(), sums.overall_num / sums.overall_denom)


def test_losses_and_metric_take_their_sums_from_the_statistic(monkeypatch):
    from fairret.loss import KLProjectionLoss, LSELoss, NormLoss
    from fairret.metric import LinearFractionalParity

    stat = TruePositiveRate()
    calls = []
    original = type(stat).sums

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(stat), "sums", counting)
    x = torch.randn(12, 1)
    y = (torch.arange(12) % 2).float()[:, None]
    sens = torch.nn.functional.one_hot(torch.arange(12) % 3, 3).float()
    for use in (lambda: NormLoss(stat)(x, sens, y), lambda: LSELoss(stat, momentum=0.5)(x, sens, y),
                lambda: KLProjectionLoss(stat)(x, sens, y),
                lambda: LinearFractionalParity(stat, 3).update(torch.sigmoid(x), sens, y)):
        calls.clear()
        use()
        assert len(calls) == 1


def test_requires_labels():
    from fairret.statistic import EqualizedOdds, Statistic

    class WithLabel(Statistic):
        def forward(self, pred, sens, label):
            return pred.mean() * label.mean() * sens.sum(0)

    class WithoutLabel(Statistic):
        def forward(self, pred, sens, *stat_args, **stat_kwargs):
            return pred.mean() * sens.sum(0)

    assert not PositiveRate().requires_labels and not MeanPrediction().requires_labels
    for stat in (TruePositiveRate(), FScore(2.0), Accuracy(), EqualizedOdds(),
                 StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()),
                 CustomLinearFractionalStatistic(0.0, lambda y: y, lambda y: y, 0.0), WithLabel()):
        assert stat.requires_labels, type(stat).__name__
    assert not CustomLinearFractionalStatistic(0.0, 1.0, 1.0, 0.0).requires_labels
    assert not WithoutLabel().requires_labels

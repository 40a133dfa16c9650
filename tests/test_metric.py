import matplotlib
import pytest
import torch

from fairret.metric import LinearFractionalParity, gap_abs_max, gap_max_min
from fairret.statistic import FalsePositiveRate, PositiveRate, StackedLinearFractionalStatistic, TruePositiveRate

matplotlib.use("Agg")


def test_streaming_equals_one_shot():
    torch.manual_seed(0)
    p, y = torch.rand(100, 1), (torch.rand(100, 1) < 0.5).float()
    s = torch.nn.functional.one_hot(torch.randint(0, 3, (100,)), 3).float()
    stat = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
    m = LinearFractionalParity(stat, (2, 3))
    for i in range(0, 100, 30):
        m.update(p[i:i + 30], s[i:i + 30], y[i:i + 30])
    per_group = stat(p.double(), s.double(), y.double())
    overall = stat.overall_statistic(p.double(), y.double())
    torch.testing.assert_close(m.compute_per_group(), per_group.float())
    torch.testing.assert_close(m.compute(), (per_group / overall - 1).abs().amax(-1).float())
    m2 = LinearFractionalParity(stat, (2, 3), gap_fn=gap_abs_max)
    m2.update(p, s, y)
    torch.testing.assert_close(m2.compute(), (per_group - overall).abs().amax(-1).float())


def test_absent_group_and_plot():
    m = LinearFractionalParity(PositiveRate(), 3)
    m.update(torch.tensor([[0.2], [0.6], [0.4]]), torch.tensor([[1., 0, 0], [1, 0, 0], [0, 1, 0]]))
    vals = m.compute_per_group()
    assert torch.isnan(vals[2]) and vals[:2].tolist() == pytest.approx([0.4, 0.4])
    assert m.compute().item() == pytest.approx(0.0, abs=1e-7)
    fig, ax = m.plot(group_names=["a", "b", "c"])
    assert len(ax.patches) == 3


def _rate_difference_by_hand(hard, y, groups, n_groups, label=None):
    """max - min over the groups with rows (among those with y == label when given) of the positive rate, in plain
    Python."""
    rates = []
    for g in range(n_groups):
        rows = [h for h, yy, gg in zip(hard, y, groups) if gg == g and (label is None or yy == label)]
        if rows:
            rates.append(sum(rows) / len(rows))
    return max(rates) - min(rates) if rates else 0.0


@pytest.mark.parametrize("seed", range(4))
def test_gap_max_min_is_the_rate_difference_between_groups(seed):
    # thresholded predictions, five groups of which one never appears and some rows in no group at all (their
    # rates move the overall value outside the groups' range: an absent group must not take that value)
    from fairret.statistic import EqualizedOdds

    g = torch.Generator().manual_seed(seed)
    n = 80
    groups = torch.randint(-1, 4, (n,), generator=g)  # -1: no group; group 4 absent
    hard = (torch.rand(n, generator=g) < 0.6 + 0.1 * groups).double()
    hard[groups == -1] = 0.0  # the overall rates fall below every group's
    y = (torch.rand(n, generator=g) < 0.5).double()
    sens = (groups.unsqueeze(1) == torch.arange(5)).double()
    dp = LinearFractionalParity(PositiveRate(), 5, gap_fn=gap_max_min)
    eo = LinearFractionalParity(EqualizedOdds(), (2, 5), gap_fn=gap_max_min)
    for i in range(0, n, 25):  # streamed in uneven batches
        dp.update(hard[i:i + 25, None], sens[i:i + 25])
        eo.update(hard[i:i + 25, None], sens[i:i + 25], y[i:i + 25])
    h, yy, gg = hard.tolist(), y.tolist(), groups.tolist()
    assert dp.compute().item() == pytest.approx(_rate_difference_by_hand(h, yy, gg, 5), abs=1e-6)
    tpr, fpr = (_rate_difference_by_hand(h, yy, gg, 5, label) for label in (1.0, 0.0))
    torch.testing.assert_close(eo.compute(), torch.tensor([tpr, fpr]), atol=1e-6, rtol=0)


def test_gap_max_min_without_a_group_and_with_one():
    m = LinearFractionalParity(PositiveRate(), 2, gap_fn=gap_max_min)
    m.update(torch.tensor([[0.3], [0.9]]), torch.zeros(2, 2))  # no group present: no gap
    assert m.compute().item() == 0.0
    m.update(torch.tensor([[0.7]]), torch.tensor([[0.0, 1.0]]))  # one group: no gap either
    assert m.compute().item() == 0.0
    assert gap_max_min(torch.tensor([[0.1, 0.4], [0.9, 0.2]])).tolist() == pytest.approx([0.3, 0.7])


def test_errors():
    m = LinearFractionalParity(PositiveRate(), 2)
    with pytest.raises(ValueError, match=r"Expected argument `sens` to have S=2 columns"):
        m.update(torch.rand(4, 1), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"Expected argument `stat_shape`"):
        LinearFractionalParity(PositiveRate(), 0)


def test_requires_labels_and_backend_check():
    from fairret.metric import CCdCov, DistanceCorrelation, JdCov

    assert LinearFractionalParity(TruePositiveRate(), 2).requires_labels
    assert not LinearFractionalParity(PositiveRate(), 2).requires_labels
    for cls in (DistanceCorrelation, CCdCov, JdCov):
        with pytest.raises(ValueError, match=r"Expected argument `backend` to be one of \('auto', 'dense', 'tiled'"):
            cls(backend="fast")


def _attribute_data():
    from fairret.sensitive import SensitiveEncoder

    g = torch.Generator().manual_seed(4)
    n = 60
    race = torch.randint(0, 3, (n,), generator=g)
    sex = torch.randint(0, 2, (n,), generator=g)
    age = torch.rand(n, generator=g, dtype=torch.float64)
    logits = (race.double() - sex.double() + age + 0.3 * torch.randn(n, generator=g, dtype=torch.float64))[:, None]
    enc = SensitiveEncoder({"race": "categorical", "sex": "binary", "age": "continuous"})
    sa = enc.fit_transform({"race": race.tolist(), "sex": sex.tolist(), "age": age.tolist()}, dtype=torch.float64)
    return logits, sa


@pytest.mark.parametrize("structure", ["list", "SensitiveAttributes", "discrete", "single tensor"])
def test_dependence_metrics_equal_their_losses(structure):
    # equal arguments, equal values: the epoch metric streamed in uneven batches against the loss on the whole batch
    from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, JdCovLoss
    from fairret.metric import CCdCov, DistanceCorrelation, JdCov

    logits, sa = _attribute_data()
    kw = {"categorical": "discrete"} if structure == "discrete" else {}
    if structure == "list":
        sens, weights = [sa.columns_of(name) for name in ("race", "sex", "age")], [1.0, 2.0, 0.5]
    elif structure == "single tensor":
        sens, weights = sa.matrix, [3.0]
    else:
        sens, weights = sa, [1.0, 2.0, 0.5]

    def rows(a, sl):
        if isinstance(a, list):
            return [t[sl] for t in a]
        if isinstance(a, torch.Tensor):
            return a[sl]
        return type(a)(a.matrix[sl], a.blocks, a.column_names, {k: v[sl] for k, v in a.group_ids.items()},
                       a.dropped_cells)

    pairs = [(CCdCov(weights=weights, **kw), CCdCovLoss(weights=weights, **kw)),
             (CCdCov(weights=weights, unbiased=False, **kw), CCdCovLoss(weights=weights, unbiased=False, **kw)),
             (DistanceCorrelation(**kw), DistanceCorrelationLoss(**kw))]
    if structure != "single tensor":  # JdCov of one plain tensor splits its columns (see the metric)
        pairs.append((JdCov(**kw), JdCovLoss(**kw)))
    for metric, loss in pairs:
        for sl in (slice(0, 7), slice(7, 40), slice(40, 60)):
            metric.update(torch.sigmoid(logits[sl]), rows(sens, sl))
        want = loss(logits, sens)
        assert metric.compute().item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12), type(metric).__name__


def test_ccdcov_weights_are_per_attribute_not_per_column():
    from fairret.functional import distance_covariance_sqr
    from fairret.metric import CCdCov

    logits, sa = _attribute_data()
    p = torch.sigmoid(logits)
    m = CCdCov(weights=[2.0, 1.0, 1.0])
    m.update(p, sa)  # race has three one-hot columns, all weighted 2
    want = distance_covariance_sqr(p, torch.cat([2 * sa.columns_of("race"), sa.columns_of("sex"),
                                                 sa.columns_of("age")], 1), unbiased=True)
    assert m.compute().item() == pytest.approx(want.item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"Expected argument `sens` to hold one attribute per weight \(3\), but got 1"):
        CCdCov(weights=[1.0, 2.0, 3.0]).update(p, sa.matrix)
    m = CCdCov()
    m.update(p[:10], [sa.matrix[:10, :3], sa.matrix[:10, 3:]])
    with pytest.raises(ValueError, match=r"attributes of \[3, 2\] columns as in the first update, but got \[5\]"):
        m.update(p[10:], sa.matrix[10:])
    m.reset()
    m.update(p, sa.matrix)  # a reset forgets the structure
    with pytest.raises(TypeError, match=r"Expected argument `sens` to be a tensor, a SensitiveAttributes or a list"):
        m.update(p, {"race": sa.matrix})


# --- pred_as_logit on the dependence metrics and the JSD: the losses' meaning (issue 24 walk-through) --------------
def test_dependence_metrics_take_pred_as_logit_with_the_losses_meaning():
    import warnings

    import dcor
    import numpy as np

    from fairret._validation import PredictionWarning
    from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, JdCovLoss
    from fairret.metric import CCdCov, DistanceCorrelation, JdCov

    logits, sa = _attribute_data()
    prob = torch.sigmoid(logits)
    z = sa.matrix.numpy()
    for metric_cls, loss in ((DistanceCorrelation, DistanceCorrelationLoss()), (CCdCov, CCdCovLoss()),
                             (JdCov, JdCovLoss())):
        on_logits, on_prob, auto = metric_cls(pred_as_logit=True), metric_cls(), metric_cls(pred_as_logit=None)
        for sl in (slice(0, 25), slice(25, 60)):
            on_logits.update(logits[sl], sa[sl])
            on_prob.update(prob[sl], sa[sl])
            if sl.start == 0:
                with pytest.warns(PredictionWarning, match=rf"{metric_cls.__name__}: `pred` holds values outside "
                                                           r"\[0, 1\], read as logits.*pred_as_logit=True"):
                    auto.update(logits[sl], sa[sl])
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # said once
                    auto.update(logits[sl], sa[sl])
        want = loss(logits, sa)  # the loss reads logits by default
        for m in (on_logits, on_prob, auto):
            assert m.compute().item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12), metric_cls.__name__
    # against an independent reference: dcor's (V-statistic) dCor² of the probabilities and the attribute columns
    m = DistanceCorrelation(pred_as_logit=True)
    m.update(logits, sa.matrix)
    assert m.compute().item() == pytest.approx(dcor.distance_correlation_sqr(prob.numpy()[:, 0], z), rel=1e-9)
    # the default takes values as given, as these metrics always did (probabilities or regression outputs)
    m = DistanceCorrelation()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.update(logits, sa.matrix)
    assert m.compute().item() == pytest.approx(dcor.distance_correlation_sqr(logits.numpy()[:, 0], z), rel=1e-9)
    assert m.compute().item() != pytest.approx(dcor.distance_correlation_sqr(prob.numpy()[:, 0], z), rel=1e-3)
    # several columns: the softmax over them, as the losses take them
    g = torch.Generator().manual_seed(5)
    multi = torch.randn(60, 3, generator=g, dtype=torch.float64) * 2
    m = CCdCov(pred_as_logit=True)
    m.update(multi, sa)
    assert m.compute().item() == pytest.approx(CCdCovLoss()(multi, sa).item(), rel=1e-9)
    assert m.compute().item() == pytest.approx(dcor.u_distance_covariance_sqr(np.asarray(
        torch.softmax(multi, 1)), z), rel=1e-9)
    with pytest.raises(TypeError, match="Expected argument `pred_as_logit` to be True, False or None"):
        DistanceCorrelation(pred_as_logit="yes")


def test_intersectional_jsd_takes_pred_as_logit():
    from fairret.functional.calibration import intersectional_jsd
    from fairret.metric import IntersectionalJSD

    g = torch.Generator().manual_seed(6)
    logits, cells = torch.randn(80, generator=g) * 2, torch.randint(0, 3, (80,), generator=g)
    m = IntersectionalJSD(pred_as_logit=True)
    m.update(logits[:30], cells[:30])
    m.update(logits[30:], cells[30:])
    want = intersectional_jsd(torch.sigmoid(logits.double()), cells)
    assert m.compute().item() == pytest.approx(want.item(), rel=1e-12)
    as_given = IntersectionalJSD()
    as_given.update(logits, cells)
    assert as_given.compute().item() == pytest.approx(intersectional_jsd(logits.double(), cells).item(), rel=1e-12)

"""The fairness monitors' engine (fairret._monitoring) reports through fairret.report: per-group values and
between-group figures by hand and equal to fairness_report's on the same rows; the collapse warning on collapsed
predictions and none on valid ones."""
import math
import warnings

import pytest
import torch

from fairret._monitoring import FairnessTracker, collapse_message, monitor_probabilities
from fairret._validation import CollapsedPredictionsWarning
from fairret.metric import LinearFractionalParity
from fairret.report import compare_groups, fairness_report, group_gaps
from fairret.statistic import EqualizedOdds, PositiveRate, TruePositiveRate


def rows(n=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 3, (n,), generator=g)
    y = (torch.rand(n, generator=g) < 0.5).double()
    prob = torch.rand(n, generator=g, dtype=torch.float64)
    return prob, y, groups


def test_compare_groups_by_hand_with_absent_group_and_undefined_rate():
    prob, y, groups = rows()
    y[groups == 1] = 0.0  # group 1 has no positives: its TPR is undefined
    sens = torch.nn.functional.one_hot(groups, 4).double()  # group 3 has no rows
    table = compare_groups(TruePositiveRate().sums(prob.unsqueeze(1), sens, y.unsqueeze(1)))
    p, t, g = prob.tolist(), y.tolist(), groups.tolist()
    tpr = {}
    for k in (0, 2):
        hits = [pi for pi, ti, gi in zip(p, t, g) if gi == k and ti == 1]
        tpr[k] = sum(hits) / len(hits)
    overall = sum(pi for pi, ti in zip(p, t) if ti == 1) / sum(t)
    assert table.valid[0].tolist() == [True, False, True, False]
    assert math.isnan(table.values[0, 1]) and math.isnan(table.values[0, 3])
    assert table.values[0, 0].item() == pytest.approx(tpr[0], rel=1e-12)
    assert table.overall[0].item() == pytest.approx(overall, rel=1e-12)
    assert table.difference[0].item() == pytest.approx(abs(tpr[0] - tpr[2]), rel=1e-12)
    assert table.relative[0].item() == pytest.approx(max(abs(v / overall - 1) for v in tpr.values()), rel=1e-12)
    # a mask leaves groups out of the figures (not out of the values); one defined group left: NaN, not 0
    masked = compare_groups(TruePositiveRate().sums(prob.unsqueeze(1), sens, y.unsqueeze(1)),
                            torch.tensor([True, True, False, True]))
    assert torch.equal(masked.values.isnan(), table.values.isnan())
    assert math.isnan(masked.difference[0]) and math.isnan(masked.relative[0])


def test_compare_groups_flattens_stacked_metric_sums():
    prob, y, groups = rows(seed=1)
    sens = torch.nn.functional.one_hot(groups, 3).double()
    m = LinearFractionalParity(EqualizedOdds(), (2, 3), pred_as_logit=False)
    for part in torch.arange(len(prob)).split(17):
        m.update(prob[part].unsqueeze(1), sens[part], y[part].unsqueeze(1))
    table = compare_groups(m.compute_sums())
    assert table.values.shape == (2, 3) and table.overall.shape == (2,)
    torch.testing.assert_close(table.values.float(), m.compute_per_group().reshape(2, 3))
    torch.testing.assert_close(table.relative.float(), m.compute())  # the metric's default gap where all defined
    d, r = group_gaps(table.values, table.valid, table.overall.unsqueeze(1))
    torch.testing.assert_close(d, table.difference)
    torch.testing.assert_close(r, table.relative)


def test_tracker_summary_equals_fairness_report_on_decisions():
    """On 0/1 decisions the monitor's rates are the report's: the same computation, streamed in uneven batches."""
    prob, y, groups = rows(n=120, seed=2)
    hard = (prob > 0.5).double()
    sens = torch.nn.functional.one_hot(groups, 3).double()
    names = ["a", "b", "c"]
    tracker = FairnessTracker(group_names=names)
    for part in torch.arange(120).split(37):
        tracker.update(monitor_probabilities(hard[part], pred_as_logit=False), sens[part], y[part])
    res = tracker.compute()
    report = fairness_report(hard, y, {"g": [names[k] for k in groups.tolist()]}, min_group_size=1, n_boot=0,
                             pred_as_logit=False)
    by_label = {c.label: c for c in res.columns}
    for label, stat in (("pr", "positive_rate"), ("tpr", "tpr"), ("fpr", "fpr")):
        col = by_label[label]
        want = {row["group"]: row[stat] for row in report.table("g")}
        assert col.values == pytest.approx([want[n] for n in names], rel=1e-12)
        assert col.overall == pytest.approx(report.overall[stat], rel=1e-12)
        assert col.difference == pytest.approx(report.gap("g", stat).difference, rel=1e-12)
        assert col.relative == pytest.approx(report.gap("g", stat).relative, rel=1e-12)
    assert res.counts == [float((groups == k).sum()) for k in range(3)] and res.rows == 120
    table = res.render("Fairness (test)").splitlines()
    spread = next(line for line in table if line.startswith("max - min")).split()[3:]
    assert [float(v) for v in spread] == pytest.approx([round(by_label[k].difference, 3) for k in ("pr", "tpr", "fpr")])


def test_render_shows_no_difference_with_one_defined_group():
    tracker = FairnessTracker(group_names=["a", "b"])
    sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    # group b has no positives (its TPR is undefined), group a no negatives: no TPR or FPR difference (nan, not 0)
    tracker.update(torch.tensor([[0.9], [0.2], [0.7], [0.1]]), sens, torch.tensor([1., 1., 0., 0.]))
    res = tracker.compute()
    tpr = next(c for c in res.columns if c.label == "tpr")
    assert math.isnan(tpr.values[1]) and math.isnan(tpr.difference)
    line = next(line for line in res.render("t").splitlines() if line.startswith("max - min"))
    assert line.split()[3:] == ["0.150", "nan", "nan"]  # pr 0.55 vs 0.4; TPR only in a, FPR only in b


# --- the collapse warning ---------------------------------------------------------------------------------------
def feed(prob, n_batches=3, pred_as_logit=False, sens=None):
    n = prob.shape[0]
    sens = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).float() if sens is None else sens
    tracker = FairnessTracker(group_names=["a", "b"])
    for part in torch.arange(n).split(-(-n // n_batches)):
        tracker.update(monitor_probabilities(prob[part], pred_as_logit), sens[part])
    return tracker


def test_collapse_warns_with_the_fix_for_one_decision_and_for_a_constant():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(60, 1, generator=g) * 0.4  # every row below 0.5: all predicted negative
    with pytest.warns(CollapsedPredictionsWarning, match=r"all 60 rows of this evaluation are predicted negative "
                                                         r"at the 0.5 threshold.*lower λ.*both groups"):
        res = feed(low).compute()
    assert res.collapse is not None and "SensitiveEncoder 'categorical'" in res.collapse
    with pytest.warns(CollapsedPredictionsWarning, match=r"predicted positive"):
        feed(low + 0.55).compute()
    with pytest.warns(CollapsedPredictionsWarning, match=r"same prediction \(probability 0.5; spread 0\).*lower λ"):
        feed(torch.zeros(60, 1), pred_as_logit=True).compute()  # a constant logit 0
    # probabilities monitored as logits all lie in [0.5, 0.73]: the message names pred_as_logit=False
    with pytest.warns(CollapsedPredictionsWarning, match=r"predicted positive.*pass pred_as_logit=False"):
        feed(torch.rand(60, 1, generator=g), pred_as_logit=True).compute()
    # several classes: one arg-max class for every row
    three = torch.softmax(torch.randn(60, 3, generator=g) + torch.tensor([4.0, 0.0, 0.0]), 1)
    with pytest.warns(CollapsedPredictionsWarning, match="all 60 rows of this evaluation are predicted class 0"):
        feed(three).compute()
    # warn=False (the callbacks off the main process, Lightning's sanity check): the text only
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedPredictionsWarning)
        assert feed(low).compute(warn=False).collapse is not None


def test_no_collapse_warning_on_valid_predictions():
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedPredictionsWarning)
        assert feed(torch.rand(60, 1, generator=g)).compute().collapse is None
        assert feed(torch.randn(60, 1, generator=g) * 2, pred_as_logit=True).compute().collapse is None
        # one row on the other side is enough
        prob = torch.full((60, 1), 0.2) + torch.rand(60, 1, generator=g) * 0.1
        prob[7] = 0.8
        assert feed(prob).compute().collapse is None
        assert feed(torch.softmax(torch.randn(60, 3, generator=g), 1)).compute().collapse is None
        assert feed(torch.tensor([[0.3]]), n_batches=1).compute().collapse is None  # one row says nothing


def test_collapse_message_edges():
    assert collapse_message([0.1], [0.9], [3, 4]) is None
    assert collapse_message([], [], []) is None
    assert collapse_message([float("inf")], [float("-inf")], [0, 0]) is None  # nothing seen
    assert "spread" in collapse_message([0.3], [0.3], [5, 0])

"""The fairness monitors' engine (fairret._monitoring) reports through fairret.report: per-group values and
between-group figures by hand and equal to fairness_report's on the same rows; the collapse warning on collapsed
predictions and none on valid ones."""
import math
import warnings

import pytest
import torch

from fairret._monitoring import FairnessTracker, collapse_message, monitor_probabilities
from fairret._validation import CollapsedPredictionsWarning, SensitiveGroupsWarning
from fairret.metric import DistanceCorrelation, LinearFractionalParity
from fairret.report import ReportWarning, compare_groups, fairness_report, group_gaps
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
    tracker = FairnessTracker(group_names=names, min_group_size=1)  # as the report below: every group compared
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
    tracker = FairnessTracker(group_names=["a", "b"], min_group_size=1)
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


# --- a SensitiveAttributes batch: the group matrix, both groups of a binary attribute (issue 24 walk-through) -----
def encoded(n=120, seed=3):
    from fairret.sensitive import SensitiveEncoder

    g = torch.Generator().manual_seed(seed)
    sex = ["Female" if v else "Male" for v in (torch.rand(n, generator=g) < 0.3).tolist()]
    race = [["a", "b", "c"][k] for k in torch.randint(0, 3, (n,), generator=g).tolist()]
    age = (20 + 50 * torch.rand(n, generator=g)).tolist()
    prob = torch.rand(n, 1, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).double()
    sa = SensitiveEncoder({"race": "categorical", "sex": "binary", "age": "continuous"}).fit_transform(
        {"race": race, "sex": sex, "age": age})
    return prob, y, sa, sex, race


def test_sensitive_attributes_batch_gives_both_groups_of_a_binary_attribute():
    prob, y, sa, sex, race = encoded()
    assert sa.matrix.shape[1] == 5  # race a/b/c, sex=Male (one column), age
    tracker = FairnessTracker(min_group_size=1)
    for part in torch.arange(len(y)).split(50):
        tracker.update(prob[part], sa[part], y[part])
    res = tracker.compute()
    names = ["race=a", "race=b", "race=c", "sex=Female", "sex=Male"]
    assert res.group_names == names
    # by hand: each group's mean probability, over everyone and over its positives
    groups = {"race=" + r: [race[i] == r for i in range(len(y))] for r in "abc"}
    groups.update({"sex=" + s: [sex[i] == s for i in range(len(y))] for s in ("Female", "Male")})
    p, t = prob[:, 0].tolist(), y.tolist()
    for name in names:
        rows = [i for i, m in enumerate(groups[name]) if m]
        pr = sum(p[i] for i in rows) / len(rows)
        tpr = sum(p[i] for i in rows if t[i] == 1) / sum(t[i] for i in rows)
        assert res.values[f"dp_relative_gap/pr/{name}"] == pytest.approx(pr, rel=1e-6)
        assert res.values[f"eo_relative_gap/tpr/{name}"] == pytest.approx(tpr, rel=1e-6)
    assert res.counts == [float(sum(groups[n])) for n in names]
    overall = sum(p) / len(p)
    want = max(abs(sum(p[i] for i, m in enumerate(groups[n]) if m) / sum(groups[n]) / overall - 1) for n in names)
    assert res.values["dp_relative_gap"] == pytest.approx(want, rel=1e-5)
    assert "sex=Female" in res.render("t")
    # the same as the group matrix with its names given, and as LinearFractionalParity given the SensitiveAttributes
    ref = FairnessTracker(group_names=names, min_group_size=1)
    ref.update(prob, sa.group_matrix(), y)
    rates = {k: v for k, v in res.values.items() if k != "dcor"}
    assert {k: v for k, v in ref.compute().values.items() if k != "dcor"} == pytest.approx(rates, rel=1e-6)
    # the dependence metric gets the SensitiveAttributes itself (one column per binary attribute, and age)
    dcor = DistanceCorrelation()
    dcor.update(prob, sa)
    assert res.values["dcor"] == pytest.approx(dcor.compute().item(), rel=1e-6)
    m = LinearFractionalParity(PositiveRate(), 5, pred_as_logit=False)
    with pytest.warns(SensitiveGroupsWarning, match=r"continuous attributes \['age'\]"):  # the metric says so
        m.update(prob, sa)
    assert res.values["dp_relative_gap"] == pytest.approx(m.compute().item(), rel=1e-5)


# --- min_group_size: small groups shown, left out of the gaps, as in fairness_report ------------------------------
def small_group_rows():
    """Two groups of 40 rows and one of 2 whose decisions are all positive (0/1 predictions: soft = hard rates)."""
    g = torch.Generator().manual_seed(4)
    groups = torch.tensor([0] * 40 + [1] * 40 + [2] * 2)
    hard = (torch.rand(82, generator=g) < torch.where(groups == 0, 0.3, 0.6)).double()
    hard[groups == 2] = 1.0
    y = (torch.rand(82, generator=g) < 0.5).double()
    return hard, y, groups


def test_min_group_size_leaves_small_groups_out_of_the_gaps_as_the_report_does():
    hard, y, groups = small_group_rows()
    sens = torch.nn.functional.one_hot(groups, 3).double()
    names = ["big1", "big2", "tiny"]
    tracker = FairnessTracker(group_names=names)  # default min_group_size=30
    for part in torch.arange(82).split(30):
        tracker.update(hard[part].unsqueeze(1), sens[part], y[part])
    res = tracker.compute()
    # by hand, over big1 and big2 only (the overall rate over all 82 rows)
    rate = [hard[groups == k].mean().item() for k in range(3)]
    overall = hard.mean().item()
    want_rel = max(abs(rate[k] / overall - 1) for k in (0, 1))
    assert res.values["dp_relative_gap"] == pytest.approx(want_rel, rel=1e-6)
    assert res.values["dp_relative_gap/pr/tiny"] == pytest.approx(1.0)  # shown and logged
    pr = next(c for c in res.columns if c.label == "pr")
    assert pr.difference == pytest.approx(abs(rate[1] - rate[0]), rel=1e-6)
    assert pr.relative == pytest.approx(want_rel, rel=1e-6)
    assert res.small == [False, False, True]
    # the tiny group (rate 1.0) would set the gap: it does with min_group_size=1
    every = FairnessTracker(group_names=names, min_group_size=1)
    every.update(hard.unsqueeze(1), sens, y)
    assert every.compute().values["dp_relative_gap"] == pytest.approx(abs(1.0 / overall - 1), rel=1e-6)
    assert abs(1.0 / overall - 1) > want_rel + 0.05
    # the same figures as fairness_report on the same decisions, with the same rule
    g_names = [names[k] for k in groups.tolist()]
    with pytest.warns(ReportWarning, match=r"tiny \(n=2\)"):
        report = fairness_report(hard, y, {"g": g_names}, n_boot=0, pred_as_logit=False)
    for label, stat in (("pr", "positive_rate"), ("tpr", "tpr"), ("fpr", "fpr")):
        col = next(c for c in res.columns if c.label == label)
        assert col.difference == pytest.approx(report.gap("g", stat).difference, rel=1e-12)
        assert col.relative == pytest.approx(report.gap("g", stat).relative, rel=1e-12)
    assert res.values["eo_relative_gap/tpr"] == pytest.approx(report.gap("g", "tpr").relative, rel=1e-6)
    assert res.values["eo_relative_gap/fpr"] == pytest.approx(report.gap("g", "fpr").relative, rel=1e-6)
    # said so in the table
    table = res.render("Fairness (val)").splitlines()
    assert next(line for line in table if line.startswith("tiny")).endswith("(small)")
    assert not next(line for line in table if line.startswith("big1")).endswith("(small)")
    assert any(line.startswith("(small): fewer than 30 rows (min_group_size)") for line in table)


def test_min_group_size_leaves_fewer_than_two_groups_nan_and_is_checked():
    hard, y, groups = small_group_rows()
    sens = torch.nn.functional.one_hot(groups, 3).double()
    tracker = FairnessTracker(group_names=["a", "b", "c"], min_group_size=41)  # no group is large enough
    tracker.update(hard.unsqueeze(1), sens, y)
    res = tracker.compute()
    assert math.isnan(res.values["dp_relative_gap"]) and math.isnan(res.values["eo_relative_gap/tpr"])
    assert res.values["dp_relative_gap/pr/a"] == pytest.approx(hard[groups == 0].mean().item())
    assert res.small == [True, True, True]
    for bad in (-1, 2.5, True, "30"):
        with pytest.raises(ValueError, match="Expected argument `min_group_size` to be an int >= 0"):
            FairnessTracker(min_group_size=bad)


def test_summary_says_the_columns_are_mean_probabilities():
    tracker = FairnessTracker(group_names=["a", "b"], min_group_size=1)
    sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    tracker.update(torch.tensor([[0.9], [0.2], [0.7], [0.1]]), sens, torch.tensor([1., 0., 1., 0.]))
    last = tracker.compute().render("t").splitlines()[-1]
    assert last == ("pr: mean predicted probability; tpr: mean probability where y = 1; fpr: mean probability "
                    "where y = 0 (soft rates, not rates of 0/1 decisions)")

"""The main job's quick path on a subsample of the real data: outputs exist and the penalties make it fairer."""
import csv

import pytest

pytest.importorskip("lightning")

from fairret import demo  # noqa: E402


def test_demo_quick_path_on_a_subsample(data_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    res = demo.main(["--data-dir", str(data_dir), "--out", str(out), "--subsample", "1500", "--seeds", "2",
                     "--epochs", "8", "--workers", "1", "--quiet"])
    printed = capsys.readouterr().out
    for name in ("runs.csv", "summary.md", "pareto_compas.png", "pareto_adult.png", "calibration.png",
                 "regression.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "## compas (groups: race × sex)" in printed and "What it shows:" in printed
    assert "Most accurate penalty with a DP difference ≤ 1" in printed or "No penalty reaches" in printed
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res["rows"]) > 0
    cls = res["classification"]

    def one(ds, setting, lam=None):
        cands = [a for a in cls if a["dataset"] == ds and a["setting"] == setting]
        return max(cands, key=lambda a: a["lam"]) if lam is None else next(a for a in cands if a["lam"] == lam)

    for ds in ("compas", "adult"):
        base = one(ds, "baseline (BCE)")
        assert 55 < base["acc"] < 90
        # the strongest weight of each loss is fairer than the baseline on the measure it targets
        assert one(ds, "CCdCov")["dcor"] < base["dcor"]
    # DP: Adult's two sex groups; COMPAS's gap across ten race x sex cells is no measure on this subsample's 450
    # test rows (cells of one to three people: +-16-24 points between two seeds), its probabilities' JSD across
    # the same cells is
    assert one("adult", "NormLoss DP")["dp_difference"] < one("adult", "baseline (BCE)")["dp_difference"]
    assert one("compas", "NormLoss DP")["jsd"] < one("compas", "baseline (BCE)")["jsd"]
    assert one("compas", "CCdCov")["jsd"] < one("compas", "baseline (BCE)")["jsd"]
    reg = res["regression"]
    rbase = next(a for a in reg if a["setting"] == "baseline (MSE)")
    assert max((a for a in reg if a["setting"] == "CCdCov"), key=lambda a: a["lam"])["dcor"] < rbase["dcor"]


def test_demo_rejects_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--datasets", "mnist"])
    assert "--datasets must name compas and/or adult" in capsys.readouterr().err


def test_auc_and_diffdp():
    import torch

    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert demo._auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    assert demo._auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), y) == pytest.approx(0.5)
    # DiffDP: largest difference of group mean probabilities
    logits = torch.tensor([[0.0], [0.0], [10.0], [-10.0]])
    sens = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert demo.diffdp(logits, sens).item() == pytest.approx(0.0, abs=1e-4)
    assert demo.diffdp(torch.tensor([[10.0], [10.0], [-10.0], [-10.0]]), sens).item() == pytest.approx(1.0, abs=1e-4)


def test_sensitive_features_append_sex_and_race_columns(data_dir):
    import torch

    from fairret.lightning.examples import TabularDataModule

    plain = TabularDataModule("compas", str(data_dir), val_fraction=0.0, seed=0)
    with_sens = TabularDataModule("compas", str(data_dir), val_fraction=0.0, seed=0, sensitive_features=True)
    plain.setup("fit")
    with_sens.setup("fit")
    x0, x1 = plain.splits["train"].tensors["x"], with_sens.splits["train"].tensors["x"]
    # 2 sex and 4 race columns (African-American, Caucasian, Hispanic, Other), 0/1, after the original features
    assert with_sens.num_features == plain.num_features + 6 == x1.shape[1]
    torch.testing.assert_close(x1[:, : x0.shape[1]], x0)
    t = with_sens.splits["train"].tensors
    torch.testing.assert_close(x1[:, x0.shape[1]:], torch.cat([t["sex"], t["race"]], dim=1))
    assert set(x1[:, x0.shape[1]:].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x1[:, x0.shape[1]:].sum(1), torch.full((x1.shape[0],), 2.0))
    assert demo.DATASETS["compas"][3] and not demo.DATASETS["adult"][3]
    with pytest.raises(ValueError, match="sensitive_features"):
        TabularDataModule("synthetic", sensitive_features=True)


@pytest.mark.parametrize("seed", range(3))
def test_rate_differences_by_hand(seed):
    """DP and EO differences through the library's metric against per-group rates counted in plain Python."""
    import torch

    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 4, (50,), generator=g)
    hard = (torch.rand(50, generator=g) < 0.3 + 0.1 * groups).float()
    y = (torch.rand(50, generator=g) < 0.5).float()
    h, t, gr = hard.tolist(), y.tolist(), groups.tolist()

    def difference(label=None):
        rates = []
        for k in set(gr):
            rows = [hi for hi, ti, gi in zip(h, t, gr) if gi == k and (label is None or ti == label)]
            if rows:
                rates.append(sum(rows) / len(rows))
        return 100 * (max(rates) - min(rates))

    got = demo.rate_differences(hard, y, groups)
    assert got["dp_difference"] == pytest.approx(difference(), abs=1e-4)  # the metric returns float32
    assert got["eo_difference"] == pytest.approx(max(difference(1.0), difference(0.0)), abs=1e-4)


def _agg(setting, family, lam, acc, dp, jsd=0.01, seconds=2.0):
    return {"dataset": "adult", "task": "classification", "setting": setting, "family": family, "lam": lam,
            "acc": acc, "dp_difference": dp, "eo_difference": 5.0, "jsd": jsd, "dcor": 0.1, "seconds": seconds}


def test_findings_name_the_front_the_best_within_a_gap_and_the_comparisons():
    aggs = [_agg("baseline (BCE)", "baseline", 0.0, 85.0, 18.0, jsd=0.06, seconds=2.0),
            _agg("group thresholds", "postprocess", 0.0, 82.8, 1.0, jsd=0.01),
            _agg("DiffDP (FFB)", "diffdp", 1.0, 82.6, 1.4),
            _agg("DiffDP (FFB)", "diffdp", 2.0, 82.3, 0.9),
            _agg("NormLoss DP", "linear-fractional", 0.3, 82.5, 0.95, jsd=0.012, seconds=3.0),
            _agg("KLProjection DP", "linear-fractional", 10.0, 83.1, 2.8, jsd=0.009, seconds=4.0),
            _agg("KLProjection DP", "linear-fractional", 30.0, 82.5, 1.5, jsd=0.008, seconds=4.0)]
    lines = demo.findings(aggs, max_gap=1.0, max_acc_loss=2.0)["adult"]
    text = "\n".join(lines)
    # the front by DP difference: post-processing (82.8 at 1.0) beats DiffDP λ=1 (82.6 at 1.4) and KLProjection
    # λ=30 (82.5 at 1.5)
    assert ("front (no other setting is both more accurate and has a smaller difference): DiffDP (FFB) λ=2 82.30% "
            "at 0.90; NormLoss DP λ=0.3 82.50% at 0.95; group thresholds 82.80% at 1.00; KLProjection DP λ=10 "
            "83.10% at 2.80; baseline (BCE) 85.00% at 18.00.") in text
    assert ("Most accurate penalty with a DP difference ≤ 1: NormLoss DP λ=0.3, 82.50% at 0.95 (accuracy -2.50 "
            "points against the unconstrained model)") in text
    # the JSD budget: accuracy >= 83.0 leaves KLProjection λ=10 only
    assert ("Lowest JSD within 2 points of the unconstrained accuracy: KLProjection DP λ=10, JSD 0.0600 → 0.0090 "
            "(-85%)") in text
    assert ("The most accurate penalty with a difference no larger: NormLoss DP λ=0.3, 82.50% at 0.95 (-0.30 "
            "points)") in text
    assert ("λ=1 (82.60% at 1.40): NormLoss DP λ=0.3 82.50% at 0.95 (-0.10 points); λ=2 (82.30% at 0.90): no "
            "fairret loss with a difference that small") in text
    assert "unconstrained 2.0 s; with a penalty DiffDP (FFB) ×1.00, NormLoss DP ×1.50, KLProjection DP ×2.00" in text
    assert ("- group thresholds on the unconstrained model (it needs each row's group at prediction time): 82.80% at "
            "DP difference 1.00.") in text
    # nothing within the gap: the smallest difference is named instead
    lines = demo.findings(aggs, max_gap=0.5)["adult"]
    assert any(line.startswith("- No penalty reaches a DP difference ≤ 0.5; the smallest: DiffDP (FFB) λ=2, 0.90")
               for line in lines)


def test_regression_findings():
    base = {"dataset": "compas", "task": "regression", "family": "baseline", "setting": "baseline (MSE)", "lam": 0.0,
            "rmse": 0.7, "dcor": 0.2, "jsd": 0.1, "seconds": 1.0}
    pen = {**base, "family": "dependence", "setting": "CCdCov", "lam": 3.0, "rmse": 0.714, "dcor": 0.05, "jsd": 0.08,
           "seconds": 1.5}
    lines = demo.findings([base, pen])["regression"]
    assert lines[1] == "- CCdCov λ=3: dCor² -75%, JSD -20%, RMSE 0.700 → 0.714 (+2.0%)."
    assert "with a penalty CCdCov ×1.50" in lines[2]


def test_demo_rejects_a_negative_budget(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--max-gap", "-1"])
    assert "--max-gap must be a finite number >= 0" in capsys.readouterr().err


def test_evaluate_classifier_reports_through_fairness_report():
    """Accuracy and the DP/EO differences of a run are one fairness_report's (rows in no group count in the
    accuracy only); by hand in plain Python."""
    import torch

    g = torch.Generator().manual_seed(4)
    prob = torch.rand(80, generator=g)
    y = (torch.rand(80, generator=g) < 0.5).float()
    groups = torch.randint(-1, 3, (80,), generator=g)  # -1: in no group
    cells, attrs = groups.clamp_min(0), torch.rand(80, 2, generator=g)
    got = demo.evaluate_classifier(prob, y, groups, cells, attrs)
    hard = [float(p > 0.5) for p in prob.tolist()]
    assert got["acc"] == pytest.approx(100 * sum(h == t for h, t in zip(hard, y.tolist())) / 80, rel=1e-12)
    rates = {k: sum(h for h, gi in zip(hard, groups.tolist()) if gi == k) / int((groups == k).sum())
             for k in range(3)}
    assert got["dp_difference"] == pytest.approx(100 * (max(rates.values()) - min(rates.values())), rel=1e-12)
    report = demo.group_report(prob, y, groups)
    assert report.overall["accuracy"] * 100 == got["acc"] and [r["n"] for r in report.table("group")] == [
        int((groups == k).sum()) for k in range(3)]


def test_rate_differences_undefined_with_fewer_than_two_groups():
    import math

    import torch

    hard, y = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    got = demo.rate_differences(hard, y, torch.zeros(4, dtype=torch.long))  # one group: no difference to take
    assert math.isnan(got["dp_difference"]) and math.isnan(got["eo_difference"])
    # TPR defined in one group only (no positives in group 1): the EO difference is the FPR difference
    got = demo.rate_differences(hard, torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]))
    assert got["eo_difference"] == pytest.approx(100.0)  # FPR 0 (row 1) vs 1 (rows 2, 3)

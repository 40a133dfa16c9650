"""fairret.report against tables computed by hand in NumPy on COMPAS (the COMPAS decile score as given predictions),
on every input type, its warnings, rendering and command line."""
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fairret._validation import PredictionWarning
from fairret.report import FairnessReport, ReportWarning, fairness_report, main
from fairret.sensitive import SensitiveEncoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compas():
    from fairret.datasets import load_compas

    try:
        ds = load_compas()
    except (FileNotFoundError, ValueError) as err:  # pragma: no cover - the data lives outside the repository
        pytest.skip(f"COMPAS data not found: {err}")
    pred = (ds.extra["decile_score"] >= 5).astype(np.float64)  # ProPublica's "medium or high risk"
    return pred, ds.label.numpy().astype(np.float64), ds.sensitive["race"], ds.sensitive["sex"]


def hand_table(pred, y, groups):
    """Per-group n and rates in plain NumPy: the independent reference."""
    out = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        p, t = pred[m], y[m]
        def rate(num, den):
            return num.sum() / den.sum() if den.sum() > 0 else float("nan")
        out[g] = {"n": int(m.sum()), "positive_rate": p.mean(), "tpr": rate(p * t, t),
                  "fpr": rate(p * (1 - t), 1 - t), "ppv": rate(p * t, p), "accuracy": (p == t).mean(),
                  "mean_score": p.mean()}
    return out


def quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        warnings.simplefilter("ignore", PredictionWarning)
        return fairness_report(*args, **kwargs)


def test_compas_tables_match_numpy(compas):
    pred, y, race, sex = compas
    r = quiet(pred, y, {"race": race, "sex": sex}, intersections=True, n_boot=0)
    cells = np.array([f"{a}&{b}" for a, b in zip(race, sex)])
    for attr, groups in (("race", race), ("sex", sex), ("race&sex", cells)):
        ref = hand_table(pred, y, groups)
        rows = r.table(attr)
        assert [row["group"] for row in rows] == list(ref)
        for row in rows:
            exp = ref[row["group"]]
            assert row["n"] == exp["n"]
            assert row["small"] == (exp["n"] < 30)
            for s in r.statistics:
                if math.isnan(exp[s]):
                    assert math.isnan(row[s])
                else:
                    assert row[s] == pytest.approx(exp[s], abs=1e-12), (attr, row["group"], s)
        judged = [g for g in ref if ref[g]["n"] >= 30]
        overall = hand_table(pred, y, np.zeros(len(pred)))[0.0]
        for s in r.statistics:
            vals = np.array([ref[g][s] for g in judged])
            gap = r.gap(attr, s)
            assert gap.groups == judged
            assert gap.difference == pytest.approx(np.nanmax(vals) - np.nanmin(vals), abs=1e-12)
            assert gap.relative == pytest.approx(np.nanmax(np.abs(vals / overall[s] - 1)), abs=1e-12)
            assert gap.highest == judged[int(np.nanargmax(vals))] and gap.lowest == judged[int(np.nanargmin(vals))]
    assert r.overall["positive_rate"] == pytest.approx(pred.mean())
    # ProPublica's finding, as a sanity check of the reference itself: Black defendants' FPR about twice the white one
    assert r.table("race")[0]["fpr"] / r.table("race")[2]["fpr"] == pytest.approx(1.92, abs=0.02)


def test_bootstrap_intervals_match_a_numpy_bootstrap(compas):
    pred, y, race, sex = compas
    n_boot, seed = 200, 3
    r = quiet(pred, y, {"sex": sex}, n_boot=n_boot, seed=seed)
    # the same replicates drawn independently (attribute i uses seed + i; one draw of (B, N) indices)
    idx = torch.randint(0, len(pred), (n_boot, len(pred)), generator=torch.Generator().manual_seed(seed)).numpy()
    female = sex == "Female"
    rates = np.array([[pred[i][female[i]].mean(), pred[i][~female[i]].mean()] for i in idx])
    fpr_m = np.array([(pred[i] * (1 - y[i]))[~female[i]].sum() / (1 - y[i])[~female[i]].sum() for i in idx])
    q = [0.025, 0.975]
    rows = r.table("sex")
    for j, row in enumerate(rows):
        ci = [x for x in r.rows if x.attribute == "sex"][j].ci["positive_rate"]
        assert ci == pytest.approx(tuple(np.quantile(rates[:, j], q)), abs=1e-12)
    male_row = [x for x in r.rows if x.attribute == "sex" and x.group == "Male"][0]
    assert male_row.ci["fpr"] == pytest.approx(tuple(np.quantile(fpr_m, q)), abs=1e-12)
    diff = rates.max(1) - rates.min(1)
    assert r.gap("sex", "positive_rate").ci == pytest.approx(tuple(np.quantile(diff, q)), abs=1e-12)
    lo, hi = r.gap("sex", "positive_rate").ci
    assert lo <= r.gap("sex", "positive_rate").difference <= hi


def test_input_types_agree():
    rng = np.random.default_rng(0)
    n = 300
    prob = rng.uniform(size=n)
    y = rng.uniform(size=n) < prob
    g = rng.integers(0, 3, size=n)
    ref = quiet(prob, y.astype(float), {"g": g}, n_boot=0).to_dict()["groups"]
    variants = [
        (torch.tensor(prob), torch.tensor(y), {"g": torch.tensor(g)}),           # tensors, bool labels
        (list(prob), list(y), {"g": list(g)}),                                     # lists
        (prob[:, None], y.astype(np.int64), g.astype(np.float64)),                 # (N, 1), int labels, 1-D codes
        (np.log(prob / (1 - prob)), y, {"g": g}),                                  # logits, decided from values
        (torch.tensor(prob).float().logit(), y, torch.nn.functional.one_hot(torch.tensor(g)).float()),  # matrix
    ]
    for pred, labels, sens in variants:
        got = quiet(pred, labels, sens, n_boot=0, group_names=None).to_dict()["groups"]
        assert [x["n"] for x in got] == [x["n"] for x in ref]
        for a, b in zip(got, ref):
            for s, v in b["values"].items():
                assert a["values"][s] == pytest.approx(v, abs=1e-6), s
    # bool decisions: the positive rate is the share of True
    dec = prob > 0.5
    r = quiet(dec, y, {"g": g}, n_boot=0)
    assert r.table("g")[0]["positive_rate"] == pytest.approx(dec[g == 0].mean())
    # logits read as such are said so, with the library's prediction-convention warning
    with pytest.warns(PredictionWarning, match="read as logits.*pass pred_as_logit=True"):
        r = fairness_report(np.log(prob / (1 - prob)), y, {"g": g}, n_boot=0)
    assert r.pred_as_logit


def test_header_says_how_pred_was_read_and_warning_categories_are_separate():
    rng = np.random.default_rng(7)
    prob = rng.uniform(0.05, 0.95, size=200)
    logits = np.log(prob / (1 - prob))
    g = np.array(["a"] * 100 + ["b"] * 98 + ["tiny"] * 2)
    y = rng.integers(0, 2, 200)
    as_prob = quiet(prob, y, {"g": g}, n_boot=0)
    assert str(as_prob).startswith("Fairness report: 200 rows, decisions pred > 0.5, pred read as probabilities;")
    # logits: the header says they were turned into probabilities, with or without being told
    told = quiet(logits, y, {"g": g}, n_boot=0, pred_as_logit=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = fairness_report(logits, y, {"g": g}, n_boot=0)
    for r in (told, auto):
        assert str(r).startswith("Fairness report: 200 rows, decisions sigmoid(pred) > 0.5, pred read as logits;")
        assert "logits read as probabilities" not in str(r)
        assert r.table("g") == as_prob.table("g")  # the same decisions
    # two warnings of two categories: the prediction convention, and the report's own limits (the tiny group)
    cats = {w.category: str(w.message) for w in caught}
    assert set(cats) == {PredictionWarning, ReportWarning}
    assert "read as logits" in cats[PredictionWarning] and "tiny (n=2)" not in cats[PredictionWarning]
    assert "tiny (n=2)" in cats[ReportWarning] and "logits" not in cats[ReportWarning]
    assert not issubclass(ReportWarning, PredictionWarning) and not issubclass(PredictionWarning, ReportWarning)
    # filtering PredictionWarning (as the README says) silences the logits note only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=PredictionWarning)
        fairness_report(logits, y, {"g": g}, n_boot=0)
    assert [w.category for w in caught] == [ReportWarning]
    # "at least 1 row", not "1 rows"
    one = quiet(prob, y, {"g": g}, n_boot=0, min_group_size=1)
    assert "groups with at least 1 row;" in str(one) and "groups with at least 30 rows;" in str(as_prob)
    assert "at least 1 row;" in quiet(prob, y, {"g": g}, n_boot=0, min_group_size=0).to_markdown()


def test_sensitive_attributes_and_single_indicator_column():
    rng = np.random.default_rng(1)
    n = 200
    prob, sex, race = rng.uniform(size=n), rng.choice(["F", "M"], n), rng.choice(["a", "b", "c"], n)
    age = rng.uniform(20, 60, n)
    sa = SensitiveEncoder({"sex": "binary", "race": "categorical", "age": "continuous"},
                          weights={"sex": 2.0}).fit_transform({"sex": sex, "race": race, "age": age})
    with pytest.warns(ReportWarning, match="`age` is continuous"):
        r = fairness_report(prob, None, sa, n_boot=0)
    ref = quiet(prob, None, {"sex": sex, "race": race}, n_boot=0)
    assert r.to_dict()["groups"] == ref.to_dict()["groups"]  # both sex groups, weights not memberships
    # a single 0/1 column is its two groups, 0 and 1
    col = (sex == "M").astype(np.float64)[:, None]
    r = quiet(prob, None, col, n_boot=0)
    assert [(x["group"], x["n"]) for x in r.table("group")] == [("0", int((sex == "F").sum())),
                                                                  ("1", int((sex == "M").sum()))]


def test_small_groups_warn_and_are_not_compared():
    rng = np.random.default_rng(2)
    g = np.array(["big1"] * 100 + ["big2"] * 100 + ["tiny"] * 2)
    prob = np.concatenate([rng.uniform(0, 1, 200), [1.0, 1.0]])
    with pytest.warns(ReportWarning, match=r"tiny \(n=2\)"):
        r = fairness_report(prob, None, {"g": g}, n_boot=0)
    gap = r.gap("g", "positive_rate")
    assert gap.groups == ["big1", "big2"] and "tiny" not in (gap.highest, gap.lowest)
    assert [row["small"] for row in r.table("g")] == [False, False, True]
    assert "tiny (small)" in r.to_markdown() and any("tiny (n=2)" in w for w in r.warnings)
    # min_group_size=0 compares everyone (the tiny group's rate of 1.0 then sets the difference)
    r = fairness_report(prob, None, {"g": g}, n_boot=0, min_group_size=0)
    assert r.gap("g", "positive_rate").highest == "tiny" and not r.warnings
    # fewer than two groups to compare: no difference, said so
    with pytest.warns(ReportWarning, match="fewer than two groups"):
        r = fairness_report(prob, None, {"g": g}, n_boot=0, min_group_size=150)
    assert math.isnan(r.gap("g", "positive_rate").difference)


def test_no_warnings_on_valid_input():
    rng = np.random.default_rng(3)
    prob, y, g = rng.uniform(size=400), rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fairness_report(prob, y, {"g": g}, n_boot=50)
    assert not r.warnings


def test_regression_report():
    rng = np.random.default_rng(4)
    out, target, g = rng.normal(5, 2, 300), rng.normal(5, 2, 300), rng.choice(["x", "y"], 300)
    r = quiet(out, target, {"g": g}, threshold=None, n_boot=0)
    assert r.task == "regression" and r.statistics == ["mean_prediction", "mean_label", "mean_residual"]
    for row in r.table("g"):
        m = g == row["group"]
        assert row["mean_prediction"] == pytest.approx(out[m].mean())
        assert row["mean_residual"] == pytest.approx((out - target)[m].mean())
    means = [out[g == v].mean() for v in ("x", "y")]
    assert r.gap("g", "mean_prediction").difference == pytest.approx(max(means) - min(means))
    assert "mean prediction" in str(r) and "(points)" not in str(r)


def test_rendering_dict_and_plot(tmp_path):
    rng = np.random.default_rng(5)
    prob, y, g = rng.uniform(size=300), rng.integers(0, 2, 300), rng.choice(["a", "b"], 300)
    r = quiet(prob, y, {"grp": g}, n_boot=100)
    d = r.to_dict()
    assert json.loads(json.dumps(d))["gaps"][0]["statistic"] == "positive_rate"
    md = r.to_markdown()
    assert "| group | n | positive rate % | TPR % |" in md and "**grp: between groups**" in md
    assert "positive rate" in str(r)
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig, axes = r.plot(statistics=["positive_rate", "tpr"])
    assert len(axes) == 2
    fig.savefig(tmp_path / "r.png")
    with pytest.raises(ValueError, match="Expected argument `statistics`"):
        r.plot(statistics=["nope"])


def test_errors():
    p, y, g = np.array([0.2, 0.7, 0.4]), np.array([0, 1, 1]), np.array(["a", "b", "a"])
    with pytest.raises(ValueError, match="Expected argument `sens`"):
        fairness_report(p, y)
    with pytest.raises(ValueError, match="0/1 labels"):
        fairness_report(p, np.array([0, 2, 1]), {"g": g})
    with pytest.raises(ValueError, match="Expected argument `threshold`"):
        fairness_report(p, y, {"g": g}, threshold=1.5)
    with pytest.raises(ValueError, match="Expected argument `pred` to be finite"):
        fairness_report(np.array([0.1, np.nan, 0.3]), y, {"g": g})
    with pytest.raises(ValueError, match=r"Expected argument `labels` to have N=3 rows"):
        fairness_report(p, y[:2], {"g": g})
    with pytest.raises(ValueError, match=r"Expected argument `pred` to have shape \(N,\) or \(N, 1\)"):
        fairness_report(np.zeros((3, 2)), y, {"g": g})
    with pytest.raises(TypeError, match="Expected argument `pred` to hold numbers"):
        fairness_report(np.array(["a", "b", "c"]), y, {"g": g})
    with pytest.raises(ValueError, match="Intersection .* names `h`"):
        fairness_report(p, y, {"g": g, "k": g}, intersections=[("g", "h")])
    with pytest.raises(KeyError, match="No attribute 'x'"):
        quiet(p, y, {"g": g}, n_boot=0).table("x")


def _csv(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_cli(tmp_path):
    rng = np.random.default_rng(6)
    n = 120
    prob, y = rng.uniform(size=n), rng.integers(0, 2, n)
    race, sex = rng.choice(["a", "b"], n), rng.choice(["F", "M"], n)
    f = tmp_path / "preds.csv"
    _csv(f, [("score", "y", "race", "sex")] + list(zip(prob.round(6), y, race, sex)))
    ref = quiet(prob.round(6), y, {"race": race, "sex": sex}, intersections=True, n_boot=20).to_dict()
    out = subprocess.run([sys.executable, "-m", "fairret.report", str(f), "--pred", "score", "--label", "y",
                          "--sens", "race,sex", "--intersections", "--n-boot", "20", "--format", "json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["groups"] == json.loads(json.dumps(ref["groups"]))
    assert got["gaps"] == json.loads(json.dumps(ref["gaps"]))
    # in-process: the text format, a plot, and a clear error for a missing column
    pytest.importorskip("matplotlib")
    assert main([str(f), "--pred", "score", "--sens", "race", "--n-boot", "0", "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()
    assert main([str(f), "--pred", "score", "--label", "y", "--sens", "age"]) == 2


def test_cli_on_logits_says_how_it_read_them_and_names_its_flag(tmp_path, capsys):
    rng = np.random.default_rng(8)
    n = 80
    prob, y, sex = rng.uniform(0.05, 0.95, size=n), rng.integers(0, 2, n), rng.choice(["F", "M"], n)
    f = tmp_path / "preds.csv"
    _csv(f, [("logit", "y", "sex")] + list(zip(np.log(prob / (1 - prob)).round(6), y, sex)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command line lists its warnings in the report, it does not raise them
        assert main([str(f), "--pred", "logit", "--label", "y", "--sens", "sex", "--n-boot", "0",
                     "--min-group-size", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Fairness report: 80 rows, decisions sigmoid(pred) > 0.5, pred read as logits;")
    assert "(pass --pred-as-logit true to say so and silence this)" in out and "pred_as_logit" not in out
    assert main([str(f), "--pred", "logit", "--label", "y", "--sens", "sex", "--n-boot", "0",
                 "--min-group-size", "1", "--pred-as-logit", "true"]) == 0
    out = capsys.readouterr().out
    assert "pred read as logits" in out and "Warnings" not in out

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
    assert "## compas" in printed and "## Targets" in printed
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
    assert one("adult", "NormLoss DP")["dp_gap"] < one("adult", "baseline (BCE)")["dp_gap"]
    assert one("compas", "NormLoss DP")["jsd"] < one("compas", "baseline (BCE)")["jsd"]
    assert one("compas", "CCdCov")["jsd"] < one("compas", "baseline (BCE)")["jsd"]
    reg = res["regression"]
    rbase = next(a for a in reg if a["setting"] == "baseline (MSE)")
    assert max((a for a in reg if a["setting"] == "CCdCov"), key=lambda a: a["lam"])["dcor"] < rbase["dcor"]


def test_demo_rejects_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--datasets", "mnist"])
    assert "--datasets must name compas and/or adult" in capsys.readouterr().err


def test_dominance_and_auc_helpers():
    import torch

    assert demo.dominates([(84.0, 1.0)], [(83.5, 2.0), (84.0, 1.0)])
    assert not demo.dominates([(84.0, 1.0)], [(84.5, 2.0)])
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
    import torch

    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 3, (60,), generator=g)
    y = (torch.rand(60, generator=g) < 0.3 + 0.2 * groups).double()
    prob = torch.sigmoid(2 * y - 1 + groups + torch.randn(60, generator=g))  # a group-dependent shift
    th = demo.group_thresholds(prob, y, groups)
    hard = prob > torch.tensor([th[int(v)] for v in groups])
    assert int((hard.double() == y).sum()) == _best_common_share_by_brute_force(prob, y, groups)
    # every group gets the same share of positives up to rounding of share * group size
    sizes = torch.bincount(groups).double()
    shares = torch.bincount(groups, weights=hard.double()) / sizes
    assert float(shares.max() - shares.min()) <= float((1 / sizes).max()) + 1e-12


@pytest.mark.parametrize("seed,max_gap", [(0, 0.0), (1, 5.0), (2, 12.5), (3, 100.0)])
def test_dp_accuracy_ceiling_is_the_best_threshold_pair(seed, max_gap):
    """Against every pair of thresholds (one per group, at each distinct score and above all), in plain Python."""
    import torch

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
            gap = 100 * abs(rates[0] - rates[1])
            right = sum(h == (li == 1) for h, li in zip(hard, lab))
            if gap <= max_gap + 1e-9 and right > best:
                best = right
    acc, gap = demo.dp_accuracy_ceiling(prob, y, groups, max_gap)
    assert acc == pytest.approx(100 * best / 23, abs=1e-12)
    assert gap <= max_gap + 1e-9


def test_dp_accuracy_ceiling_errors():
    import torch

    prob, y = torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([1.0, 0, 1, 0])
    with pytest.raises(ValueError, match="exactly two groups, but got 3"):
        demo.dp_accuracy_ceiling(prob, y, torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="`max_gap` to be a finite number >= 0"):
        demo.dp_accuracy_ceiling(prob, y, torch.tensor([0, 0, 1, 1]), max_gap=-1.0)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        demo.dp_accuracy_ceiling(prob, torch.tensor([0.0, 2.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]))


def test_group_thresholds_edges_and_errors():
    import torch

    # everyone negative is best: the threshold lies above every score; everyone positive: below every score
    prob, groups = torch.tensor([0.9, 0.2, 0.7, 0.1]), torch.tensor([0, 0, 1, 1])
    th = demo.group_thresholds(prob, torch.zeros(4), groups)
    assert all(not bool((prob[groups == k] > v).any()) for k, v in th.items())
    th = demo.group_thresholds(prob, torch.ones(4), groups)
    assert all(bool((prob[groups == k] > v).all()) for k, v in th.items())
    with pytest.raises(ValueError, match="of one non-empty shape"):
        demo.group_thresholds(prob, torch.ones(3), groups)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        demo.group_thresholds(prob, torch.tensor([0.0, 2.0, 1.0, 0.0]), groups)

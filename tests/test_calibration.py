"""JSD, UF ratio, calibrate_lambda and the dependence metrics."""
import math

import dcor
import matplotlib
import numpy as np
import pytest
import torch

from fairret.functional.calibration import calibrate_lambda, intersectional_jsd, unfairness_ratio
from fairret.metric import CCdCov, DistanceCorrelation, IntersectionalJSD, JdCov
from fairret.functional import joint_distance_covariance_sqr

matplotlib.use("Agg")


def test_jsd_bounds_and_reference():
    gen = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 4, (4000,), generator=gen)
    same = torch.rand(4000, generator=gen, dtype=torch.float64)
    assert intersectional_jsd(same, cells).item() < 0.02
    apart = cells.double() * 10 + torch.rand(4000, generator=gen, dtype=torch.float64)
    # disjoint supports: JSD = H(pi) (= log2 4 with equal weights)
    assert intersectional_jsd(apart, cells, weights="equal").item() == pytest.approx(2.0, abs=1e-3)
    counts = torch.bincount(cells).double()
    pi = counts / counts.sum()
    h = -(pi * torch.log2(pi)).sum().item()
    assert intersectional_jsd(apart, cells).item() == pytest.approx(h, abs=1e-3)


def test_jsd_against_direct_kde():
    rng = np.random.default_rng(1)
    pred = np.concatenate([rng.normal(0.3, 0.1, 300), rng.normal(0.5, 0.1, 200)])
    cells = np.array([0] * 300 + [1] * 200)
    grid = np.linspace(pred.min(), pred.max(), 1000)
    dens = [np.exp(-0.5 * ((grid[:, None] - pred[cells == g][None, :]) / 0.15) ** 2).sum(1) for g in (0, 1)]
    dens = [d / d.sum() for d in dens]
    pi = np.array([0.6, 0.4])
    ent = lambda q: -(q[q > 0] * np.log2(q[q > 0])).sum()  # noqa: E731
    want = ent(pi[0] * dens[0] + pi[1] * dens[1]) - pi[0] * ent(dens[0]) - pi[1] * ent(dens[1])
    got = intersectional_jsd(torch.tensor(pred), torch.tensor(cells)).item()
    assert got == pytest.approx(want, rel=2e-3)  # linear binning vs exact evaluation on the grid


def test_unfairness_ratio():
    pred = torch.tensor([1.0, 1.0, 3.0, 3.0])
    assert unfairness_ratio(pred, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(1.0)
    assert unfairness_ratio(pred, torch.tensor([0, 1, 0, 1])).item() == pytest.approx(0.0)


def test_calibrate_lambda():
    def train(lam, seed):
        return {"jsd": 1.0 / (1.0 + lam) + 0.01 * seed, "loss": 0.1 * lam}

    out = calibrate_lambda(train, [0, 1, 3], seeds=[0, 1])
    assert out["jsd_mean"] == pytest.approx([1.005, 0.505, 0.255])
    assert out["loss_mean"] == pytest.approx([0.0, 0.1, 0.3])
    assert out["figure"] is not None
    with pytest.raises(ValueError, match=r"Expected `train_fn` to return a dict with key 'loss'"):
        calibrate_lambda(lambda lam, seed: {"jsd": 0.0}, [0], [0], plot=False)


def test_dependence_metrics_stream():
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    z = np.stack([rng.integers(0, 2, 300), rng.uniform(size=300)], 1).astype(float)
    z[:, 1] += 0.5 * x
    m_cor, m_cc, m_jd = DistanceCorrelation(), CCdCov(weights=[1.0, 2.0]), JdCov()
    for i in range(0, 300, 70):
        for m in (m_cor, m_jd):
            m.update(torch.tensor(x[i:i + 70]), torch.tensor(z[i:i + 70]))
        m_cc.update(torch.tensor(x[i:i + 70]), [torch.tensor(z[i:i + 70, :1]), torch.tensor(z[i:i + 70, 1:])])
    assert m_cor.compute().item() == pytest.approx(dcor.distance_correlation_sqr(x, z), rel=1e-9)
    zw = z * np.array([1.0, 2.0])
    assert m_cc.compute().item() == pytest.approx(dcor.u_distance_covariance_sqr(x, zw), rel=1e-9)
    want = joint_distance_covariance_sqr(torch.tensor(x), torch.tensor(z[:, :1]), torch.tensor(z[:, 1:]))
    assert m_jd.compute().item() == pytest.approx(want.item(), rel=1e-9)
    jsd = IntersectionalJSD()
    jsd.update(torch.tensor(x), torch.tensor(z[:, 0]).long())
    assert 0 <= jsd.compute().item() <= math.log2(2)


def test_errors():
    with pytest.raises(ValueError, match=r"Expected argument `cells` to have N=3 rows like `pred`, but got 2"):
        intersectional_jsd(torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"Expected argument `weights` to be 'cell' or 'equal'"):
        intersectional_jsd(torch.rand(3), torch.tensor([0, 1, 1]), weights="uniform")
    with pytest.raises(ValueError, match=r"Expected argument `sens` to have N=3 rows like `pred`"):
        DistanceCorrelation().update(torch.rand(3), torch.rand(2))

import matplotlib
import pytest
import torch

from fairret.metric import LinearFractionalParity, gap_abs_max
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

"""Projection losses: feasibility, agreement with an exact convex solve (scipy), gradients, compile-ability."""
import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from fairret.functional import divergence_value, fixed_constraint, project, projection_residual
from fairret.functional.linear_fractional import linear_fractional_statistic
from fairret.loss import (ChiSquaredProjectionLoss, JensenShannonProjectionLoss, KLProjectionLoss,
                          SquaredEuclideanProjectionLoss, TotalVariationProjectionLoss)
from fairret.statistic import (Accuracy, FalsePositiveRate, PositivePredictiveValue, PositiveRate,
                               StackedLinearFractionalStatistic, TruePositiveRate)

LOSSES = {"kl": KLProjectionLoss, "js": JensenShannonProjectionLoss, "tv": TotalVariationProjectionLoss,
          "squared_euclidean": SquaredEuclideanProjectionLoss, "chi_squared": ChiSquaredProjectionLoss}
STATS = {"dp": lambda: PositiveRate(), "tpr": lambda: TruePositiveRate(), "acc": lambda: Accuracy(),
         "ppv": lambda: PositivePredictiveValue(),
         "eodds": lambda: StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())}


def problem(n, s, seed, overlapping=False):
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    label = (torch.rand(n, 1, generator=g, dtype=torch.float64) < torch.sigmoid(logits)).double()
    sens = torch.nn.functional.one_hot(torch.randint(0, s, (n,), generator=g), s).double()
    if overlapping:  # a second attribute overlapping the first
        sens = torch.cat([sens, torch.nn.functional.one_hot(torch.randint(0, 2, (n,), generator=g), 2).double()], 1)
    return logits, label, sens


def args_for(stat_name, label):
    return () if stat_name == "dp" else (label,)


def projection_problem(stat_name, n, s, seed, overlapping=False):
    """Probabilities ``(n, 1)`` of :func:`problem` and the constraint ``b + a^T q = 0`` that fixes every group's
    statistic to the overall one: ``(p, b, a)``."""
    logits, label, sens = problem(n, s, seed, overlapping)
    stat = STATS[stat_name]()
    p = torch.sigmoid(logits)
    coefs = stat.coefficients(p, *args_for(stat_name, label))
    target = linear_fractional_statistic(p, None, *coefs)
    intercept, slope = fixed_constraint(target, sens, *coefs, like=p)
    return p, intercept.reshape(-1), slope.reshape(n, -1)


@pytest.mark.parametrize("div", list(LOSSES))
@pytest.mark.parametrize("stat_name", list(STATS))
def test_projection_satisfies_constraints(div, stat_name):
    logits, label, sens = problem(400, 3, seed=7, overlapping=True)
    stat = STATS[stat_name]()
    args = args_for(stat_name, label)
    loss = LOSSES[div](stat)
    q = loss.project(logits, sens, *args)
    assert q.shape == (400, 1) and bool(((q >= 0) & (q <= 1)).all())
    rows = torch.cat([1 - q, q], 1).sum(1)
    torch.testing.assert_close(rows, torch.ones(400, dtype=torch.float64))
    target = stat.overall_statistic(torch.sigmoid(logits), *args)
    got = stat(q, sens, *args)
    assert (got - target.reshape(-1, 1) if got.ndim == 2 else got - target).abs().max().item() < 1e-6


def _scipy_projection(p, intercept, slope, div):
    """Exact solve of the same problem in float64 with scipy (SLSQP; HiGHS linprog for TV)."""
    n = len(p)
    if div == "tv":  # min sum(u + v) s.t. q = p + u - v in [0, 1], b + A^T q = 0
        c = np.concatenate([np.ones(n), np.ones(n)]) / n
        a_eq = np.concatenate([slope.T, -slope.T], axis=1)
        b_eq = -(intercept + slope.T @ p)
        bounds = [(0, 1 - pi) for pi in p] + [(0, pi) for pi in p]
        res = linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        return p + res.x[:n] - res.x[n:], res.fun

    def d(q):
        q = np.clip(q, 1e-15, 1 - 1e-15)
        if div == "kl":
            return np.mean(q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p)))
        if div == "js":
            m = (q + p) / 2
            kl = lambda a, b: a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))  # noqa: E731
            return np.mean(0.5 * kl(q, m) + 0.5 * kl(p, m))
        if div == "squared_euclidean":
            return np.mean(2 * (q - p) ** 2)
        return np.mean((q - p) ** 2 / (p * (1 - p)))

    cons = [{"type": "eq", "fun": lambda q, k=k: intercept[k] + slope[:, k] @ q} for k in range(slope.shape[1])]
    res = minimize(d, p.copy(), method="SLSQP", bounds=[(1e-12, 1 - 1e-12)] * n, constraints=cons,
                   options={"ftol": 1e-15, "maxiter": 2000})
    return res.x, res.fun


@pytest.mark.parametrize("div", list(LOSSES))
@pytest.mark.parametrize("stat_name", ["dp", "eodds", "acc"])
def test_matches_exact_convex_solve(div, stat_name):
    p, b, a = projection_problem(stat_name, 40, 2, seed=11)
    q = project(p[:, 0], b, a, div)
    assert projection_residual(q, b, a).abs().max().item() < 1e-7
    q_ref, f_ref = _scipy_projection(p[:, 0].numpy(), b.numpy(), a.numpy(), div)
    ours = divergence_value(q, p[:, 0], div, pred_as_logit=False).mean().item()
    assert ours == pytest.approx(f_ref, abs=1e-4)
    if div != "tv":  # the TV projection is not unique; its optimal value is
        np.testing.assert_allclose(q.numpy(), q_ref, atol=1e-4)


@pytest.mark.parametrize("stat_name", ["dp", "eodds", "acc"])
def test_tv_on_row_types_matches_rows_and_linprog(stat_name):
    """On CPU the total variation is solved on the types of rows with equal constraint coefficients (only a type's
    total move counts); accelerators, torch.compile and sync_dist solve it on the rows. Same optimal value, both
    HiGHS's, constraints met."""
    from fairret.functional.projection import _row_types, _solve
    p, b, a = projection_problem(stat_name, 60, 3, seed=5, overlapping=True)
    assert _row_types(a) is not None and len(_row_types(a)[1]) < 60  # the types route is taken
    _, f_ref = _scipy_projection(p[:, 0].numpy(), b.numpy(), a.numpy(), "tv")
    q_types = project(p[:, 0], b, a, "tv")
    q_rows = _solve(p[:, 0].clamp(1e-12, 1 - 1e-12), a, b, "tv", None, 1e-6, False, by_type=False)
    for q in (q_types, q_rows):
        assert bool(((q >= 0) & (q <= 1)).all())
        assert projection_residual(q, b, a).abs().max().item() < 1e-7
        assert divergence_value(q, p[:, 0], "tv", pred_as_logit=False).mean().item() == pytest.approx(f_ref, abs=1e-5)


def test_row_types_check_every_row():
    """Rows are grouped by a hash of their entries; a collision is caught by comparing every row with its type's
    first row, and the rows are then solved one by one (None)."""
    from fairret.functional import projection as P
    a = torch.tensor([[1.0, 0.0], [0.0, 0.5], [1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    inverse, counts, coef = P._row_types(a)
    assert inverse.tolist() in ([0, 1, 0, 1], [1, 0, 1, 0]) and counts.tolist() == [2.0, 2.0]
    assert torch.equal(coef.index_select(0, inverse), a)
    original = P._KEY_WEIGHTS
    try:
        P._KEY_WEIGHTS = (1.0,)  # key = a_0 + 2 a_1: both rows hash to 1
        assert P._row_types(a) is None
    finally:
        P._KEY_WEIGHTS = original
    assert P._row_types(torch.randn(10, 2, dtype=torch.float64)) is None  # all rows different: no types


def test_single_constraint_kl_closed_form():
    # One group, positive rate fixed to c: the KL projection is sigmoid(logit p - t) with a scalar t.
    logits = torch.tensor([-2.0, -0.5, 0.3, 1.7], dtype=torch.float64)
    p = torch.sigmoid(logits)
    q = project(p, torch.tensor([-0.5 * 4]), torch.ones(4, 1, dtype=torch.float64), "kl")
    t = (logits - torch.logit(q))
    torch.testing.assert_close(t, t.mean().expand(4))
    assert q.mean().item() == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("div", ["kl", "js", "squared_euclidean", "chi_squared", "tv"])
def test_divergence_gradcheck(div):
    torch.manual_seed(0)
    q = torch.rand(10, dtype=torch.float64) * 0.8 + 0.1
    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: divergence_value(q, z, div, pred_as_logit=True, tv_eps=1e-2).mean(),
                                    (x,))


def test_zero_when_already_fair_and_finite_gradients_on_awkward_batches():
    sens = torch.tensor([[1., 0.], [0., 1.], [1., 0.], [0., 1.]])
    x = torch.tensor([[0.3], [0.3], [-1.0], [-1.0]], requires_grad=True)  # equal rates per group
    for cls in LOSSES.values():
        val = cls(PositiveRate())(x, sens)
        (g,) = torch.autograd.grad(val, x)
        assert val.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(g).all()
    # a group absent from the batch and a single-group batch
    absent = torch.tensor([[1., 0., 0.], [0., 1., 0.], [1., 0., 0.]])
    y = torch.randn(3, 1, requires_grad=True)
    for cls in LOSSES.values():
        for s in (absent, torch.ones(3, 1)):
            val = cls(PositiveRate())(y, s)
            (g,) = torch.autograd.grad(val, y)
            assert torch.isfinite(val) and torch.isfinite(g).all()


def test_any_batch_size_and_float32():
    loss = KLProjectionLoss(PositiveRate())
    for n in (3, 17, 1000):
        x = torch.randn(n, 1)
        s = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).float()
        out = loss(x, s)
        assert out.dtype == torch.float32 and torch.isfinite(out)


def test_errors():
    with pytest.raises(ValueError, match=r"Expected argument `pred` to have shape \(N, 1\) for a projection loss"):
        KLProjectionLoss(PositiveRate())(torch.randn(4, 3), torch.ones(4, 1))
    with pytest.raises(TypeError, match=r"Expected argument `statistic` to be a LinearFractionalStatistic"):
        KLProjectionLoss(object())
    with pytest.raises(ValueError, match=r"Expected argument `divergence` to be one of"):
        project(torch.rand(3), torch.zeros(1), torch.ones(3, 1), "hellinger")
    with pytest.raises(ValueError, match=r"Expected argument `pred` to lie in \[0.0, 1.0\]"):
        KLProjectionLoss(PositiveRate(), validate_args=True)(torch.tensor([[1.5], [0.2]]), torch.ones(2, 1),
                                                             pred_as_logit=False)
    with pytest.raises(TypeError, match=r"Unexpected keyword arguments"):
        KLProjectionLoss(PositiveRate(), bogus=1)
    KLProjectionLoss(PositiveRate(), force_proj_normalized=True, proj_eps=0.0, solver="SCS")  # 0.1.3 kwargs


def test_no_graph_breaks_under_compile():
    loss = KLProjectionLoss(PositiveRate())
    x = torch.randn(32, 1)
    s = torch.nn.functional.one_hot(torch.arange(32) % 3, 3).float()
    compiled = torch.compile(lambda a, b: loss(a, b), fullgraph=True, backend="eager")
    assert compiled(x, s).item() == pytest.approx(loss(x, s).item(), rel=1e-5)


@pytest.mark.parametrize("div", list(LOSSES))
def test_hard_instances_converge(div):
    """Strongly group-dependent predictions (group logit shifts of several units), small and large groups."""
    gen = torch.Generator().manual_seed(123)
    for _ in range(6):
        n = int(torch.randint(50, 3000, (1,), generator=gen))
        s = int(torch.randint(2, 8, (1,), generator=gen))
        g = torch.randint(0, s, (n,), generator=gen)
        x = 2 * torch.randn(n, 1, generator=gen) + (3 * torch.randn(s, generator=gen))[g][:, None]
        y = (torch.rand(n, 1, generator=gen) < torch.sigmoid(x + torch.randn(n, 1, generator=gen))).float()
        sens = torch.nn.functional.one_hot(g, s).float()
        for stat_name in ("dp", "eodds", "acc"):
            stat = STATS[stat_name]()
            args = args_for(stat_name, y)
            q = LOSSES[div](stat).project(x, sens, *args)
            a64 = [a.double() for a in args]
            target = stat.overall_statistic(torch.sigmoid(x.double()), *a64)
            got, den = stat(q, sens.double(), *a64), stat.denom(q, sens.double(), *a64)
            err = torch.where(den.abs() > 1e-9, (got - target).abs(), torch.zeros_like(got))
            assert err.max().item() < 1e-6


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 200), s=st.integers(1, 5), seed=st.integers(0, 10_000),
       div=st.sampled_from(["kl", "js", "squared_euclidean", "chi_squared"]), scale=st.floats(0.1, 4.0))
def test_feasibility_property(n, s, seed, div, scale):
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    sens = torch.nn.functional.one_hot(torch.randint(0, s, (n,), generator=gen), s).double()
    q = LOSSES[div](PositiveRate()).project(x, sens)
    assert bool(((q >= 0) & (q <= 1)).all())
    target = torch.sigmoid(x).mean()
    got, den = PositiveRate()(q, sens), sens.sum(0)
    assert torch.where(den > 0, (got - target).abs(), torch.zeros_like(got)).max().item() < 1e-6

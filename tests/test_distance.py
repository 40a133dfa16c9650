"""Distance covariance family: dcor values, brute-force JdCov, invariances, gradients, errors."""

import dcor
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairret.functional import (concatenated_distance_covariance_sqr, distance_correlation_sqr,
                                distance_covariance_sqr, joint_distance_covariance_sqr)
from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, DistanceCovarianceLoss, JdCovLoss
from fairret.ops import product_sum, resolve_backend
from fairret.sensitive import SensitiveEncoder

BACKENDS = ["dense", "tiled"]


def data(n, p, q, seed, dependent=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = rng.normal(size=(n, q))
    if dependent:
        y[:, 0] += np.sin(2 * x[:, 0])
    return x, y


def test_golden_values():
    x = torch.arange(1.0, 7.0, dtype=torch.float64)
    y = torch.tensor([1.0, 7, 5, 5, 6, 2], dtype=torch.float64)
    for be in BACKENDS:
        assert distance_covariance_sqr(x, y, unbiased=True, backend=be).item() == pytest.approx(-0.88889, abs=1e-5)
        assert distance_correlation_sqr(x, y, unbiased=True, backend=be).item() == pytest.approx(-0.41613, abs=1e-5)
        assert distance_covariance_sqr(x, x, unbiased=True, backend=be).item() == pytest.approx(1.55556, abs=1e-5)
        assert distance_covariance_sqr(y, y, unbiased=True, backend=be).item() == pytest.approx(2.93333, abs=1e-5)
        assert distance_covariance_sqr(x, y, backend=be).item() == pytest.approx(0.68519, abs=1e-5)
        assert distance_correlation_sqr(x, y, backend=be).item() == pytest.approx(0.30661, abs=1e-5)
        assert distance_covariance_sqr(x, x, backend=be).item() == pytest.approx(1.70679, abs=1e-5)
        assert distance_covariance_sqr(y, y, backend=be).item() == pytest.approx(2.92593, abs=1e-5)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(4, 70), p=st.integers(1, 3), q=st.integers(1, 4), seed=st.integers(0, 10_000),
       unbiased=st.booleans(), backend=st.sampled_from(BACKENDS))
def test_matches_dcor(n, p, q, seed, unbiased, backend):
    x, y = data(n, p, q, seed)
    tx, ty = torch.tensor(x), torch.tensor(y)
    cov = dcor.u_distance_covariance_sqr if unbiased else dcor.distance_covariance_sqr
    cor = dcor.u_distance_correlation_sqr if unbiased else dcor.distance_correlation_sqr
    ours = distance_covariance_sqr(tx, ty, unbiased=unbiased, backend=backend).item()
    assert ours == pytest.approx(cov(x, y), rel=1e-10, abs=1e-13)
    ours = distance_correlation_sqr(tx, ty, unbiased=unbiased, backend=backend).item()
    # dcor's own U-statistic correlation can be off by ~1e-10 relative at n = 4 (a case found by hypothesis:
    # ours 0.880733465121014, the 50-digit value 0.880733465121014..., dcor 0.8807334650141786)
    assert ours == pytest.approx(cor(x, y), rel=1e-9, abs=1e-13)


def test_tiled_agrees_with_dense_across_tiles():
    x, y = data(301, 2, 3, 1)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for unbiased in (False, True):
        ref = product_sum([tx, ty], 0.0, unbiased, "dense")
        for tile in (7, 64, 300, 512):
            from fairret.ops.tiled import product_sum_tiled
            assert product_sum_tiled([tx, ty], 0.0, unbiased, tile).item() == pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize("case", ["pair", "sweep", "jdcov"])
@pytest.mark.parametrize("n, tile", [(203, 16), (1100, 256)])
def test_tiled_values_do_not_depend_on_the_thread_count(case, n, tile):
    """The tiles are cut into a fixed number of chains whatever torch.get_num_threads() says, each evaluated with
    single-threaded ops, and the chains' sums are added in order: value and gradient are bitwise identical.
    (203, 16): more tiles than chains, so threads share chains differently; (1100, 256): tiles large enough that
    a multi-threaded op would split its sums differently.)"""
    from fairret.ops.tiled import product_sum_tiled
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, generator=g)
    y = torch.randn(n, 3, generator=g) + x
    z = torch.randn(n, 2, generator=g)
    xs = {"pair": [x, y], "sweep": [y, z], "jdcov": [x, y, z]}[case]
    c = 1.5 if case == "jdcov" else 0.0
    grad_of = 0 if case == "pair" else 1  # "pair": 1-D predictions against data; else a 3-D variable's gradient
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            for unbiased in (False, True):
                vs = [v.clone().requires_grad_(k == grad_of) for k, v in enumerate(xs)]
                val = product_sum_tiled(vs, c, unbiased, tile=tile)
                (grad,) = torch.autograd.grad(val, vs[grad_of])
                results.append((threads, unbiased, val, grad))
    finally:
        torch.set_num_threads(before)
    for threads, unbiased, val, grad in results:
        ref = next(r for r in results if r[1] == unbiased)
        assert torch.equal(val, ref[2]) and torch.equal(grad, ref[3]), (threads, unbiased)
    dense = product_sum([v.double() for v in xs], c, False, "dense")
    assert results[0][2].item() == pytest.approx(dense.item(), rel=1e-4)


def _centre_np(a, unbiased):
    n = a.shape[0]
    if not unbiased:
        return a - a.mean(0) - a.mean(1)[:, None] + a.mean()
    out = a - a.sum(1)[:, None] / (n - 2) - a.sum(0)[None, :] / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(out, 0.0)
    return out


def jdcov_brute(xs, c, unbiased, scale_invariant=False):
    """REFERENCES.md §3 formulas in float64 NumPy, with explicit distance matrices."""
    n = xs[0].shape[0]
    us = []
    for x in xs:
        x = x.reshape(n, -1)
        a = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        u = -_centre_np(a, unbiased)
        if scale_invariant:
            var = (u * u).sum() / (n * (n - 3) if unbiased else n * n)
            u = u / np.sqrt(var) if var > 0 else u * 0
        us.append(u)
    prod = np.ones((n, n))
    for u in us:
        prod = prod * (u + c)
    d = len(xs)
    if unbiased:
        return prod.sum() / (n * (n - 3)) - c**d * n / (n - 3)
    return prod.mean() - c**d


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("scale_invariant", [False, True])
def test_jdcov_against_brute_force(d, c, unbiased, scale_invariant):
    rng = np.random.default_rng(d * 100 + int(10 * c))
    xs = [rng.normal(size=(23, 1 + k % 2)) for k in range(d)]
    xs[1] = xs[1] + xs[0][:, :1] ** 2
    want = jdcov_brute(xs, c, unbiased, scale_invariant)
    for be in BACKENDS:
        got = joint_distance_covariance_sqr(*[torch.tensor(x) for x in xs], c=c, unbiased=unbiased,
                                            scale_invariant=scale_invariant, backend=be).item()
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_jdcov_two_variables_is_dcov():
    x, y = data(30, 1, 2, 3)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for unbiased in (False, True):
        assert joint_distance_covariance_sqr(tx, ty, unbiased=unbiased).item() == pytest.approx(
            distance_covariance_sqr(tx, ty, unbiased=unbiased).item(), rel=1e-12)


def test_ccdcov_is_dcov_of_weighted_concatenation_and_discrete_metric():
    rng = np.random.default_rng(5)
    race = rng.choice(["a", "b", "c"], 50)
    sex = rng.choice(["F", "M"], 50)
    age = rng.uniform(18, 80, 50)
    enc = SensitiveEncoder({"race": "categorical", "sex": "binary", "age": "continuous"})
    s = enc.fit_transform({"race": race, "sex": sex, "age": age}, dtype=torch.float64)
    pred = torch.tensor(rng.normal(size=50)) + torch.tensor(s.matrix[:, 0].numpy())
    got = concatenated_distance_covariance_sqr(pred, s, weights=[1.0, 2.0, 0.5])
    z = torch.cat([s.columns_of("race"), 2 * s.columns_of("sex"), 0.5 * s.columns_of("age")], 1)
    assert got.item() == pytest.approx(dcor.u_distance_covariance_sqr(pred.numpy(), z.numpy()), rel=1e-10)
    disc = concatenated_distance_covariance_sqr(pred, s, categorical="discrete")
    z = torch.cat([s.columns_of("race") / 2**0.5, s.columns_of("sex"), s.columns_of("age")], 1)
    assert disc.item() == pytest.approx(dcor.u_distance_covariance_sqr(pred.numpy(), z.numpy()), rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 40), seed=st.integers(0, 10_000), shift=st.floats(-50, 50), scale=st.floats(0.1, 10),
       backend=st.sampled_from(BACKENDS))
def test_properties(n, seed, shift, scale, backend):
    x, y = data(n, 2, 2, seed)
    tx, ty = torch.tensor(x), torch.tensor(y)
    v = distance_covariance_sqr(tx, ty, backend=backend).item()
    assert v >= -1e-12
    r = distance_correlation_sqr(tx, ty, backend=backend).item()
    assert -1e-12 <= r <= 1 + 1e-12
    # translation, orthogonal transform, permutation, scale homogeneity
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(2, 2)))
    perm = np.random.default_rng(seed + 1).permutation(n)
    assert distance_covariance_sqr(tx + shift, ty, backend=backend).item() == pytest.approx(v, rel=1e-8, abs=1e-10)
    assert distance_covariance_sqr(tx @ torch.tensor(q), ty, backend=backend).item() == pytest.approx(
        v, rel=1e-8, abs=1e-10)
    assert distance_covariance_sqr(tx[perm], ty[perm], backend=backend).item() == pytest.approx(
        v, rel=1e-8, abs=1e-10)
    assert distance_covariance_sqr(scale * tx, ty, backend=backend).item() == pytest.approx(
        scale * v, rel=1e-8, abs=1e-10)
    # dCor = 1 for an affine relation
    assert distance_correlation_sqr(tx[:, :1], 3 * tx[:, :1] - 2, backend=backend).item() == pytest.approx(1.0)


def test_independent_samples_near_zero():
    x, y = data(1500, 1, 1, 9, dependent=False)
    assert distance_correlation_sqr(torch.tensor(x), torch.tensor(y), backend="tiled").item() < 0.01


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck_and_gradgradcheck(backend, unbiased):
    x, y = data(9, 1, 2, 4)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y, requires_grad=True)
    for f in (lambda a, b: distance_covariance_sqr(a, b, unbiased=unbiased, backend=backend),
              lambda a, b: distance_correlation_sqr(a, b, unbiased=unbiased, backend=backend),
              lambda a, b: joint_distance_covariance_sqr(a, b, a ** 2, unbiased=unbiased, backend=backend)):
        assert torch.autograd.gradcheck(f, (tx, ty))
        assert torch.autograd.gradgradcheck(f, (tx, ty))


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_inputs_have_finite_gradients(backend):
    const = torch.zeros(12, 1, dtype=torch.float64, requires_grad=True)
    z = torch.randn(12, 2, dtype=torch.float64)
    val = distance_correlation_sqr(const, z, backend=backend)
    (g,) = torch.autograd.grad(val, const)
    assert val.item() == 0.0 and torch.isfinite(g).all()
    ties = torch.tensor([[0.0], [0.0], [1.0], [1.0], [2.0], [2.0]], dtype=torch.float64, requires_grad=True)
    z6 = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    for unbiased in (False, True):
        val = distance_covariance_sqr(ties, z6, unbiased=unbiased, backend=backend)
        g1, g2 = torch.autograd.grad(val, (ties, z6), create_graph=True)
        (h,) = torch.autograd.grad(g2.sum(), z6)
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all() and torch.isfinite(h).all()


def test_modules():
    torch.manual_seed(0)
    z = torch.randint(0, 2, (40, 1)).double()
    logits = (z + torch.randn(40, 1, dtype=torch.float64)).requires_grad_()
    p = torch.sigmoid(logits)
    assert DistanceCovarianceLoss()(logits, z).item() == pytest.approx(distance_covariance_sqr(p, z).item())
    assert DistanceCorrelationLoss(unbiased=True)(p, z, pred_as_logit=False).item() == pytest.approx(
        distance_correlation_sqr(p, z, unbiased=True).item())
    age = torch.rand(40, 1, dtype=torch.float64)
    jd = JdCovLoss()
    val = jd(logits, [z, age])
    assert val.item() == pytest.approx(joint_distance_covariance_sqr(p, z, age).item())
    assert jd.attribute_dependence.item() == pytest.approx(joint_distance_covariance_sqr(z, age).item())
    (g,) = torch.autograd.grad(val, logits)
    assert torch.isfinite(g).all()
    cc = CCdCovLoss(weights=[1.0, 3.0])(logits, [z, age])
    assert cc.item() == pytest.approx(distance_covariance_sqr(p, torch.cat([z, 3 * age], 1), unbiased=True).item())


def test_errors():
    x = torch.randn(10)
    with pytest.raises(ValueError, match=r"Expected argument `y` to have N=10 rows like `x`, but got 9"):
        distance_covariance_sqr(x, torch.randn(9))
    with pytest.raises(ValueError, match=r"Expected at least 4 rows for the unbiased"):
        distance_covariance_sqr(x[:3], x[:3], unbiased=True)
    with pytest.raises(ValueError, match=r"Expected argument `x` to be finite"):
        distance_covariance_sqr(torch.tensor([1.0, float("nan"), 2.0, 3.0]), x[:4], validate_args=True)
    with pytest.raises(TypeError, match=r"Expected argument `x` to be a floating-point tensor"):
        distance_covariance_sqr(torch.arange(10), x)
    with pytest.raises(TypeError, match=r"Expected all inputs to share one dtype"):
        distance_covariance_sqr(x, x.double())
    with pytest.raises(ValueError, match=r"Expected at least 2 variables for JdCov"):
        joint_distance_covariance_sqr(x)
    with pytest.raises(ValueError, match=r"Expected at least one attribute for CCdCov"):
        concatenated_distance_covariance_sqr(x)
    with pytest.raises(ValueError, match=r"Expected argument `backend` to be one of"):
        distance_covariance_sqr(x, x, backend="fast")
    with pytest.raises(ValueError, match=r"The `sorted` backend cannot run: it needs a 1-D variable"):
        resolve_backend("sorted", [x[:, None], torch.randn(10, 2)])
    with pytest.raises(ValueError, match=r"The `cuda` backend needs CUDA tensors"):
        resolve_backend("cuda", [x])
    with pytest.raises(ValueError, match=r"Expected argument `weights` to have one weight per attribute"):
        concatenated_distance_covariance_sqr(x, x, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"Expected argument `c` to be a positive number"):
        JdCovLoss(c=0)


# ---------------------------------------------------------------------------------------------------------------
# the sorted backend: 1-D against 1-D or categorical


@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 120), seed=st.integers(0, 10_000), unbiased=st.booleans(), ties=st.booleans(),
       categorical=st.booleans())
def test_sorted_matches_dcor(n, seed, unbiased, ties, categorical):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    if ties:
        x = np.round(2 * x)
    if categorical:
        y = np.eye(3)[rng.integers(0, 3, n)] * 0.8
    else:
        y = rng.normal(size=n) + x
        if ties:
            y = np.round(y)
    cov = dcor.u_distance_covariance_sqr if unbiased else dcor.distance_covariance_sqr
    cor = dcor.u_distance_correlation_sqr if unbiased else dcor.distance_correlation_sqr
    tx, ty = torch.tensor(x), torch.tensor(y)
    got = distance_covariance_sqr(tx, ty, unbiased=unbiased, backend="sorted").item()
    assert got == pytest.approx(cov(x, y), rel=1e-9, abs=1e-12)
    got = distance_correlation_sqr(tx, ty, unbiased=unbiased, backend="sorted").item()
    assert got == pytest.approx(cor(x, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kind", ["continuous", "ties", "categorical"])
def test_sorted_gradients_equal_dense(unbiased, kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 1))
    y = rng.normal(size=(300, 1)) + x
    if kind == "ties":
        x, y = np.round(x), np.round(y)
    if kind == "categorical":
        y = np.eye(4)[rng.integers(0, 4, 300)]
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y)
    for f in (distance_covariance_sqr, distance_correlation_sqr):
        (g_sorted,) = torch.autograd.grad(f(tx, ty, unbiased=unbiased, backend="sorted"), tx)
        (g_dense,) = torch.autograd.grad(f(tx, ty, unbiased=unbiased, backend="dense"), tx)
        torch.testing.assert_close(g_sorted, g_dense, rtol=1e-9, atol=1e-12)


def test_sorted_values_do_not_depend_on_the_thread_count():
    """Single-threaded ops and a split of the dominance sums that depends only on n (large enough to split here):
    the same bits for 1 and 2 threads, with ties in x (float32 rounding) and against dcor."""
    from fairret.ops.sorted import _SPLIT_MIN
    rng = np.random.default_rng(4)
    n = _SPLIT_MIN + 1001
    x = np.round(rng.normal(size=n), 3)
    y = x + rng.normal(size=n)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
            val = distance_covariance_sqr(tx, torch.tensor(y, dtype=torch.float32), backend="sorted")
            out.append((val, torch.autograd.grad(val, tx)[0]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    x32, y32 = (v.astype(np.float32).astype(np.float64) for v in (x, y))
    want = dcor.distance_covariance_sqr(x32, y32, method="MERGESORT")
    assert out[0][0].item() == pytest.approx(want, rel=1e-5)


def test_sorted_gradcheck_and_gradgradcheck():
    rng = np.random.default_rng(2)
    tx = torch.tensor(rng.normal(size=(11, 1)), requires_grad=True)
    ty = torch.tensor(rng.normal(size=(11, 1)), requires_grad=True)
    for unbiased in (False, True):
        f = lambda a, b: distance_correlation_sqr(a, b, unbiased=unbiased, backend="sorted")  # noqa: E731
        assert torch.autograd.gradcheck(f, (tx, ty))
        assert torch.autograd.gradgradcheck(f, (tx, ty))


def test_auto_picks_sorted_for_large_1d():
    from fairret.ops import DENSE_MAX_N
    x = torch.randn(DENSE_MAX_N + 1, 1)
    assert resolve_backend("auto", [x, x]) == "sorted"
    assert resolve_backend("auto", [x, torch.nn.functional.one_hot(torch.arange(DENSE_MAX_N + 1) % 3).float()]) \
        == "sorted"
    assert resolve_backend("auto", [x, torch.randn(DENSE_MAX_N + 1, 2)]) == "tiled"
    assert resolve_backend("auto", [x[:10], x[:10]]) == "dense"

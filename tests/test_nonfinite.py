"""Regression tests of issue 19: non-finite, empty and saturated inputs, one test (or a few) per row of its table.

The policy they pin (README, "Numerics"): with validation off a non-finite input gives a non-finite result, never a
finite wrong one; with ``validate_args=True`` a ``ValueError`` naming the argument; degenerate but finite inputs
(absent groups, empty batches, zero variance, saturated probabilities) give their documented finite value with
finite gradients. References are independent: float64 formulas written out here, or the same quantity computed
on an input without the defect (e.g. without the empty columns or the empty batch).
"""
import math

import numpy as np
import pytest
import torch

from fairret.loss import (ChiSquaredProjectionLoss, JensenShannonProjectionLoss, KLProjectionLoss, LSELoss,
                          NormLoss, SquaredEuclideanProjectionLoss, TotalVariationProjectionLoss)
from fairret.metric import LinearFractionalParity
from fairret.statistic import FScore, PositiveRate, TruePositiveRate

PROJECTIONS = {"kl": KLProjectionLoss, "js": JensenShannonProjectionLoss, "tv": TotalVariationProjectionLoss,
               "squared_euclidean": SquaredEuclideanProjectionLoss, "chi_squared": ChiSquaredProjectionLoss}


def batch(n=8, s=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, generator=g).to(dtype)
    sens = torch.eye(s)[torch.arange(n) % s].to(dtype)
    label = (torch.arange(n) // s % 2).to(dtype).unsqueeze(1)  # every group has positives and negatives
    return logits, sens, label


# -- row 1: one NaN in predictions, labels or sens --------------------------------------------------------------
@pytest.mark.parametrize("where", ["pred", "label", "sens"])
@pytest.mark.parametrize("loss_cls", [NormLoss, LSELoss])
def test_row1_nan_input_gives_nan_loss(where, loss_cls):
    logits, sens, label = batch()
    {"pred": logits, "label": label, "sens": sens}[where][0, 0] = float("nan")
    x = logits.clone().requires_grad_()
    loss = loss_cls(TruePositiveRate())(x, sens, label)
    assert torch.isnan(loss)


@pytest.mark.parametrize("where", ["pred", "sens"])
def test_row1_nan_input_rejected_with_validation(where):
    logits, sens, label = batch()
    {"pred": logits, "sens": sens}[where][0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"`{where}` to be finite"):
        NormLoss(TruePositiveRate(), validate_args=True)(logits, sens, label)


def test_row1_positive_rate_and_metric_with_nan_prediction():
    logits, sens, _ = batch()
    p = torch.sigmoid(logits)
    p[0, 0] = float("nan")  # row 0 is in group 0 only
    rates = PositiveRate()(p, sens)
    assert torch.isnan(rates).all()  # 0 * NaN reaches every group's sum: no group may read as 0 or absent
    m = LinearFractionalParity(PositiveRate(), stat_shape=2)
    m.update(p, sens)
    assert torch.isnan(m.compute())
    m = LinearFractionalParity(PositiveRate(), stat_shape=2, validate_args=True)
    with pytest.raises(ValueError, match="`pred` to be finite"):
        m.update(p, sens)


def test_row1_nan_sens_reaches_only_its_group():
    logits, sens, _ = batch()
    sens[1, 1] = float("nan")
    rates = PositiveRate()(torch.sigmoid(logits), sens)
    assert torch.isnan(rates[1]) and torch.isfinite(rates[0])


# -- row 5: momentum with empty batches, batches without positives, non-finite batches ---------------------------
def _momentum_loss():
    return NormLoss(TruePositiveRate(), momentum=0.5)


def test_row5_empty_first_batch_is_skipped():
    logits, sens, label = batch(seed=1)
    fresh, skipped = _momentum_loss(), _momentum_loss()
    skipped(torch.zeros(0, 1), torch.zeros(0, 2), torch.zeros(0, 1))
    for seed in (1, 2, 3):
        lg, s, y = batch(seed=seed)
        a, b = fresh(lg, s, y), skipped(lg, s, y)
        assert torch.isfinite(b) and b.item() > 0
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fresh.running_denom, skipped.running_denom)
    torch.testing.assert_close(fresh.running_target, skipped.running_target)


@pytest.mark.parametrize("kind", ["empty", "no_positives", "nan"])
def test_row5_undefined_updates_leave_the_averages(kind):
    loss = _momentum_loss()
    for seed in (1, 2):
        loss(*batch(seed=seed)[:2], batch(seed=seed)[2])
    den, tgt = loss.running_denom.clone(), loss.running_target.clone()
    logits, sens, label = batch(seed=3)
    if kind == "empty":
        out = loss(logits[:0], sens[:0], label[:0])
        assert out.item() == 0.0
    elif kind == "no_positives":
        out = loss(logits, sens, torch.zeros_like(label))
        assert out.item() == 0.0  # no group has a defined TPR
    else:
        logits[0, 0] = float("nan")
        out = loss(logits, sens, label)
        assert torch.isnan(out)
    torch.testing.assert_close(loss.running_denom, den)
    torch.testing.assert_close(loss.running_target, tgt)
    assert torch.isfinite(loss(*batch(seed=4)[:2], batch(seed=4)[2]))


def test_row5_group_first_seen_later_starts_from_its_own_rate():
    loss = NormLoss(PositiveRate(), momentum=0.25)
    logits, sens, _ = batch(n=8, s=2, seed=5)
    only0 = sens.clone()
    only0[:, 1] = 0  # group 1 absent from the first batch
    loss(logits, only0)
    assert loss.running_denom[0, 0, 1].item() == 0.0
    loss(logits, sens)
    # group 1's first defined rate (4 of 8 rows) initialises it; group 0 is averaged (1 - m) * 0.5 + m * 0.5
    torch.testing.assert_close(loss.running_denom[0, 0], torch.tensor([0.5, 0.5]))


# -- row 7: LSELoss with absent sens columns ---------------------------------------------------------------------
def test_row7_lse_ignores_absent_groups():
    logits, sens, _ = batch(n=8, s=2, seed=2)
    wide = torch.cat([sens, torch.zeros(8, 98)], 1)
    x = logits.double()
    p = torch.sigmoid(x)
    rates = (p * sens.double()).sum(0) / sens.double().sum(0)
    v = (rates / p.mean() - 1).abs()
    ref = torch.log(torch.exp(v).sum()) - math.log(2)  # float64, the two present groups only
    got = LSELoss(PositiveRate())(x, wide.double())
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(LSELoss(PositiveRate())(x, sens.double()), ref)


# -- row 9: load_state_dict of a momentum loss into a fresh copy --------------------------------------------------
def test_row9_momentum_state_resumes_in_a_fresh_module():
    trained = torch.nn.Sequential(NormLoss(PositiveRate(), momentum=0.3))
    for seed in (1, 2, 3):
        trained[0](*batch(seed=seed)[:2])
    fresh = torch.nn.Sequential(NormLoss(PositiveRate(), momentum=0.3))
    fresh.load_state_dict(trained.state_dict())  # strict
    torch.testing.assert_close(fresh[0].running_denom, trained[0].running_denom)
    torch.testing.assert_close(fresh[0].running_target, trained[0].running_target)
    logits, sens, _ = batch(seed=9)
    torch.testing.assert_close(fresh[0](logits, sens), trained[0](logits, sens))


# -- row 13: projection losses with N = 0 ------------------------------------------------------------------------
@pytest.mark.parametrize("div", list(PROJECTIONS))
def test_row13_empty_batch_projection_is_zero(div):
    x = torch.zeros(0, 1, requires_grad=True)
    loss = PROJECTIONS[div](PositiveRate())(x, torch.zeros(0, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad.shape == (0, 1)


# -- rows 3 and 14: saturated logits, probabilities of exactly 1, half precision ---------------------------------
def _divergence64(div, q, p, p1m):
    """Float64 reference divergence between Bernoulli(q) and Bernoulli(p), 1 - p given accurately."""
    def kl(a, a1m, b, b1m):
        return torch.xlogy(a, a) - torch.xlogy(a, b) + torch.xlogy(a1m, a1m) - torch.xlogy(a1m, b1m)
    if div == "kl":
        return kl(q, 1 - q, p, p1m)
    if div == "js":
        m, m1m = (q + p) / 2, ((1 - q) + p1m) / 2
        return 0.5 * kl(q, 1 - q, m, m1m) + 0.5 * kl(p, p1m, m, m1m)
    if div == "tv":
        return (q - p).abs()
    if div == "squared_euclidean":
        return 2 * (q - p) ** 2
    return (q - p) ** 2 / (p * p1m)


@pytest.mark.parametrize("div", list(PROJECTIONS))
@pytest.mark.parametrize("level", [20.0, -95.0])
def test_row3_saturated_float32_logits(div, level):
    logits, sens, _ = batch(n=16, seed=3)
    logits[:5] = level
    x = logits.clone().requires_grad_()
    loss_fn = PROJECTIONS[div](PositiveRate())
    loss = loss_fn(x, sens)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # value against the float64 formula on the float64 logits, with the same projection
    x64 = logits.double()
    q = loss_fn.project(x64, sens.double())[:, 0]
    p, p1m = torch.sigmoid(x64[:, 0]), torch.sigmoid(-x64[:, 0])
    if div == "chi_squared":  # the documented bound of the chi-squared divergence
        p = p.clamp(1e-12, 1 - 1e-12)
        p1m = 1 - p
    ref = _divergence64(div, q, p, p1m).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("div", list(PROJECTIONS))
def test_row3_probability_exactly_one(div):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(16, 1, generator=g)
    p[0], p[1] = 1.0, 0.0
    x = p.clone().requires_grad_()
    loss = PROJECTIONS[div](PositiveRate())(x, batch(n=16)[1], pred_as_logit=False)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("div", list(PROJECTIONS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_row14_half_precision_projection(div, dtype):
    logits, sens, _ = batch(n=32, seed=4)
    x = logits.to(dtype).requires_grad_()
    loss = PROJECTIONS[div](PositiveRate())(x, sens.to(dtype))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and loss.item() >= 0
    ref = PROJECTIONS[div](PositiveRate())(x.detach().double(), sens.double())
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2, abs=1e-4)


def test_row14_tv_rows_nonnegative_in_float16():
    from fairret.functional import divergence_value
    p = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float16)
    val = divergence_value(p.double(), torch.logit(p.float()).half(), "tv", pred_as_logit=True)
    assert (val >= 0).all() and val.dtype == torch.float32


# -- row 6: chi-squared projection of a group with saturated logits ----------------------------------------------
def test_row6_chi_squared_projection_feasible_and_monotone():
    values = []
    for level in (-16.0, -20.0, -25.0):
        logits, sens, _ = batch(n=64, seed=6)
        logits[sens[:, 0] == 1] = level
        loss_fn = ChiSquaredProjectionLoss(PositiveRate())
        q = loss_fn.project(logits, sens)[:, 0]
        rates = (q[:, None] * sens.double()).sum(0) / sens.double().sum(0)
        target = torch.sigmoid(logits.double()).mean()
        assert (rates - target).abs().max().item() < 1e-6
        values.append(loss_fn(logits, sens).item())
    assert values[0] < values[1] < values[2]  # more extreme is further from fair, never closer


# -- row 17 (linear-fractional part): targets that broadcast, sens without columns, FScore(beta=nan) -------------
@pytest.mark.parametrize("loss_cls", [NormLoss, KLProjectionLoss])
def test_row17_target_shape(loss_cls):
    logits, sens, _ = batch()
    with pytest.raises(ValueError, match="`target_statistic`"):
        loss_cls(PositiveRate())(logits, sens, target_statistic=torch.full((5,), 0.5))
    ok = loss_cls(PositiveRate())(logits, sens, target_statistic=torch.tensor([0.5]))
    assert torch.isfinite(ok)


@pytest.mark.parametrize("loss_cls", [NormLoss, LSELoss, KLProjectionLoss])
def test_row17_sens_without_columns(loss_cls):
    logits, _, _ = batch()
    with pytest.raises(ValueError, match="`sens` to have at least one column"):
        loss_cls(PositiveRate())(logits, torch.zeros(8, 0))


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), 0.0, -1.0, True])
def test_row17_fscore_beta(beta):
    with pytest.raises(ValueError, match="`beta`"):
        FScore(beta=beta)


# -- row 2: NaN into the dependence losses and functionals -------------------------------------------------------
from fairret.functional import (concatenated_distance_covariance_sqr, distance_correlation_sqr,  # noqa: E402
                                distance_covariance_sqr, joint_distance_covariance_sqr)
from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, DistanceCovarianceLoss, JdCovLoss  # noqa: E402

DEPENDENCE = {"dcov": lambda x, z, **kw: distance_covariance_sqr(x, z, **kw),
              "dcor": lambda x, z, **kw: distance_correlation_sqr(x, z, **kw),
              "jdcov": lambda x, z, **kw: joint_distance_covariance_sqr(x, z, **kw),
              "jdcov_scaled": lambda x, z, **kw: joint_distance_covariance_sqr(x, z, scale_invariant=True, **kw),
              "ccdcov": lambda x, z, **kw: concatenated_distance_covariance_sqr(x, z, **kw)}


def _pair(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, generator=g, dtype=torch.float64), torch.randint(0, 2, (n, 1), generator=g).double()


@pytest.mark.parametrize("measure", list(DEPENDENCE))
@pytest.mark.parametrize("backend", ["dense", "tiled", "sorted"])
@pytest.mark.parametrize("where", ["pred", "attribute"])
def test_row2_nan_gives_nan_in_every_dependence_measure(measure, backend, where):
    x, z = _pair()
    (x if where == "pred" else z)[3, 0] = float("nan")
    if backend == "sorted" and measure.startswith("jdcov"):
        backend = "tiled"  # JdCov is not a pair of a 1-D variable: sorted does not apply
    assert torch.isnan(DEPENDENCE[measure](x, z, backend=backend))


def test_row2_losses_and_validation():
    x, z = _pair()
    x[0, 0] = float("nan")
    assert torch.isnan(DistanceCorrelationLoss()(x, z, pred_as_logit=False))
    x, z = _pair()
    z[1, 0] = float("nan")
    assert torch.isnan(JdCovLoss(scale_invariant=True)(x, [z, torch.rand(12, 1, dtype=torch.float64)],
                                                       pred_as_logit=False))
    with pytest.raises(ValueError, match="`y` to be finite"):
        DistanceCorrelationLoss(validate_args=True)(x, z, pred_as_logit=False)


# -- row 4: U-statistic dCor with an exactly zero distance variance ----------------------------------------------
def _degenerate(kind, n):
    g = torch.Generator().manual_seed(n)
    if kind == "saturated_pred":  # all but one prediction at 1.0
        x = torch.ones(n, 1, dtype=torch.float64)
        x[0] = 0.3
        return x, torch.rand(n, 1, generator=g, dtype=torch.float64)
    z = torch.zeros(n, 1, dtype=torch.float64)  # an attribute with one minority row
    z[2] = 1.0
    return torch.rand(n, 1, generator=g, dtype=torch.float64), z


@pytest.mark.parametrize("kind", ["saturated_pred", "minority_row"])
@pytest.mark.parametrize("backend", ["dense", "tiled", "sorted"])
@pytest.mark.parametrize("n", [5, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row4_zero_u_variance_gives_zero_with_finite_gradient(kind, backend, n, dtype):
    x, z = _degenerate(kind, n)
    x = x.to(dtype).requires_grad_()
    z = z.to(dtype)
    # the exact U-centred distance matrix of the degenerate variable is 0, so Omega(x, x) = Omega(x, z) = 0
    v = distance_correlation_sqr(x, z, unbiased=True, backend=backend)
    v.backward()
    assert v.item() == 0.0
    assert torch.isfinite(x.grad).all() and x.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("backend", ["dense", "tiled", "sorted"])
def test_row4_near_degenerate_values_are_kept(backend):
    import dcor
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(30, 1, dtype=torch.float64)
    x[0], x[1] = 1.0, 0.05  # two distinct outliers: a small but real distance variance
    z = x + 0.1 * torch.rand(30, 1, generator=g, dtype=torch.float64)
    ref = dcor.u_distance_correlation_sqr(x.numpy(), z.numpy())
    assert ref > 0.01
    got = distance_correlation_sqr(x, z, unbiased=True, backend=backend).item()
    assert got == pytest.approx(ref, rel=1e-8)


# -- row 15: JdCov in bfloat16 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("unbiased", [True, False])
def test_row15_half_precision_jdcov_accumulates_in_float32(dtype, unbiased):
    g = torch.Generator().manual_seed(15)
    xs = [torch.rand(64, 1, generator=g).to(dtype) for _ in range(3)]
    # reference: the same (rounded) inputs in float64, brute force
    ref = joint_distance_covariance_sqr(*[x.double() for x in xs], unbiased=unbiased, backend="dense").item()
    got = joint_distance_covariance_sqr(*xs, unbiased=unbiased)
    assert got.dtype == dtype
    assert abs(ref) > 1e-3
    assert got.item() == pytest.approx(ref, rel=1e-2)  # the output's own rounding (8 or 11 bits)


# -- row 8: (N, C) predictions with float class indices ----------------------------------------------------------
def test_row8_float_class_indices_are_one_hot():
    g = torch.Generator().manual_seed(8)
    pred = torch.softmax(torch.randn(12, 3, generator=g), 1).double()
    labels = torch.randint(0, 3, (12,), generator=g)
    sens = torch.eye(2, dtype=torch.float64)[torch.arange(12) % 2]
    got_float = TruePositiveRate()(pred, sens, labels.double())
    got_int = TruePositiveRate()(pred, sens, labels)
    ref = torch.zeros(3, 2, dtype=torch.float64)  # brute force: TPR of class c in group s
    for c in range(3):
        for s in range(2):
            rows = [i for i in range(12) if labels[i] == c and sens[i, s] == 1]
            ref[c, s] = pred[rows, c].sum() / len(rows) if rows else 0.0
    torch.testing.assert_close(got_float, ref)
    torch.testing.assert_close(got_int, ref)


def test_row8_bad_float_indices():
    pred, sens = torch.rand(4, 3), torch.ones(4, 1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        TruePositiveRate()(pred, sens, torch.tensor([0.0, 1.5, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        TruePositiveRate()(pred, sens, torch.tensor([0.0, 3.0, 2.0, 0.0]))
    out = TruePositiveRate()(pred, sens, torch.tensor([0.0, float("nan"), 2.0, 0.0]))
    assert torch.isnan(out).all()  # a NaN label is non-finite input: the statistic is NaN, not a dropped row


# -- row 10: AGM with a step whose micro-batches are all empty ---------------------------------------------------
def test_row10_agm_skips_empty_steps():
    from fairret.modality import AGM
    g = torch.Generator().manual_seed(10)
    steps = [([torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)], torch.randint(0, 2, (6,), generator=g))
             for _ in range(3)]
    plain, skipping = AGM(momentum=0.3), AGM(momentum=0.3)
    empty = ([torch.zeros(0, 2), torch.zeros(0, 2)], torch.zeros(0, dtype=torch.long))
    skipping.update(*empty)
    assert torch.equal(skipping.coefficients(0), torch.ones(2, dtype=torch.float64))
    for k, step in enumerate(steps):
        plain.update(*step)
        skipping.update(*step)
        a, b = plain.coefficients(k), skipping.coefficients(k)
        torch.testing.assert_close(a, b)
        assert torch.isfinite(b).all()
        skipping.update(*empty)
        assert torch.equal(skipping.coefficients(k), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(plain.running, skipping.running)


def test_row10_nonfinite_scores_give_nonfinite_coefficients():
    from fairret.modality import AGM, OGMGE
    y = torch.tensor([0, 1, 1, 0])
    bad = torch.randn(4, 2)
    bad[0, 0] = float("nan")
    for rule in (AGM(), OGMGE(noise=False)):
        rule.update([torch.randn(4, 2), torch.randn(4, 2)], y)
        rule.coefficients(0)
        running = getattr(rule, "running", torch.zeros(0)).clone()
        rule.update([bad, torch.randn(4, 2)], y)
        assert not torch.isfinite(rule.coefficients(1)).all()
        if isinstance(rule, AGM):  # the averages are not poisoned: the NaN modality's is skipped
            assert torch.isfinite(rule.running).all()
            assert rule.running[0] == running[0]


# -- row 11 and parts of 16/17: SensitiveEncoder -----------------------------------------------------------------
def test_row11_nan_category_is_rejected():
    from fairret.sensitive import SensitiveEncoder
    enc = SensitiveEncoder({"race": "categorical", "sex": "binary"})
    with pytest.raises(ValueError, match="`race` to have no missing values, but it holds 2 NaN"):
        enc.fit({"race": [1.0, float("nan"), 2.0, float("nan")], "sex": ["F", "M", "F", "M"]})
    with pytest.raises(ValueError, match="`race` to have no missing values"):
        enc.fit({"race": np.array(["a", np.nan, "b", "a"], dtype=object), "sex": ["F", "M", "F", "M"]})
    enc.fit({"race": [1.0, 2.0, 2.0, 1.0], "sex": ["F", "M", "F", "M"]})
    with pytest.raises(ValueError, match="`race` to have no missing values"):
        enc.transform({"race": [1.0, float("nan")], "sex": ["F", "M"]})


def test_row16_row17_encoder_arguments():
    from fairret.sensitive import SensitiveEncoder, one_hot_groups
    with pytest.raises(ValueError, match="`columns` to hold at least one row"):
        SensitiveEncoder({"age": "continuous"}).fit({"age": []})
    with pytest.raises(ValueError, match=r"`codes` to hold group codes in \[-1, 3\)"):
        one_hot_groups(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"`codes` to hold group codes in \[-1, 3\)"):
        one_hot_groups(torch.tensor([0, -2]), 3)
    for w in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="`weights` to give `age` a finite non-negative number"):
            SensitiveEncoder({"age": "continuous"}, weights={"age": w})


# -- row 12: intersectional JSD with all-zero one-hot rows -------------------------------------------------------
def test_row12_all_zero_one_hot_rows_are_ignored_like_minus_one():
    from fairret.functional.calibration import intersectional_jsd
    from fairret.metric import IntersectionalJSD
    from fairret.sensitive import one_hot_groups
    g = torch.Generator().manual_seed(12)
    p = torch.rand(200, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 3, (200,), generator=g)
    ids[:50] = -1
    onehot = one_hot_groups(ids, 3)
    ref = intersectional_jsd(p[50:], ids[50:])  # the ignored rows simply left out
    torch.testing.assert_close(intersectional_jsd(p, ids), ref)
    torch.testing.assert_close(intersectional_jsd(p, onehot), ref)
    m = IntersectionalJSD()
    m.update(p[:120], onehot[:120])
    m.update(p[120:], ids[120:])
    torch.testing.assert_close(m.compute(), ref)


# -- row 16: internal errors turned into ValueErrors naming the argument ----------------------------------------
@pytest.mark.parametrize("loss_cls", [CCdCovLoss, DistanceCovarianceLoss, JdCovLoss])
def test_row16_attribute_lists_of_different_rows(loss_cls):
    with pytest.raises(ValueError, match=r"`sens` \(attribute 1\) to have N=8 rows like `pred`, but got 7"):
        loss_cls()(torch.rand(8, 1), [torch.rand(8, 1), torch.rand(7, 1)])
    with pytest.raises(ValueError, match=r"`attributes` \(attribute 1\) to have N=8 rows like `pred`"):
        concatenated_distance_covariance_sqr(torch.rand(8, 1), torch.rand(8, 1), torch.rand(7, 1))


def test_row16_nan_into_the_jsd_metric():
    from fairret.metric import IntersectionalJSD
    m = IntersectionalJSD()
    p = torch.rand(20)
    p[0] = float("nan")
    m.update(p, torch.randint(0, 2, (20,)))
    with pytest.raises(ValueError, match="`pred` to be finite"):
        m.compute()


@pytest.mark.parametrize("metric", ["DistanceCorrelation", "CCdCov", "JdCov"])
def test_row16_empty_update_of_dependence_metrics(metric):
    import fairret.metric as M
    g = torch.Generator().manual_seed(16)
    p, z = torch.rand(20, 1, generator=g), torch.rand(20, 2, generator=g)
    with_empty, without = getattr(M, metric)(), getattr(M, metric)()
    with_empty.update(p[:0], z[:0])  # an empty batch adds no rows
    for m in (with_empty, without):
        m.update(p[:11], z[:11])
        m.update(p[11:], z[11:])
    with_empty.update(p[:0].reshape(0), z[:0])
    torch.testing.assert_close(with_empty.compute(), without.compute())
    only_empty = getattr(M, metric)()
    only_empty.update(p[:0], z[:0])
    with pytest.raises(ValueError, match="Expected at least"):
        only_empty.compute()


# -- "also seen": validate_args=True under torch.compile ----------------------------------------------------------
def test_validate_args_under_compile_says_why():
    logits, sens, label = batch(n=16)
    loss = NormLoss(TruePositiveRate(), validate_args=True)
    compiled = torch.compile(lambda a, b, c: loss(a, b, c), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"validate_args=True: fairret's value checks .* fullgraph"):
        compiled(logits, sens, label)
    # without fullgraph the checks run eagerly between graphs: the same values, the same errors
    torch._dynamo.reset()
    lenient = torch.compile(lambda a, b, c: loss(a, b, c), backend="eager")
    torch.testing.assert_close(lenient(logits, sens, label), loss(logits, sens, label))
    logits[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`pred` to be finite"):
        lenient(logits, sens, label)


# -- found by the fuzz suite ------------------------------------------------------------------------------------
def test_fuzz_chi_squared_tpr_group_with_saturated_positives_is_feasible():
    # group 1's positives: p = 1, 1, 0.545, 1 - 9e-14; meeting the target pins the 0.545 row at q = 0 and moves the
    # saturated rows, whose t must reach ~1e10: the q-space trust region counted the pinned row's (non-)move
    x = torch.tensor([-30, -0.066, 95, 0.052, 95, 0.18, 0.652, 30, -0.352, -95, -95.]).reshape(-1, 1)
    sens = torch.eye(2)[torch.tensor([1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0])]
    y = torch.tensor([0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0.]).reshape(-1, 1)
    q = ChiSquaredProjectionLoss(TruePositiveRate()).project(x, sens, y)[:, 0]
    p = torch.sigmoid(x[:, 0].double())
    target = (p * y[:, 0]).sum() / y.sum()
    for k in range(2):
        rows = (sens[:, k] == 1) & (y[:, 0] == 1)
        assert abs(q[rows].mean().item() - target.item()) < 1e-9


def test_fuzz_auto_backend_with_one_hot_predictions_that_need_a_gradient():
    # exactly one-hot (saturated softmax) predictions look categorical; `auto` above the dense range picked the
    # sorted backend, which takes categorical variables as data, and raised
    g = torch.Generator().manual_seed(0)
    x = torch.eye(3)[torch.randint(0, 3, (1100,), generator=g)].requires_grad_()
    z = torch.rand(1100, 1, generator=g)
    got = distance_covariance_sqr(x, z)
    got.backward()
    ref = distance_covariance_sqr(x.detach(), z, backend="tiled")
    torch.testing.assert_close(got, ref)
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="`sorted` backend cannot run: it takes a categorical variable as data"):
        distance_covariance_sqr(x, z, backend="sorted")

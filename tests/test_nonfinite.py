"""Regression tests of issue 19: non-finite, empty and saturated inputs, one test (or a few) per row of its table.

The policy they pin (README, "Numerics"): with validation off a non-finite input gives a non-finite result, never a
finite wrong one; with ``validate_args=True`` a ``ValueError`` naming the argument; degenerate but finite inputs
(absent groups, empty batches, zero variance, saturated probabilities) give their documented finite value with
finite gradients. References are independent: float64 formulas written out here, or the same quantity computed
on an input without the defect (e.g. without the empty columns or the empty batch).
"""
import math

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

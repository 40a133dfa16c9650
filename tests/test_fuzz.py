"""Fuzz suite (issue 19): every family against independent float64 formulas or its documented contract.

Each property draws the structure of a case with hypothesis (batch size 0-3 or larger, groups, the encoding of
``sens``, dtype, which values are saturated, tied, NaN or infinite, the backend) and the bulk values from a seeded
generator, then checks one of: the value against a float64 formula written out here (not the library's code), a
finite gradient, inputs not mutated, a non-finite result for non-finite input (validation off), or a
``ValueError`` naming the argument (validation on).

Profiles: by default (CI) each property runs its budget of examples (a few hundred for cheap properties, fewer
for the total variation projection, the slowest solver), derandomised so that CI is repeatable. Set
``FAIRRET_FUZZ=slow`` for ten times as many examples, randomised (thousands per property)::

    FAIRRET_FUZZ=slow .venv/bin/python -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics
"""
from __future__ import annotations

import math
import re
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from fairret import ops
from fairret.functional import (concatenated_distance_covariance_sqr, distance_correlation_sqr,
                                distance_covariance_sqr, joint_distance_covariance_sqr)
from fairret.loss import (ChiSquaredProjectionLoss, JensenShannonProjectionLoss, KLProjectionLoss, LSELoss,
                          NormLoss, SquaredEuclideanProjectionLoss, TotalVariationProjectionLoss)
from fairret.metric import LinearFractionalParity
from fairret.statistic import (Accuracy, FalseDiscoveryRate, FalseNegativeFalsePositiveFraction, FalseNegativeRate,
                               FalseOmissionRate, FalsePositiveRate, FScore, NegativePredictiveValue,
                               PositivePredictiveValue, PositiveRate, StackedLinearFractionalStatistic,
                               TrueNegativeRate, TruePositiveRate)

PROFILE = os.environ.get("FAIRRET_FUZZ", "ci")
if PROFILE not in ("ci", "slow"):
    raise ValueError(f"Expected FAIRRET_FUZZ to be 'ci' or 'slow', but got {PROFILE!r}")
SCALE = 10 if PROFILE == "slow" else 1


def fuzz(examples: int):
    """Settings of one property: ``examples`` in CI, ten times as many (randomised) with FAIRRET_FUZZ=slow."""
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=PROFILE == "ci", database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# -- the statistics, written out from the README's table (c0, c1, d0, d1 as functions of the label y) -------------
TABLE = {
    "PositiveRate": (PositiveRate, lambda y: (0 * y, 1 + 0 * y, 1 + 0 * y, 0 * y)),
    "TruePositiveRate": (TruePositiveRate, lambda y: (0 * y, y, y, 0 * y)),
    "FalsePositiveRate": (FalsePositiveRate, lambda y: (0 * y, 1 - y, 1 - y, 0 * y)),
    "PositivePredictiveValue": (PositivePredictiveValue, lambda y: (0 * y, y, 0 * y, 1 + 0 * y)),
    "FalseOmissionRate": (FalseOmissionRate, lambda y: (y, -y, 1 + 0 * y, -1 + 0 * y)),
    "Accuracy": (Accuracy, lambda y: (1 - y, 2 * y - 1, 1 + 0 * y, 0 * y)),
    "FalseNegativeFalsePositiveFraction": (FalseNegativeFalsePositiveFraction, lambda y: (y, -y, 0 * y, 1 - y)),
    "FScore": (lambda: FScore(2.0), lambda y: (0 * y, 5 * y, 4 * y, 1 + 0 * y)),
    "FalseNegativeRate": (FalseNegativeRate, lambda y: (y, -y, y, 0 * y)),
    "TrueNegativeRate": (TrueNegativeRate, lambda y: (1 - y, -(1 - y), 1 - y, 0 * y)),
    "NegativePredictiveValue": (NegativePredictiveValue, lambda y: (1 - y, -(1 - y), 1 + 0 * y, -1 + 0 * y)),
    "FalseDiscoveryRate": (FalseDiscoveryRate, lambda y: (0 * y, 1 - y, 0 * y, 1 + 0 * y)),
}
LABELLED = [k for k in TABLE if k != "PositiveRate"]
DTYPES = [torch.float32, torch.float64]
HALF = [torch.float16, torch.bfloat16]
EPS = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1.2e-7, torch.float64: 2.3e-16}


# -- strategies ----------------------------------------------------------------------------------------------------
sizes = st.one_of(st.integers(0, 3), st.integers(4, 12), st.integers(13, 64))


@st.composite
def lf_case(draw, max_classes=1, min_n=0):
    """Predictions (probabilities), labels and sens for the linear-fractional family, as float64 numpy arrays."""
    n = max(draw(sizes), min_n)
    c = draw(st.integers(1, max_classes))
    s = draw(st.integers(1, 4))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "ties", "saturated", "mixed"]))
    if kind == "ties":
        p = g.integers(0, 3, (n, c)) / 2.0
    elif kind == "saturated":
        p = g.integers(0, 2, (n, c)).astype(float)
    else:
        p = g.random((n, c))
        if kind == "mixed":
            p[g.random((n, c)) < 0.3] = 0.0
            p[g.random((n, c)) < 0.3] = 1.0
    if c > 1:  # rows of a multiclass prediction sum to 1
        p = p + 1e-3
        p = p / p.sum(1, keepdims=True)
    y = g.integers(0, 2, (n, 1)).astype(float) if c == 1 else np.eye(c)[g.integers(0, c, n)]
    enc = draw(st.sampled_from(["onehot", "onehot_empty", "weighted", "overlapping"]))
    if enc in ("onehot", "onehot_empty"):
        sens = np.eye(s)[g.integers(0, s, n)] if n else np.zeros((0, s))
        if enc == "onehot_empty":
            sens[:, g.integers(0, s)] = 0.0  # a group absent from the batch
    elif enc == "weighted":
        sens = g.random((n, s)) * (g.random((n, s)) < 0.7)
    else:  # two attributes: the groups overlap
        sens = np.concatenate([np.eye(s)[g.integers(0, s, n)], np.eye(2)[g.integers(0, 2, n)]], 1)
    note(f"n={n} c={c} kind={kind} enc={enc}")
    return p, y, sens


def lf_reference(name, p, y, sens, stacked=None):
    """Group values ``(K, C, S)``, the valid mask and the overall values ``(K, C)`` of a statistic, float64."""
    names = stacked or [name]
    vals, valid, overall = [], [], []
    for nm in names:
        c0, c1, d0, d1 = TABLE[nm][1](y)
        num_lin, den_lin = c0 + c1 * p, d0 + d1 * p  # (N, C)
        num, den = sens.T @ num_lin, sens.T @ den_lin  # (S, C)
        ok = np.abs(den) > 1e-12
        vals.append(np.where(ok, num / np.where(ok, den, 1.0), 0.0).T)
        valid.append(ok.T)
        on, od = num_lin.sum(0), den_lin.sum(0)
        overall.append(np.where(np.abs(od) > 1e-12, on / np.where(np.abs(od) > 1e-12, od, 1.0), 0.0))
    return np.stack(vals), np.stack(valid), np.stack(overall)


def violation_reference(vals, valid, overall, kind, p_norm=1):
    """NormLoss / LSELoss from the group values, float64 (absent groups contribute nothing)."""
    tgt = overall[..., None]
    zero = np.abs(tgt) <= 1e-12
    v = np.where(zero, np.abs(vals - tgt), np.abs(vals / np.where(zero, 1.0, tgt) - 1))
    total = 0.0
    for vv, ok in zip(v.reshape(-1, v.shape[-1]), valid.reshape(-1, v.shape[-1])):
        vv = vv[ok]
        if vv.size == 0:
            continue
        if kind == "lse":
            total += math.log(np.exp(vv).sum()) - math.log(vv.size)
        elif p_norm == float("inf"):
            total += vv.max()
        else:
            total += (vv ** p_norm).sum() ** (1 / p_norm)
    return total


def same(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Equal, NaN where NaN (inputs must not be mutated)."""
    return bool(((before == after) | (torch.isnan(before) & torch.isnan(after))).all())


def labels_arg(name, y, dtype):
    return () if name == "PositiveRate" else (torch.tensor(y, dtype=dtype),)


# -- statistics ----------------------------------------------------------------------------------------------------
@fuzz(300)
@given(case=lf_case(max_classes=3), name=st.sampled_from(list(TABLE)), dtype=st.sampled_from(DTYPES),
       label_form=st.sampled_from(["onehot", "int", "float"]))
def test_statistics_match_the_table(case, name, dtype, label_form):
    p, y, sens = case
    stat = TABLE[name][0]()
    pred, s = torch.tensor(p, dtype=dtype), torch.tensor(sens, dtype=dtype)
    args = labels_arg(name, y, dtype)
    if args and p.shape[1] > 1 and label_form != "onehot":  # class indices (N,), integer or float: one-hot
        idx = torch.tensor(y.argmax(1))
        args = (idx if label_form == "int" else idx.to(dtype),)
    before = [pred.clone(), s.clone()] + [a.clone() for a in args]
    sums = stat.sums(pred, s, *args)
    p, sens = pred.double().numpy(), s.double().numpy()  # the values as rounded to dtype
    vals, valid, overall = lf_reference(name, p, y, sens)
    # every term of these sums is >= 0 (probabilities, 0/1 labels, weights >= 0): no cancellation, so float32
    # sums are within ~n eps relative; denominators within rounding of the zero threshold may fall either way
    c = TABLE[name][1](y)
    den = (sens.T @ (c[2] + c[3] * p)).T[None]
    firm = (np.abs(den) > 1e-6) | (den == 0)
    assert np.array_equal(sums.valid.numpy()[firm], valid[firm])
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    got = sums.group_values().double().numpy()
    assert (np.abs(got - vals) <= tol * (np.abs(vals) + 1e-12))[firm].all()
    np.testing.assert_allclose(sums.overall_values().double().numpy(), overall, rtol=tol, atol=1e-12)
    assert all(same(b, a) for b, a in zip(before, [pred, s, *args]))


# -- violation losses ----------------------------------------------------------------------------------------------
@fuzz(300)
@given(case=lf_case(max_classes=3), name=st.sampled_from(["PositiveRate", "TruePositiveRate", "Accuracy",
                                                          "FalseOmissionRate", "eodds"]),
       kind=st.sampled_from(["norm1", "norm2", "norminf", "lse"]), dtype=st.sampled_from(DTYPES),
       as_logit=st.booleans())
def test_violation_losses_match_the_formula_with_finite_gradients(case, name, kind, dtype, as_logit):
    p, y, sens = case
    stacked = ["TruePositiveRate", "FalsePositiveRate"] if name == "eodds" else None
    stat = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()) if stacked else TABLE[name][0]()
    loss_fn = {"norm1": lambda: NormLoss(stat), "norm2": lambda: NormLoss(stat, p=2),
               "norminf": lambda: NormLoss(stat, p=float("inf")), "lse": lambda: LSELoss(stat)}[kind]()
    if as_logit:  # logits whose sigmoid/softmax is p (saturated rows become +-30 logits)
        pc = np.clip(p, 1e-13, 1 - 1e-13)
        raw = np.log(pc / (1 - pc)) if p.shape[1] == 1 else np.log(pc)
    else:
        raw = p
    x = torch.tensor(raw, dtype=dtype, requires_grad=True)
    s = torch.tensor(sens, dtype=dtype)
    raw, sens = x.detach().double().numpy(), s.double().numpy()  # the values as rounded to dtype
    if as_logit:
        p = 1 / (1 + np.exp(-raw)) if p.shape[1] == 1 else np.exp(raw) / np.exp(raw).sum(1, keepdims=True)
    else:
        p = raw
    args = () if name == "PositiveRate" else (torch.tensor(y, dtype=dtype),)
    before = [x.detach().clone(), s.clone()] + [a.clone() for a in args]
    loss = loss_fn(x, s, *args, pred_as_logit=as_logit)
    vals, valid, overall = lf_reference(name, p, y, sens, stacked)
    p_norm = {"norm1": 1, "norm2": 2, "norminf": float("inf")}.get(kind, 1)
    ref = violation_reference(vals, valid, overall, "lse" if kind == "lse" else "norm", p_norm)
    assert torch.isfinite(loss)
    # float32: ratios of sums within ~n eps, and |gamma / c - 1| loses digits when gamma ~ c (absolute 1e-4)
    assert loss.item() == pytest.approx(ref, rel=1e-9 if dtype == torch.float64 else 1e-3,
                                        abs=1e-10 if dtype == torch.float64 else 1e-4 * (1 + abs(ref)))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert all(same(b, a) for b, a in zip(before, [x.detach(), s, *args]))


@fuzz(200)
@given(case=lf_case(min_n=1), where=st.sampled_from(["pred", "label", "sens"]), bad=st.sampled_from(
       [float("nan"), float("inf"), float("-inf")]), kind=st.sampled_from(["norm1", "norminf", "lse", "kl", "chi"]),
       validate=st.booleans(), data=st.data())
def test_nonfinite_input_gives_nonfinite_loss_or_a_named_error(case, where, bad, kind, validate, data):
    p, y, sens = case
    assume(where != "sens" or bool((sens != 0).any()))
    stat = TruePositiveRate()
    loss_fn = {"norm1": lambda: NormLoss(stat, validate_args=validate),
               "norminf": lambda: NormLoss(stat, p=float("inf"), validate_args=validate),
               "lse": lambda: LSELoss(stat, validate_args=validate),
               "kl": lambda: KLProjectionLoss(stat, validate_args=validate),
               "chi": lambda: ChiSquaredProjectionLoss(stat, validate_args=validate)}[kind]()
    arr = {"pred": p, "label": y, "sens": sens}[where].copy()
    if where == "sens":  # an entry that counts: a non-zero weight (0 * inf and NaN * 0 are NaN anyway)
        rows, cols = np.nonzero(sens)
        i = data.draw(st.integers(0, len(rows) - 1))
        arr[rows[i], cols[i]] = bad
    else:  # a row that enters a defined statistic: a positive (for the TPR) weighed by some group
        rows = np.nonzero((y[:, 0] == 1) & (sens != 0).any(1))[0]
        assume(len(rows) > 0)
        arr[rows[data.draw(st.integers(0, len(rows) - 1))], 0] = bad
    tensors = {"pred": p, "label": y, "sens": sens}
    tensors[where] = arr
    pred, lab, s = (torch.tensor(tensors[k]) for k in ("pred", "label", "sens"))
    if validate and where in ("pred", "sens"):
        with pytest.raises(ValueError, match=f"`{where}` to be finite"):
            loss_fn(pred, s, lab, pred_as_logit=False)
        return
    before = [t.clone() for t in (pred, lab, s)]
    loss = loss_fn(pred, s, lab, pred_as_logit=False)
    assert not torch.isfinite(loss), f"finite loss {loss.item()} from a non-finite {where}"
    assert all(same(b, a) for b, a in zip(before, (pred, lab, s)))


@fuzz(150)
@given(batches=st.lists(st.tuples(lf_case(), st.booleans()), min_size=1, max_size=5),
       momentum=st.floats(0.05, 1.0))
def test_momentum_skips_batches_without_a_defined_statistic(batches, momentum):
    """Running averages: a batch that defines nothing (empty, or no positives for the TPR) changes nothing, and the
    averages always equal a float64 recomputation over the batches that defined them."""
    s = 3
    loss = NormLoss(TruePositiveRate(), momentum=momentum)
    ref_den = np.zeros(s)
    ref_tgt = None
    for (p, y, _), drop_positives in batches:
        n = p.shape[0]
        sens = np.eye(s)[np.arange(n) % s]
        y = np.zeros_like(y) if drop_positives else y
        out = loss(torch.tensor(p), torch.tensor(sens), torch.tensor(y), pred_as_logit=False)
        assert torch.isfinite(out)
        den = (sens * y).sum(0) / max(n, 1)
        present = (sens * y).sum(0) > 1e-12
        ref_den = np.where(present, np.where(ref_den > 0, (1 - momentum) * ref_den + momentum * den, den), ref_den)
        if y.sum() > 0:
            tgt = (p * y).sum() / y.sum()
            ref_tgt = tgt if ref_tgt is None else (1 - momentum) * ref_tgt + momentum * tgt
        np.testing.assert_allclose(loss.running_denom.numpy().ravel(), ref_den, rtol=1e-12, atol=1e-15)
        if ref_tgt is None:
            assert torch.isnan(loss.running_target).all()
        else:
            np.testing.assert_allclose(loss.running_target.item(), ref_tgt, rtol=1e-12)


@fuzz(120)
@given(case=lf_case(), splits=st.lists(st.integers(0, 64), max_size=4), name=st.sampled_from(
       ["PositiveRate", "TruePositiveRate", "PositivePredictiveValue"]))
def test_parity_metric_streams_like_one_shot(case, splits, name):
    p, y, sens = case
    m = LinearFractionalParity(TABLE[name][0](), stat_shape=sens.shape[1])
    cuts = sorted({min(c, p.shape[0]) for c in splits} | {0, p.shape[0]})
    for a, b in zip(cuts[:-1] + [p.shape[0]], cuts[1:] + [p.shape[0]]):  # includes empty updates
        m.update(torch.tensor(p[a:b]), torch.tensor(sens[a:b]), *labels_arg(name, y[a:b], torch.float64))
    vals, valid, overall = lf_reference(name, p, y, sens)
    tgt = overall[..., None]
    gaps = np.where(np.abs(tgt) <= 1e-12, np.abs(vals - tgt), np.abs(vals / np.where(np.abs(tgt) <= 1e-12, 1, tgt)
                                                                        - 1))
    ref = np.where(valid, gaps, 0).max()
    assert m.compute().item() == pytest.approx(ref, rel=1e-6, abs=1e-9)


# -- projection losses ---------------------------------------------------------------------------------------------
PROJ = {"kl": KLProjectionLoss, "js": JensenShannonProjectionLoss, "tv": TotalVariationProjectionLoss,
        "squared_euclidean": SquaredEuclideanProjectionLoss, "chi_squared": ChiSquaredProjectionLoss}


def divergence64(div, q, x):
    """Float64 divergence D(q || sigmoid(x)) written out (chi-squared with its documented bound on p)."""
    p, p1m = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))
    if div == "chi_squared":
        p = np.clip(p, 1e-12, 1 - 1e-12)
        p1m = 1 - p
        return (q - p) ** 2 / (p * p1m)

    def xlogy(a, b):
        return np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, b)))

    def kl(a, a1m, b, b1m):
        return xlogy(a, a) - xlogy(a, b) + xlogy(a1m, a1m) - xlogy(a1m, b1m)

    logp, log1mp = -np.logaddexp(0, -x), -np.logaddexp(0, x)
    if div == "kl":
        return xlogy(q, q) + xlogy(1 - q, 1 - q) - q * logp - (1 - q) * log1mp
    if div == "js":
        m, m1m = (q + p) / 2, ((1 - q) + p1m) / 2
        return 0.5 * kl(q, 1 - q, m, m1m) + 0.5 * kl(p, p1m, m, m1m)
    if div == "tv":
        return np.abs(q - p)
    return 2 * (q - p) ** 2


@st.composite
def logits_case(draw, max_n=48):
    n = draw(st.one_of(st.integers(0, 3), st.integers(4, max_n)))
    s = draw(st.integers(1, 3))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = g.normal(size=(n, 1)) * draw(st.sampled_from([0.5, 3.0]))
    kind = draw(st.sampled_from(["plain", "saturated", "ties"]))
    if kind == "saturated":  # whole rows beyond float32's sigmoid resolution, either side
        mask = g.random((n, 1)) < 0.4
        x[mask] = np.sign(g.normal(size=int(mask.sum()))) * g.choice([17.0, 30.0, 95.0], int(mask.sum()))
    elif kind == "ties":
        x = np.round(x)
    sens = np.eye(s)[g.integers(0, s, n)] if n else np.zeros((0, s))
    y = g.integers(0, 2, (n, 1)).astype(float)
    note(f"n={n} s={s} kind={kind}")
    return x, sens, y


def check_projection(div, case, dtype, stat_name):
    x, sens, y = case
    stat = TABLE[stat_name][0]()
    args = () if stat_name == "PositiveRate" else (torch.tensor(y, dtype=dtype),)
    xt = torch.tensor(x, dtype=dtype)
    x_in = xt.clone().requires_grad_()
    s = torch.tensor(sens, dtype=dtype)
    loss_fn = PROJ[div](stat)
    loss = loss_fn(x_in, s, *args)
    assert torch.isfinite(loss), loss
    loss.backward()
    # finite wherever the gradient is representable in the input dtype (float16 stops at 65504: the chi-squared
    # gradient of a saturated probability can be larger, and then overflows like any float16 gradient)
    x64 = xt.detach().clone().double().requires_grad_()
    loss_fn(x64, s.double(), *[a.double() for a in args]).backward()
    representable = x64.grad.abs() < 0.5 * torch.finfo(dtype).max
    assert torch.isfinite(x_in.grad)[representable].all()
    assert same(xt, x_in.detach())
    if x.shape[0] == 0:
        assert loss.item() == 0.0
        return
    x64 = xt.double().numpy()[:, 0]  # the logits as the loss saw them (rounded to dtype)
    q = loss_fn.project(xt, s, *args)[:, 0].numpy()
    assert ((q >= 0) & (q <= 1)).all()
    # feasibility: every group with a denominator has the overall statistic (the solver's own tolerance)
    p = 1 / (1 + np.exp(-x64))
    c0, c1, d0, d1 = TABLE[stat_name][1](y[:, 0])
    den_q = sens.T @ (d0 + d1 * q)
    target = (c0 + c1 * p).sum() / (d0 + d1 * p).sum() if abs((d0 + d1 * p).sum()) > 1e-12 else 0.0
    resid = sens.T @ (c0 + c1 * q) - target * den_q
    scale = np.abs(sens).T @ (np.abs(c0) + np.abs(c1) + abs(target) * (np.abs(d0) + np.abs(d1))) + 1e-300
    assert (np.abs(resid) <= 1e-6 * scale).all(), resid / scale
    ref = divergence64(div, q, x64).mean()
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    assert loss.item() == pytest.approx(ref, rel=tol, abs=tol)


@fuzz(200)
@given(case=logits_case(), div=st.sampled_from(["kl", "js", "squared_euclidean", "chi_squared"]),
       dtype=st.sampled_from(DTYPES + HALF), stat_name=st.sampled_from(["PositiveRate", "TruePositiveRate"]))
def test_projection_losses_feasible_finite_and_right(case, div, dtype, stat_name):
    check_projection(div, case, dtype, stat_name)


@fuzz(25)
@given(case=logits_case(max_n=24), dtype=st.sampled_from(DTYPES + HALF))
def test_total_variation_projection_feasible_finite_and_right(case, dtype):
    check_projection("tv", case, dtype, "PositiveRate")


# -- dependence measures -------------------------------------------------------------------------------------------
def centred64(x, unbiased):
    a = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    n = a.shape[0]
    if not unbiased:
        return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()
    np.fill_diagonal(a, 0.0)
    r = a.sum(1)
    out = a - r[:, None] / (n - 2) - r[None, :] / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(out, 0.0)
    return out


def dcov64(x, y, unbiased):
    n = x.shape[0]
    return (centred64(x, unbiased) * centred64(y, unbiased)).sum() / (n * (n - 3) if unbiased else n * n)


def jdcov64(xs, c, unbiased):
    n, d = xs[0].shape[0], len(xs)
    prod = np.ones((n, n))
    for x in xs:
        prod = prod * (c - centred64(x, unbiased))
    if unbiased:
        np.fill_diagonal(prod, 0.0)
        return (prod.sum() + n * c ** d) / (n * (n - 3)) - c ** d * n / (n - 3)
    return prod.sum() / (n * n) - c ** d


def degenerate(x, unbiased):
    """Exactly zero distance variance, decided geometrically. V: every row equal. U (n >= 4): the U-centred
    distance matrix vanishes iff the off-diagonal distances are u_i + u_j, i.e. all rows equal a centre c but at
    most two, and two lie on opposite sides of c (c on the segment between them)."""
    n = x.shape[0]
    rows, inv, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    k = counts.argmax()
    if counts[k] == n:
        return True
    if not unbiased or counts[k] < n - 2:
        return False
    others = x[inv.ravel() != k]
    if len(others) == 1:
        return True

    def dist(a, b):
        return np.sqrt(((a - b) ** 2).sum())

    return bool(np.isclose(dist(others[0], others[1]), dist(others[0], rows[k]) + dist(rows[k], others[1]),
                           rtol=1e-12, atol=0))


@st.composite
def dependence_case(draw, min_n=0):
    n = max(draw(st.one_of(st.integers(0, 3), st.integers(4, 40))), min_n)
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    px = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["normal", "ties", "saturated", "constant", "one_outlier"]))
    x = g.normal(size=(n, px))
    if kind == "ties":
        x = np.round(x)
    elif kind == "saturated":  # probabilities at 0/1 with a few inside
        x = np.where(g.random((n, px)) < 0.8, np.round(g.random((n, px))), g.random((n, px)))
    elif kind == "constant":
        x = np.full((n, px), g.normal())
    elif kind == "one_outlier" and n:
        x = np.full((n, px), 1.0)
        x[g.integers(0, n)] = 0.3
    attr = draw(st.sampled_from(["binary", "onehot", "continuous", "minority"]))
    if attr == "binary":
        z = g.integers(0, 2, (n, 1)).astype(float)
    elif attr == "onehot":
        z = np.eye(3)[g.integers(0, 3, n)]
    elif attr == "continuous":
        z = g.random((n, 1)) + (x[:, :1] if n else 0.0)
    else:
        z = np.zeros((n, 1))
        if n:
            z[g.integers(0, n)] = 1.0
    note(f"n={n} x={kind} z={attr}")
    return x, z


def dcor_tolerance(x, z, dtype, unbiased):
    """Rounding bound of a computed dCor: the backends' noise on T0 is ~16 eps n R^2 (see _zero_variance)."""
    n = x.shape[0]
    rx = np.sqrt(((x.max(0) - x.min(0)) ** 2).sum())
    rz = np.sqrt(((z.max(0) - z.min(0)) ** 2).sum())
    norm = n * (n - 3) if unbiased else n * n
    txx, tzz = dcov64(x, x, unbiased) * norm, dcov64(z, z, unbiased) * norm
    noise = 64 * EPS[dtype] * n
    return noise * (rx * rz / math.sqrt(txx * tzz) + rx * rx / txx + rz * rz / tzz) + 1e-9, txx, tzz, rx, rz


@fuzz(250)
@given(case=dependence_case(), unbiased=st.booleans(), backend=st.sampled_from(["dense", "tiled", "sorted"]),
       dtype=st.sampled_from(DTYPES), measure=st.sampled_from(["dcov", "dcor"]))
def test_dcov_and_dcor_match_brute_force_on_every_backend(case, unbiased, backend, dtype, measure):
    x, z = case
    n = x.shape[0]
    fn = distance_covariance_sqr if measure == "dcov" else distance_correlation_sqr
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    zt = torch.tensor(z, dtype=dtype)
    if n < (4 if unbiased else 1):
        with pytest.raises(ValueError, match="Expected at least"):
            fn(xt, zt, unbiased=unbiased, backend="dense")
        return
    if backend == "sorted" and not ops.sorted_applicable([xt, zt], 0.0)[0]:  # an explicit backend says why
        with pytest.raises(ValueError, match="`sorted` backend cannot run"):
            fn(xt, zt, unbiased=unbiased, backend=backend)
        return
    got = fn(xt, zt, unbiased=unbiased, backend=backend)
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(xt.grad).all()
    x = xt.detach().double().numpy()  # as rounded to dtype
    z = zt.double().numpy()
    if measure == "dcov":
        ref = dcov64(x, z, unbiased)
        rx = np.sqrt(((x.max(0) - x.min(0)) ** 2).sum()) if n else 0.0
        rz = np.sqrt(((z.max(0) - z.min(0)) ** 2).sum()) if n else 0.0
        assert abs(got.item() - ref) <= 64 * EPS[dtype] * rx * rz / max(n - 3, 1) * n + 1e-12
        return
    if degenerate(x, unbiased) or degenerate(z, unbiased):
        assert got.item() == 0.0 and xt.grad.abs().max().item() == 0.0
        return
    tol, txx, tzz, rx, rz = dcor_tolerance(x, z, dtype, unbiased)
    ref = dcov64(x, z, unbiased) / math.sqrt(dcov64(x, x, unbiased) * dcov64(z, z, unbiased))
    if got.item() == 0.0:  # only below the documented resolution
        floor = 2 * 64 * EPS[dtype] * n
        assert txx <= floor * rx * rx or tzz <= floor * rz * rz
        return
    assert abs(got.item() - ref) <= tol
    assert -1 - tol <= got.item() <= 1 + tol


@fuzz(150)
@given(case=dependence_case(min_n=4), extra=st.integers(1, 2), c=st.sampled_from([0.5, 1.0, 2.0]),
       unbiased=st.booleans(), backend=st.sampled_from(["dense", "tiled"]),
       dtype=st.sampled_from(DTYPES + HALF), scale_invariant=st.booleans())
def test_jdcov_and_ccdcov_match_brute_force(case, extra, c, unbiased, backend, dtype, scale_invariant):
    x, z = case
    g = np.random.default_rng(x.shape[0])
    zs = [z] + [g.random((x.shape[0], 1)) for _ in range(extra - 1)]
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    zts = [torch.tensor(a, dtype=dtype) for a in zs]
    got = joint_distance_covariance_sqr(xt, *zts, c=c, unbiased=unbiased, backend=backend,
                                        scale_invariant=scale_invariant)
    got.backward()
    assert got.dtype == dtype and torch.isfinite(got) and torch.isfinite(xt.grad).all()
    xs64 = [xt.detach().double().numpy()] + [a.double().numpy() for a in zts]
    if scale_invariant:
        scaled = []
        for a in xs64:
            if degenerate(a, unbiased):
                scaled.append(np.zeros_like(a))
            else:
                scaled.append(a / math.sqrt(dcov64(a, a, unbiased)))
        xs64 = scaled
    ref = jdcov64(xs64, c, unbiased)
    span = max(np.abs(centred64(a, unbiased)).max() for a in xs64) + c
    # the output's own rounding, plus float32 sums of O(n^2 (c + span)^d) terms for half inputs
    tol = 4 * EPS[dtype] * abs(ref) + 64 * EPS[torch.promote_types(dtype, torch.float32)] * span ** (extra + 1) * 4
    if scale_invariant and dtype != torch.float64:
        tol += 1e-2 * span ** (extra + 1)  # the scaling itself is computed in the input dtype
    assert abs(got.item() - ref) <= tol + 1e-9
    if not scale_invariant and dtype == torch.float64:
        w = [1.0] + [float(k + 2) for k in range(extra)]
        cc = concatenated_distance_covariance_sqr(xt.detach(), *zts, weights=w[1:], unbiased=unbiased,
                                                  backend=backend)
        zcat = np.concatenate([wk * a for wk, a in zip(w[1:], xs64[1:])], 1)
        assert cc.item() == pytest.approx(dcov64(xs64[0], zcat, unbiased), rel=1e-8, abs=1e-10)


@fuzz(200)
@given(case=dependence_case(min_n=4), measure=st.sampled_from(["dcov", "dcor", "jdcov", "jdcov_scaled",
                                                                "ccdcov"]),
       where=st.sampled_from(["x", "z"]), bad=st.sampled_from([float("nan"), float("inf")]),
       backend=st.sampled_from(["dense", "tiled"]), validate=st.booleans(), data=st.data())
def test_dependence_nonfinite_gives_nonfinite_or_named_error(case, measure, where, bad, backend, validate, data):
    x, z = case
    arr = (x if where == "x" else z).copy()
    arr[data.draw(st.integers(0, arr.shape[0] - 1)), data.draw(st.integers(0, arr.shape[1] - 1))] = bad
    x, z = (arr, z) if where == "x" else (x, arr)
    xt, zt = torch.tensor(x), torch.tensor(z)
    fn = {"dcov": lambda: distance_covariance_sqr(xt, zt, backend=backend, validate_args=validate),
          "dcor": lambda: distance_correlation_sqr(xt, zt, backend=backend, validate_args=validate),
          "jdcov": lambda: joint_distance_covariance_sqr(xt, zt, backend=backend, validate_args=validate),
          "jdcov_scaled": lambda: joint_distance_covariance_sqr(xt, zt, backend=backend, scale_invariant=True,
                                                                validate_args=validate),
          "ccdcov": lambda: concatenated_distance_covariance_sqr(xt, zt, backend=backend,
                                                                 validate_args=validate)}[measure]
    if validate:
        names = {"dcov": ("x", "y"), "dcor": ("x", "y"), "jdcov": ("xs[0]", "xs[1]"),
                 "jdcov_scaled": ("xs[0]", "xs[1]"), "ccdcov": ("pred", "y")}[measure]
        with pytest.raises(ValueError, match=re.escape(f"`{names[0] if where == 'x' else names[1]}` to be finite")):
            fn()
        return
    assert not torch.isfinite(fn())


@fuzz(80)
@given(n=st.integers(1, 40), tile=st.integers(1, 9), d=st.integers(2, 3), c=st.sampled_from([0.0, 1.0]),
       unbiased=st.booleans(), seed=st.integers(0, 2**32 - 1), ties=st.booleans())
def test_ops_backends_agree_with_brute_force_tiles_included(n, tile, d, c, unbiased, seed, ties):
    assume(not unbiased or n >= 4)
    g = np.random.default_rng(seed)
    xs = [g.normal(size=(n, int(g.integers(1, 3)))) for _ in range(d)]
    if ties:
        xs = [np.round(a) for a in xs]
    prod = np.ones((n, n))
    for a in xs:
        prod = prod * (c - centred64(a, unbiased))
    if unbiased:
        np.fill_diagonal(prod, 0.0)
    ref = prod.sum()
    scale = np.prod([np.abs(centred64(a, unbiased)).max() + c + 1e-300 for a in xs]) * n * n
    for backend, kw in (("dense", {}), ("tiled", {"tile": tile})):
        got = ops.product_sum([torch.tensor(a) for a in xs], c, unbiased, backend, **kw).item()
        assert abs(got - ref) <= 1e-11 * scale + 1e-12
    if d == 2 and c == 0.0 and xs[0].shape[1] == 1 and xs[1].shape[1] == 1:
        got = ops.product_sum([torch.tensor(a) for a in xs], 0.0, unbiased, "sorted").item()
        assert abs(got - ref) <= 1e-11 * scale + 1e-12


# -- dependence metrics ------------------------------------------------------------------------------------------
@fuzz(60)
@given(case=dependence_case(min_n=4), cuts=st.lists(st.integers(0, 40), max_size=3),
       metric=st.sampled_from(["DistanceCorrelation", "CCdCov", "JdCov"]))
def test_dependence_metrics_stream_like_the_loss_empty_batches_included(case, cuts, metric):
    import fairret.metric as M
    from fairret.loss import CCdCovLoss, DistanceCorrelationLoss, JdCovLoss
    x, z = case
    n = x.shape[0]
    m = getattr(M, metric)()
    bounds = sorted({min(c, n) for c in cuts} | {0, n})
    for a, b in zip(bounds[:-1] + [n], bounds[1:] + [n]):
        m.update(torch.tensor(x[a:b]), [torch.tensor(z[a:b])])
    loss = {"DistanceCorrelation": DistanceCorrelationLoss(), "CCdCov": CCdCovLoss(), "JdCov": JdCovLoss()}[metric]
    ref = loss(torch.tensor(x), [torch.tensor(z)], pred_as_logit=False)
    torch.testing.assert_close(m.compute(), ref, rtol=1e-9, atol=1e-12)


# -- modality rules ----------------------------------------------------------------------------------------------
@st.composite
def modality_steps(draw):
    m = draw(st.integers(2, 3))
    c = draw(st.sampled_from([1, 3]))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        micro = []
        for _ in range(draw(st.integers(1, 3))):
            n = draw(st.sampled_from([0, 1, 2, 5]))
            scale = draw(st.sampled_from([1.0, 60.0]))  # 60: saturated logits
            logits = [g.normal(size=(n, c)) * scale for _ in range(m)]
            target = g.integers(0, 2 if c == 1 else c, n)
            micro.append((logits, target))
        steps.append(micro)
    return steps


def class_prob64(logits, target):
    if logits.shape[1] == 1:
        p1 = 1 / (1 + np.exp(-logits[:, 0]))
        return np.where(target == 1, p1, 1 - p1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True))[np.arange(len(target)), target]


@fuzz(150)
@given(steps=modality_steps(), alpha=st.floats(0.05, 2.0), momentum=st.floats(0.05, 1.0))
def test_modality_rules_against_their_formulas_empty_steps_skipped(steps, alpha, momentum):
    from fairret.modality import AGM, OGMGE
    ogm, agm = OGMGE(alpha=alpha, noise=False), AGM(alpha=alpha, momentum=momentum)
    running = None
    for k, micro in enumerate(steps):
        for logits, target in micro:
            ts = [torch.tensor(o) for o in logits]
            before = [t.clone() for t in ts]
            ogm.update(ts, torch.tensor(target))
            agm.update(ts, torch.tensor(target))
            assert all(same(b, a) for b, a in zip(before, ts))
        # OGM-GE: s_m = sum of p(y); rho_m = s_m / mean of the others; k = 1 - tanh(alpha rho) where rho > 1
        s = np.array([sum(class_prob64(lg[j], t).sum() for lg, t in micro) for j in range(len(micro[0][0]))])
        others = (s.sum() - s) / (len(s) - 1)
        rho = s / np.maximum(others, 1e-12)
        ref = np.where(rho > 1, 1 - np.tanh(alpha * rho), 1.0)
        np.testing.assert_allclose(ogm.coefficients(k).numpy(), ref, rtol=1e-9, atol=1e-12)
        # AGM: mean cross-entropy per modality, running means over the steps that have rows
        rows = sum(len(t) for _, t in micro)
        k_agm = agm.coefficients(k).numpy()
        assert np.isfinite(k_agm).all()
        if rows == 0:
            assert (k_agm == 1).all()
            continue
        ce = np.array([sum(-np.log(np.maximum(class_prob64(lg[j], t), 1e-12)).sum() for lg, t in micro)
                       for j in range(len(s))]) / rows
        running = ce if running is None else (1 - momentum) * running + momentum * ce

        def rho_of(v):
            return np.exp((v.sum() - v) / (len(v) - 1) - v)

        ref = np.exp(alpha * np.minimum(rho_of(running) - rho_of(ce), 10.0))
        np.testing.assert_allclose(k_agm, ref, rtol=1e-7)


@fuzz(150)
@given(shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["random", "zero_mm", "zero_uni", "opposite", "same"]))
def test_gradient_surgery_is_finite_and_pareto(shapes, seed, kind):
    from fairret.modality import BalGrad, MMPareto
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    b = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    if kind == "zero_mm":
        a = [torch.zeros_like(t) for t in a]
    elif kind == "zero_uni":
        b = [torch.zeros_like(t) for t in b]
    elif kind == "opposite":
        b = [-2 * t for t in a]
    elif kind == "same":
        b = [t.clone() for t in a]
    before = [t.clone() for t in a + b]
    out, (w1, w2) = MMPareto(gamma=1.5).combine(a, b)
    assert all(torch.isfinite(t).all() for t in out) and w1 + w2 == pytest.approx(1.0)
    fa, fb = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b])
    if float(fa.norm() * fb.norm()) > 0 and float(fa @ fb) <= 0:  # conflicting: the min-norm combination
        grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
        norms = torch.stack([(w * fa + (1 - w) * fb).norm() for w in grid])
        assert float((w1 * fa + w2 * fb).norm()) <= float(norms.min()) + 1e-9
    combined, projected = BalGrad().combine(a, b)
    assert all(torch.isfinite(t).all() for t in combined)
    ft = torch.cat([t.reshape(-1) for t in combined]) - fb
    if projected:  # the task gradient no longer conflicts with the KL gradient
        assert float(ft @ fb) >= -1e-9 * (1 + float(fb @ fb))
    assert all(torch.equal(x, y) for x, y in zip(before, a + b))


# -- the sensitive encoder ---------------------------------------------------------------------------------------
@st.composite
def encoder_columns(draw):
    n = draw(st.integers(1, 30))
    g = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = {"cat": "categorical", "bin": "binary", "num": "continuous"}
    cat = g.choice(np.array(["a", "b", "c", "d"], dtype=object), n)
    bin_ = g.choice(np.array([0, 1]), n)
    assume(len(set(bin_.tolist())) == 2)
    num = g.normal(size=n) * draw(st.sampled_from([1.0, 1e6]))
    if draw(st.booleans()):
        num[:] = num[0]  # a constant continuous column
    return kinds, {"cat": cat, "bin": bin_, "num": num}


@fuzz(120)
@given(case=encoder_columns(), scaling=st.sampled_from(["minmax", "standard", "none"]),
       inter=st.booleans(), w=st.floats(0.0, 3.0), nan_where=st.sampled_from([None, "cat", "num"]))
def test_encoder_blocks_are_consistent_and_nan_is_named(case, scaling, inter, w, nan_where):
    from fairret.sensitive import SensitiveEncoder
    kinds, cols = case
    enc = SensitiveEncoder(kinds, intersections=[("cat", "bin")] if inter else [], weights={"cat": w},
                           continuous_scaling=scaling)
    if nan_where is not None:
        bad = {k: v.copy() for k, v in cols.items()}
        bad[nan_where] = bad[nan_where].astype(object if nan_where == "cat" else float)
        bad[nan_where][0] = float("nan")
        with pytest.raises(ValueError, match=f"`{nan_where}`"):
            enc.fit(bad)
        return
    out = enc.fit_transform(cols, dtype=torch.float64)
    assert torch.isfinite(out.matrix).all() and out.matrix.shape[0] == len(cols["cat"])
    for blk in out.blocks:
        m = out.matrix[:, blk.columns]
        if blk.kind in ("categorical", "intersection"):
            expect = torch.full((m.shape[0],), blk.weight, dtype=torch.float64)
            torch.testing.assert_close(m.sum(1), expect)  # one cell per row on the fitting data
            ids = out.group_ids[blk.name]
            if blk.weight > 0:
                assert torch.equal(m.argmax(1), ids)
        elif blk.kind == "continuous" and scaling == "minmax":
            assert float(m.min()) >= -1e-12 and float(m.max()) <= 1 + 1e-12
    # values unseen when fitting: code -1 and an all-zero row
    other = {"cat": np.array(["zzz"], dtype=object), "bin": np.array([1]), "num": np.array([0.0])}
    new = enc.transform(other, dtype=torch.float64)
    assert int(new.group_ids["cat"][0]) == -1 and float(new.matrix[:, out.block("cat").columns].abs().sum()) == 0


# -- the intersectional JSD report ------------------------------------------------------------------------------
@fuzz(100)
@given(n=st.integers(1, 80), g_cells=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       form=st.sampled_from(["ids", "onehot"]), bandwidth=st.sampled_from([0.05, 0.15, 1.0]),
       weights=st.sampled_from(["cell", "equal"]), ties=st.booleans())
def test_intersectional_jsd_bounds_and_ignored_rows(n, g_cells, seed, form, bandwidth, weights, ties):
    from fairret.functional.calibration import intersectional_jsd
    from fairret.sensitive import one_hot_groups
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, generator=g, dtype=torch.float64)
    if ties:
        p = (p * 3).round() / 3
    ids = torch.randint(-1, g_cells, (n,), generator=g)
    cells = ids if form == "ids" else one_hot_groups(ids, g_cells, torch.float64)
    val = intersectional_jsd(p, cells, bandwidth=bandwidth, grid=200, weights=weights).item()
    present = int(torch.unique(ids[ids >= 0]).numel())
    assert -1e-12 <= val <= math.log2(max(present, 1)) + 1e-9
    keep = ids >= 0
    if keep.any():
        ref = intersectional_jsd(p[keep], ids[keep], bandwidth=bandwidth, grid=200, weights=weights).item()
        assert val == pytest.approx(ref, abs=1e-12)
    bad = p.clone()
    bad[int(torch.randint(0, n, (1,), generator=g))] = float("nan")
    with pytest.raises(ValueError, match="`pred` to be finite"):
        intersectional_jsd(bad, cells)


# -- quantization entry points -----------------------------------------------------------------------------------
@fuzz(100)
@given(d_out=st.integers(1, 6), d_in=st.integers(1, 12), rows=st.integers(1, 40), dead=st.integers(0, 2),
       bits=st.integers(2, 8), group=st.integers(0, 13), sym=st.booleans(), act_order=st.booleans(),
       static=st.booleans(), block=st.integers(1, 14), seed=st.integers(0, 2**32 - 1),
       damp=st.sampled_from([0.01, 0.1]))
def test_gptq_codes_dequantize_to_the_weights_it_returns(d_out, d_in, rows, dead, bits, group, sym, act_order,
                                                         static, block, seed, damp):
    """The contract of gptq_quantize on valid input: integer codes in [0, 2^b - 1] that dequantize (per-group
    scale and zero through g_idx) to the returned weights, dead input columns zeroed, everything finite; and
    HessianAccumulator's H against a float64 formula. Invalid input is pinned in test_quant_validation.py."""
    from fairret.quant import HessianAccumulator, gptq_quantize
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g)
    X = torch.randn(rows, d_in, generator=g)
    X[:, : min(dead, d_in)] = 0.0  # dead input columns: H_jj = 0
    mask = torch.rand(rows, generator=g) < 0.8
    acc = HessianAccumulator(d_in)
    acc.add(X[: rows // 2], mask[: rows // 2])
    acc.add(X[rows // 2:], mask[rows // 2:])
    kept = X[mask].double()
    ref_h = 2.0 / kept.shape[0] * kept.T @ kept if kept.shape[0] else torch.zeros(d_in, d_in, dtype=torch.float64)
    torch.testing.assert_close(acc.H, ref_h, rtol=1e-12, atol=1e-12)
    gs = -1 if group == 0 else min(group, d_in)
    Wc = W.clone()
    res = gptq_quantize(W, acc.H, bits=bits, group_size=gs, sym=sym, act_order=act_order, static_groups=static,
                        damp=damp, block_size=block)
    assert torch.equal(W, Wc)
    q = res.qweight.long()
    assert int(q.min()) >= 0 and int(q.max()) <= 2 ** bits - 1
    gi = res.g_idx.long()
    deq = res.scales[:, gi] * (q.double() - res.zeros[:, gi])
    torch.testing.assert_close(res.weight.double(), deq, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(res.weight).all() and torch.isfinite(res.scales).all()
    dead_cols = torch.diag(acc.H) == 0  # no calibration signal: the weight is 0, and 0 quantizes exactly
    assert bool((res.weight[:, dead_cols] == 0).all())

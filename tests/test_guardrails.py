"""Guardrails (issue 24): the prediction convention, warnings for sens that cannot be groups, and
SensitiveAttributes accepted (and sliced) everywhere with one meaning."""
import warnings

import numpy as np
import pytest
import torch

from fairret._validation import PredictionWarning, SensitiveGroupsWarning
from fairret.loss import KLProjectionLoss, LSELoss, NormLoss
from fairret.metric import LinearFractionalParity, gap_max_min
from fairret.sensitive import SensitiveEncoder
from fairret.statistic import EqualizedOdds, MeanPrediction, PositiveRate


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, generator=g, dtype=torch.float64) * 2
    sex = torch.randint(0, 2, (n,), generator=g)
    y = torch.randint(0, 2, (n, 1), generator=g).double()
    onehot = torch.stack([1 - sex, sex], dim=1).double()
    return logits, sex, onehot, y


RATE_LOSSES = [lambda: NormLoss(PositiveRate()), lambda: LSELoss(PositiveRate()),
               lambda: KLProjectionLoss(PositiveRate())]


@pytest.mark.parametrize("make", RATE_LOSSES)
def test_rate_losses_warn_for_one_group(make):
    logits, sex, onehot, _ = data()
    with pytest.warns(SensitiveGroupsWarning, match=r"shape \(N,\).*torch.stack\(\[1 - s, s\]"):
        make()(logits, sex.double())
    with pytest.warns(SensitiveGroupsWarning, match="single column.*SensitiveAttributes itself"):
        make()(logits, sex.double().unsqueeze(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none on valid input, values read too
        make()(logits, onehot)
        type(make())(PositiveRate(), validate_args=True)(logits, onehot)


@pytest.mark.parametrize("make", RATE_LOSSES)
def test_rate_losses_warn_for_continuous_columns_when_reading_values(make):
    logits, _, onehot, _ = data()
    age = torch.rand(logits.shape[0], 1, dtype=torch.float64)
    sens = torch.cat([onehot, age], dim=1)
    loss = type(make())(PositiveRate(), validate_args=True)
    with pytest.warns(SensitiveGroupsWarning, match=r"columns \[2\] .* not group indicators"):
        loss(logits, sens)
    with warnings.catch_warnings():  # validate_args off: no data read, no warning (and no host sync)
        warnings.simplefilter("error")
        make()(logits, sens)
    with warnings.catch_warnings():  # weighted indicators (0 and one weight per column) are groups
        warnings.simplefilter("error")
        loss(logits, onehot * torch.tensor([2.0, 0.5], dtype=torch.float64))


def test_metric_guardrails():
    logits, sex, onehot, _ = data()
    m = LinearFractionalParity(PositiveRate(), 1, pred_as_logit=True)
    with pytest.warns(SensitiveGroupsWarning, match="single column"):
        m.update(logits, sex.double().unsqueeze(1))
    m = LinearFractionalParity(PositiveRate(), 3, pred_as_logit=True)
    with pytest.warns(SensitiveGroupsWarning, match="not group indicators"):  # first update reads the values
        m.update(logits, torch.cat([onehot, torch.rand(len(sex), 1, dtype=torch.float64)], 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LinearFractionalParity(PositiveRate(), 2, pred_as_logit=True)
        m.update(logits, onehot)
        m.compute()


def test_binary_encoding_gives_both_groups_to_rate_losses():
    logits, sex, onehot, _ = data()
    sa = SensitiveEncoder({"sex": "binary"}).fit_transform({"sex": sex.numpy()})
    assert sa.matrix.shape[1] == 1 and sa.group_matrix().shape[1] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = NormLoss(PositiveRate())(logits, sa.to(torch.float64))
    assert torch.allclose(got, NormLoss(PositiveRate())(logits, onehot))
    with pytest.warns(SensitiveGroupsWarning, match="single column"):  # its `matrix` is one group only
        NormLoss(PositiveRate())(logits, sa.matrix)


def test_continuous_blocks_left_out_of_rate_losses_with_a_warning():
    logits, sex, onehot, _ = data()
    age = np.random.default_rng(0).uniform(20, 60, len(sex))
    sa = SensitiveEncoder({"sex": "binary", "age": "continuous"}).fit_transform({"sex": sex.numpy(), "age": age})
    with pytest.warns(SensitiveGroupsWarning, match=r"continuous attributes \['age'\].*sens.select"):
        got = NormLoss(PositiveRate())(logits, sa)
    assert torch.allclose(got, NormLoss(PositiveRate())(logits, onehot.float()).double(), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NormLoss(PositiveRate())(logits, sa.select(["sex"]))
    with pytest.raises(ValueError, match="Attribute `age` is continuous"):
        sa.group_matrix(["age"])


def test_metric_prediction_convention():
    logits, _, onehot, y = data(200)
    prob = torch.sigmoid(logits)
    ref = LinearFractionalParity(EqualizedOdds(), (2, 2), gap_fn=gap_max_min, pred_as_logit=False)
    ref.update(prob, onehot, y)
    # None decides from the values: logits are read as logits (the 0.1.3 metric took them as probabilities)
    auto = LinearFractionalParity(EqualizedOdds(), (2, 2), gap_fn=gap_max_min)
    with pytest.warns(PredictionWarning, match="read as logits.*pred_as_logit=True"):
        auto.update(logits, onehot, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per metric
        auto.update(logits, onehot, y)
    ref.update(prob, onehot, y)
    assert torch.allclose(auto.compute(), ref.compute())
    # explicit True: no warning, same values; probabilities with None: taken as given, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LinearFractionalParity(EqualizedOdds(), (2, 2), gap_fn=gap_max_min, pred_as_logit=True)
        m.update(logits, onehot, y)
        m2 = LinearFractionalParity(EqualizedOdds(), (2, 2), gap_fn=gap_max_min)
        m2.update(prob, onehot, y)
        assert torch.allclose(m.compute(), m2.compute())
    # explicit False contradicted by the values
    m = LinearFractionalParity(PositiveRate(), 2, pred_as_logit=False)
    with pytest.warns(PredictionWarning, match=r"outside \[0, 1\].*pred_as_logit=True"):
        m.update(logits, onehot)
    # regression outputs with MeanPrediction are taken as given
    out = logits * 10 + 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LinearFractionalParity(MeanPrediction(), 2, gap_fn=gap_max_min)
        m.update(out, onehot)
    means = [out[onehot[:, k] == 1].mean() for k in range(2)]
    assert torch.isclose(m.compute().double(), (means[0] - means[1]).abs(), atol=1e-4)
    with pytest.raises(TypeError, match="Expected argument `pred_as_logit`"):
        LinearFractionalParity(PositiveRate(), 2, pred_as_logit="yes")


def test_sensitive_attributes_indexing_and_to():
    rng = np.random.default_rng(0)
    n = 10
    sa = SensitiveEncoder({"race": "categorical", "sex": "binary", "age": "continuous"},
                          intersections=[("race", "sex")]).fit_transform(
        {"race": rng.choice(["a", "b", "c"], n), "sex": np.array(["F", "M"] * (n // 2)), "age": rng.uniform(0, 1, n)})
    for idx in (slice(2, 7), torch.tensor([0, 3, 3, 9]), [1, 4], np.array([5, 0]), torch.arange(n) % 2 == 0):
        sub = sa[idx]
        t = idx if isinstance(idx, (slice, torch.Tensor)) else torch.as_tensor(idx)
        assert torch.equal(sub.matrix, sa.matrix[t])
        assert all(torch.equal(sub.group_ids[k], v[t]) for k, v in sa.group_ids.items())
        assert sub.blocks == sa.blocks and sub.column_names == sa.column_names
        assert torch.equal(sub.group_matrix(), sa.group_matrix()[t])
    assert len(sa[3]) == 1 and torch.equal(sa[-1].matrix, sa.matrix[-1:])
    with pytest.raises(IndexError, match="out of range"):
        sa[n]
    with pytest.raises(IndexError, match="rows only"):
        sa[0, 1]
    d = sa.to(torch.float64)
    assert d.matrix.dtype == torch.float64 and d.group_matrix().dtype == torch.float64 and d.shape == sa.shape


def test_sensitive_attributes_same_meaning_in_losses_and_metric():
    """Batches sliced from a SensitiveAttributes give every rate loss and the metric what its group matrix gives."""
    rng = np.random.default_rng(1)
    n = 80
    sa = SensitiveEncoder({"race": "categorical", "sex": "binary"}, weights={"race": 0.5}).fit_transform(
        {"race": rng.choice(["a", "b", "c"], n), "sex": rng.choice(["F", "M"], n)})
    logits = torch.randn(n, 1)
    y = torch.randint(0, 2, (n, 1)).float()
    batch = torch.arange(0, n, 2)
    gm = sa.group_matrix()[batch]
    assert gm.shape[1] == 5 and torch.allclose(gm[:, :3].sum(1), torch.full((len(batch),), 0.5))
    for loss in (NormLoss(EqualizedOdds()), LSELoss(EqualizedOdds()), KLProjectionLoss(EqualizedOdds())):
        assert torch.allclose(loss(logits[batch], sa[batch], y[batch]), loss(logits[batch], gm, y[batch]))
    m1 = LinearFractionalParity(EqualizedOdds(), (2, 5), pred_as_logit=True)
    m2 = LinearFractionalParity(EqualizedOdds(), (2, 5), pred_as_logit=True)
    for start in range(0, n, 16):
        rows = slice(start, start + 16)
        m1.update(logits[rows], sa[rows], y[rows])
        m2.update(logits[rows], sa.group_matrix()[rows], y[rows])
    assert torch.allclose(m1.compute(), m2.compute()) and torch.allclose(m1.compute_per_group(),
                                                                         m2.compute_per_group(), equal_nan=True)
    assert torch.allclose(PositiveRate()(torch.sigmoid(logits), sa), PositiveRate()(torch.sigmoid(logits),
                                                                                   sa.group_matrix()))


def test_intersectional_jsd_takes_sensitive_attributes():
    from fairret.metric import IntersectionalJSD

    rng = np.random.default_rng(2)
    n = 60
    cols = {"race": rng.choice(["a", "b"], n), "sex": np.array(["F", "M"] * (n // 2))}
    sa = SensitiveEncoder({"race": "categorical", "sex": "binary"}, intersections=[("race", "sex")]).fit_transform(cols)
    prob = torch.rand(n)
    m1, m2 = IntersectionalJSD(grid=200), IntersectionalJSD(grid=200)
    m1.update(prob, sa)
    m2.update(prob, sa.group_ids["race&sex"])
    assert torch.equal(m1.compute(), m2.compute())
    with pytest.raises(ValueError, match="exactly one intersection block"):
        IntersectionalJSD().update(prob, sa.select(["race", "sex"]))

"""Violation losses: fairret 0.1.3 values, hand-checked edge cases, gradients, compile-ability."""
import json
from pathlib import Path

import pytest
import torch

from fairret.loss import LSELoss, NormLoss
from fairret.statistic import (FalsePositiveRate, PositiveRate, StackedLinearFractionalStatistic,
                               TruePositiveRate)
from test_statistic import STATS_013, golden_inputs

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_fairret013.json").read_text())


@pytest.mark.parametrize("name", list(STATS_013))
@pytest.mark.parametrize("kind", ["NormLoss", "NormLoss_p2", "LSELoss"])
def test_values_match_fairret_013(name, kind):
    logits, label, sens = golden_inputs()
    stat = STATS_013[name]()
    loss = {"NormLoss": lambda: NormLoss(stat), "NormLoss_p2": lambda: NormLoss(stat, p=2),
            "LSELoss": lambda: LSELoss(stat)}[kind]()
    args = () if name == "PositiveRate" else (label,)
    # 0.1.3 subtracts log(S) computed in float32, hence the looser tolerance for LSELoss
    rel = 1e-6 if kind == "LSELoss" else 1e-10
    assert loss(logits, sens, *args).item() == pytest.approx(GOLDEN[kind][name], rel=rel)


def test_hand_checked_value():
    # group rates 0.4 and 0.6, overall 0.5: violations 0.2 and 0.2
    pred = torch.tensor([[0.2], [0.6], [0.4], [0.8]])
    sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    assert NormLoss(PositiveRate())(pred, sens, pred_as_logit=False).item() == pytest.approx(0.4)
    assert NormLoss(PositiveRate(), p=2)(pred, sens, pred_as_logit=False).item() == pytest.approx(0.2 * 2**0.5)
    lse = torch.logsumexp(torch.tensor([0.2, 0.2]), 0) - torch.log(torch.tensor(2.0))
    assert LSELoss(PositiveRate())(pred, sens, pred_as_logit=False).item() == pytest.approx(lse.item())


@pytest.mark.parametrize("loss_fn", [lambda s: NormLoss(s), lambda s: NormLoss(s, p=2), lambda s: LSELoss(s)])
def test_gradcheck(loss_fn):
    logits, label, sens = golden_inputs()
    logits = logits[:20].clone().requires_grad_(True)
    eo = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
    # the default target is held constant (detached), so gradcheck needs an explicit constant target
    target = eo.overall_statistic(torch.sigmoid(logits.detach()), label[:20])
    f = lambda x: loss_fn(eo)(x, sens[:20], label[:20], target_statistic=target)  # noqa: E731
    assert torch.autograd.gradcheck(f, (logits,))


def test_target_is_detached():
    logits, label, sens = golden_inputs()
    x = logits.clone().requires_grad_(True)
    loss = NormLoss(PositiveRate())(x, sens)
    (g,) = torch.autograd.grad(loss, x)
    # reference: the same loss with the target computed outside autograd
    p = torch.sigmoid(x)
    target = PositiveRate().overall_statistic(p.detach())
    ref = ((PositiveRate()(p, sens) / target - 1).abs()).sum()
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g, g_ref)


def test_zero_target_uses_absolute_gap_with_finite_gradient():
    pred = torch.tensor([[0.0], [0.2], [0.0], [0.0]], requires_grad=True)
    sens = torch.tensor([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    loss = NormLoss(PositiveRate())(pred, sens, pred_as_logit=False, target_statistic=0.0)
    assert loss.item() == pytest.approx(0.1)  # |0.1 - 0| + |0 - 0|
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_absent_group_contributes_nothing_and_keeps_gradients_finite():
    torch.manual_seed(0)
    x = torch.randn(6, 1, requires_grad=True)
    sens3 = torch.tensor([[1., 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]])
    for loss in (NormLoss(PositiveRate()), NormLoss(PositiveRate(), p=2)):
        full = loss(x, sens3)
        present = loss(x, sens3[:, :2])
        assert full.item() == pytest.approx(present.item())
        (g,) = torch.autograd.grad(full, x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_degenerate_batches():
    sens = torch.tensor([[1., 0.], [1., 0.], [1., 0.]])
    x = torch.randn(3, 1, requires_grad=True)
    # single-group batch: the group statistic is the overall one
    assert NormLoss(PositiveRate())(x, sens).item() == pytest.approx(0.0, abs=1e-7)
    # all-equal predictions: no violation, zero gradient
    same = torch.zeros(4, 1, requires_grad=True)
    sens2 = torch.tensor([[1., 0.], [0., 1.], [1., 0.], [0., 1.]])
    for loss in (NormLoss(PositiveRate(), p=2), LSELoss(PositiveRate())):
        val = loss(same, sens2)
        (g,) = torch.autograd.grad(val, same)
        assert val.item() == pytest.approx(0.0, abs=1e-7) and torch.isfinite(g).all()
    # TPR in a group without positives: undefined, contributes nothing
    label = torch.tensor([[1.], [0.], [1.], [0.]])
    sens3 = torch.tensor([[1., 0.], [0., 1.], [1., 0.], [0., 1.]])
    assert NormLoss(TruePositiveRate())(torch.randn(4, 1), sens3, label).item() == pytest.approx(0.0, abs=1e-7)


def test_momentum_one_equals_batch_and_running_average():
    torch.manual_seed(1)
    x = torch.randn(32, 1)
    sens = torch.nn.functional.one_hot(torch.randint(0, 3, (32,)), 3).float()
    assert NormLoss(PositiveRate(), momentum=1.0)(x, sens).item() == pytest.approx(
        NormLoss(PositiveRate())(x, sens).item(), rel=1e-6)
    loss = NormLoss(PositiveRate(), momentum=0.5)
    x2 = torch.randn(32, 1)
    loss(x, sens)
    val = loss(x2, sens)
    p1, p2 = torch.sigmoid(x), torch.sigmoid(x2)
    target = 0.5 * p1.mean() + 0.5 * p2.mean()
    den = 0.5 * sens.mean(0) + 0.5 * sens.mean(0)
    stats = (p2 * sens).sum(0) / (32 * den)
    assert val.item() == pytest.approx((stats / target - 1).abs().sum().item(), rel=1e-5)
    assert loss.running_target is not None and "running_denom" in loss.state_dict()


def test_multiclass_loss_is_per_class_sum():
    torch.manual_seed(2)
    logits = torch.randn(40, 3)
    label = torch.randint(0, 3, (40,))
    sens = torch.nn.functional.one_hot(torch.randint(0, 2, (40,)), 2).float()
    probs = torch.softmax(logits, 1)
    total = NormLoss(TruePositiveRate())(logits, sens, label)
    per_class = sum(NormLoss(TruePositiveRate())(probs[:, c:c + 1], sens, (label == c).float()[:, None],
                                                   pred_as_logit=False) for c in range(3))
    assert total.item() == pytest.approx(per_class.item(), rel=1e-5)


def test_errors():
    with pytest.raises(TypeError, match=r"Expected argument `statistic` to be a fairret Statistic"):
        NormLoss("PositiveRate")
    with pytest.raises(ValueError, match=r"Expected argument `p` to be a number >= 1"):
        NormLoss(PositiveRate(), p=0.5)
    with pytest.raises(ValueError, match=r"Expected argument `momentum`"):
        NormLoss(PositiveRate(), momentum=1.5)
    with pytest.raises(ValueError, match=r"Expected argument `pred` to be finite"):
        NormLoss(PositiveRate(), validate_args=True)(torch.tensor([[float("nan")], [0.0]]), torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"Expected argument `sens` to be a \(N, S\) tensor, but got None"):
        NormLoss(PositiveRate())(torch.zeros(2, 1), None)


def test_no_graph_breaks_under_compile():
    loss = NormLoss(StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()), p=2)
    x, label = torch.randn(16, 1), (torch.rand(16, 1) < 0.5).float()
    sens = torch.nn.functional.one_hot(torch.arange(16) % 3, 3).float()
    compiled = torch.compile(lambda a, b, c: loss(a, b, c), fullgraph=True, backend="eager")
    assert compiled(x, sens, label).item() == pytest.approx(loss(x, sens, label).item(), rel=1e-6)


def test_one_call_contract_for_every_loss():
    import inspect

    import fairret.loss as L
    from fairret.statistic import EqualizedOdds

    for name in L.__all__:
        cls = getattr(L, name)
        params = inspect.signature(cls.forward).parameters
        kinds = [p.kind for p in params.values()]
        assert list(params)[:3] == ["self", "pred", "sens"], name
        assert inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD in kinds, name
        assert params["pred_as_logit"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params["pred_as_logit"].default is True, name
    assert L.NormLoss(TruePositiveRate()).requires_labels and L.KLProjectionLoss(EqualizedOdds()).requires_labels
    assert not L.LSELoss(PositiveRate()).requires_labels
    for dep in (L.DistanceCovarianceLoss(), L.DistanceCorrelationLoss(), L.JdCovLoss(), L.CCdCovLoss()):
        assert not dep.requires_labels
    x, z = torch.randn(8, 1), torch.randint(0, 2, (8, 1)).float()
    with pytest.raises(TypeError, match=r"CCdCovLoss takes no statistic arguments \(labels\) after `sens`.*\(Tensor\)"):
        L.CCdCovLoss()(x, z, z)
    with pytest.raises(TypeError, match=r"JdCovLoss takes no statistic arguments.*\(label=...\)"):
        L.JdCovLoss()(x, z, label=z)
    assert L.CCdCovLoss()(torch.sigmoid(x), z, pred_as_logit=False).item() == pytest.approx(L.CCdCovLoss()(x, z).item())
    for cls in (L.DistanceCorrelationLoss, L.CCdCovLoss):
        with pytest.raises(ValueError, match=r"Expected argument `backend` to be one of \('auto', 'dense', 'tiled'"):
            cls(backend="fast")


def test_validate_args_has_one_default_everywhere():
    # one documented default (off: value checks synchronise with the device) for functionals, losses and metrics
    import inspect

    import fairret.functional as FN
    import fairret.loss as L
    import fairret.metric as M

    found = []
    for module in (FN, L, M):
        for name in module.__all__:
            obj = getattr(module, name)
            target = obj.__init__ if inspect.isclass(obj) else obj
            if not callable(target):
                continue
            param = inspect.signature(target).parameters.get("validate_args")
            if param is None and inspect.isclass(obj):  # losses pass it on through **kwargs
                for base in obj.__mro__[1:]:
                    param = inspect.signature(base.__init__).parameters.get("validate_args")
                    if param is not None:
                        break
            if param is not None:
                found.append(name)
                assert param.default is False, name
    assert {"distance_covariance_sqr", "concatenated_distance_covariance_sqr", "NormLoss", "KLProjectionLoss",
            "CCdCovLoss", "JdCovLoss", "LinearFractionalParity", "CCdCov", "DistanceCorrelation"} <= set(found)


def test_validate_args_catches_non_finite_values():
    from fairret.functional import distance_correlation_sqr
    from fairret.loss import CCdCovLoss
    from fairret.metric import CCdCov, LinearFractionalParity

    x = torch.tensor([[0.1], [float("nan")], [0.3], [0.7], [0.9]])
    z = torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0]])
    s = torch.cat([z, 1 - z], 1)
    for check in (lambda v: NormLoss(PositiveRate(), validate_args=v)(x, s),
                  lambda v: CCdCovLoss(validate_args=v)(x, z),
                  lambda v: distance_correlation_sqr(x, z, validate_args=v),
                  lambda v: LinearFractionalParity(PositiveRate(), 2, validate_args=v).update(x, s)):
        check(False)  # off: no check, no error (what the value is then is the non-finite policy's business)
        with pytest.raises(ValueError, match=r"Expected argument `(pred|x)` to be finite"):
            check(True)
    m = CCdCov(validate_args=True)
    m.update(x, z)  # the dependence metrics check once, at compute
    with pytest.raises(ValueError, match=r"Expected argument `pred` to be finite"):
        m.compute()

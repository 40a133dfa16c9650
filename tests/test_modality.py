"""Modality balance: rules against hand-computed coefficients, appliers, the plain API, and the Lightning callback
(gradients after the callback, accumulation, AMP, DDP, resume)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairret.modality import (AGM, OGMGE, BalGrad, MMPareto, ModalityBalancer, balgrad_backward,
                              linear_head_slices, min_norm_weights, mmpareto_backward, noise_generator, scale_grad,
                              shapley_contributions)
from fairret.modality.apply import gradient_std, gradient_stds


# --- scores ---------------------------------------------------------------------------------------------------------
def test_linear_head_slices_sum_to_the_fused_output_and_validate():
    head = torch.nn.Linear(7, 3)
    feats = [torch.randn(5, 3), torch.randn(5, 4)]
    parts = linear_head_slices(head, feats)
    torch.testing.assert_close(parts[0] + parts[1], head(torch.cat(feats, 1)))
    torch.testing.assert_close(parts[0], feats[0] @ head.weight[:, :3].T + head.bias / 2)
    with pytest.raises(ValueError, match=r"widths \[3, 3\] to add up to the head's in_features=7"):
        linear_head_slices(head, [feats[0], feats[0]])
    with pytest.raises(TypeError, match="torch.nn.Linear fusion head"):
        linear_head_slices(torch.nn.Conv1d(1, 1, 1), feats)


def test_shapley_contributions_two_modalities_closed_form_and_efficiency():
    w = torch.randn(2, 3)

    def f(a, v):  # an interaction term, so that Shapley differs from the marginal gains
        return torch.tanh(a @ w) * (1 + v.sum(1, keepdim=True)) + v

    a, v = torch.randn(4, 2), torch.randn(4, 3)
    empty, (pa, pv) = shapley_contributions(f, [a, v])
    za, zv = torch.zeros_like(a), torch.zeros_like(v)
    torch.testing.assert_close(pa, 0.5 * (f(a, v) - f(za, v) + f(a, zv) - f(za, zv)))
    torch.testing.assert_close(empty + pa + pv, f(a, v))
    # three modalities: efficiency, and symmetry for an additive function
    g = lambda x, y, z: 2 * x + 3 * y - z  # noqa: E731
    xs = [torch.randn(3, 2) for _ in range(3)]
    e3, ph = shapley_contributions(g, xs)
    torch.testing.assert_close(e3 + sum(ph), g(*xs))
    torch.testing.assert_close(ph[1], 3 * xs[1])


# --- rules ------------------------------------------------------------------------------------------------------------
def _true_probs(logits, y):
    return torch.softmax(logits.double(), 1).gather(1, y.view(-1, 1)).squeeze(1)


def test_ogmge_coefficients_by_hand_two_and_three_modalities():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (8,), generator=g)
    logits = [torch.randn(8, 3, generator=g) * s for s in (3.0, 1.0, 0.5)]
    s = torch.stack([_true_probs(o, y).sum() for o in logits])
    for m in (2, 3):
        rule = OGMGE(alpha=0.3)
        rule.update(logits[:m], y)
        k = rule.coefficients(0)
        ss = s[:m]
        for i in range(m):
            rho = ss[i] / ((ss.sum() - ss[i]) / (m - 1))
            expected = 1 - math.tanh(0.3 * rho.item()) if rho > 1 else 1.0
            assert k[i].item() == pytest.approx(expected, rel=1e-12)
    # micro-batches pool: two halves give the coefficients of the whole batch
    rule = OGMGE(alpha=0.3)
    rule.update([o[:5] for o in logits[:2]], y[:5])
    rule.update([o[5:] for o in logits[:2]], y[5:])
    whole = OGMGE(alpha=0.3)
    whole.update(logits[:2], y)
    torch.testing.assert_close(rule.coefficients(0), whole.coefficients(0))
    # outside the modulation window: ones
    late = OGMGE(alpha=0.3, start_step=5)
    late.update(logits[:2], y)
    assert late.coefficients(2).tolist() == [1.0, 1.0]


def test_agm_coefficients_by_hand_over_two_steps():
    y = torch.tensor([0, 1, 1, 0, 1])
    g = torch.Generator().manual_seed(1)
    steps = [[torch.randn(5, 2, generator=g) * 2, torch.randn(5, 2, generator=g)] for _ in range(2)]
    rule = AGM(alpha=0.7, momentum=0.25)
    running = None
    for phis in steps:
        rule.update(phis, y)
        k = rule.coefficients(0)
        s = torch.stack([-_true_probs(p, y).log().mean() for p in phis])
        running = s.clone() if running is None else 0.75 * running + 0.25 * s
        rho = torch.exp(s.flip(0) - s)
        rho_bar = torch.exp(running.flip(0) - running)
        expected = torch.exp(0.7 * torch.clamp(rho_bar - rho, max=10.0))
        torch.testing.assert_close(k, expected, rtol=1e-12, atol=1e-12)
    assert k[0].item() != pytest.approx(1.0)  # the second step is not a trivial all-ones case


def test_min_norm_weights_match_a_grid_search():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        a, b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
        w, _ = min_norm_weights(a, b)
        grid = torch.linspace(0, 1, 10001, dtype=torch.float64)
        norms = torch.stack([(t * a + (1 - t) * b).norm() for t in grid])
        assert (w * a + (1 - w) * b).norm().item() <= norms.min().item() + 1e-9
    assert min_norm_weights(torch.ones(3), torch.ones(3)) == (0.5, 0.5)


def test_mmpareto_combine_agreeing_conflicting_and_zero():
    rule = MMPareto(gamma=1.5)
    a, b = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]  # cos > 0: equal weights, no rescale needed
    out, w = rule.combine(a, b)
    assert w == (0.5, 0.5)
    torch.testing.assert_close(out[0], 1.5 * (a[0] + b[0]))
    a, b = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 0.5])]  # conflict: min-norm weights, rescaled
    out, w = rule.combine(a, b)
    w1, w2 = min_norm_weights(a[0].double(), b[0].double())
    assert w == pytest.approx((w1, w2))
    new = 2 * (w1 * a[0] + w2 * b[0])
    total = (a[0] + b[0]).norm()
    expected = new * (total / new.norm() if total > new.norm() else 1.0) * 1.5
    torch.testing.assert_close(out[0], expected)
    zero, _ = rule.combine([torch.zeros(3)], [torch.zeros(3)])
    assert torch.equal(zero[0], torch.zeros(3))


def test_balgrad_projection_and_kl_weights():
    rule = BalGrad()
    gt, gk = [torch.tensor([1.0, -2.0])], [torch.tensor([0.0, 1.0])]
    out, projected = rule.combine(gt, gk)
    assert projected
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0]) + gk[0])  # conflicting component removed
    out, projected = BalGrad(project=False).combine(gt, gk)
    assert not projected and torch.equal(out[0], gt[0] + gk[0])
    # KL by hand: weights (1 - share) normalised, each modality pulled toward the other's (detached) prediction
    y = torch.tensor([0, 1])
    strong = torch.tensor([[5.0, -5.0], [-5.0, 5.0]], dtype=torch.float64)
    weak = torch.tensor([[0.1, 0.0], [0.0, 0.1]], dtype=torch.float64)
    ps, pw = torch.softmax(strong, 1), torch.softmax(weak, 1)
    share = torch.stack([_true_probs(strong, y).sum(), _true_probs(weak, y).sum()])
    share = share / share.sum()
    w = (1 - share) / (1 - share).sum()
    kl = lambda p, q: (p * (p.log() - q.log())).sum(1).mean()  # noqa: E731
    expected = w[0] * kl(pw, ps) + w[1] * kl(ps, pw)
    assert w[1] > w[0]  # the weaker modality gets the larger weight
    assert BalGrad(kl_weight=2.0).kl_loss([strong, weak], y).item() == pytest.approx(2 * expected.item(), rel=1e-10)


def test_rules_validate_hyper_parameters():
    with pytest.raises(ValueError, match="`alpha` to be a finite number > 0"):
        OGMGE(alpha=0)
    with pytest.raises(ValueError, match="`end_step` to be None or an int > start_step"):
        OGMGE(start_step=5, end_step=5)
    with pytest.raises(ValueError, match="`momentum` in \\(0, 1\\]"):
        AGM(momentum=0)
    with pytest.raises(ValueError, match="`gamma` to be a finite number > 0"):
        MMPareto(gamma=-1)
    with pytest.raises(RuntimeError, match="before any update"):
        OGMGE().coefficients(0)


# --- appliers and the plain API ------------------------------------------------------------------------------------------
class TwoModal(torch.nn.Module):
    def __init__(self, da=3, dv=4, h=5, c=2):
        super().__init__()
        torch.manual_seed(0)
        self.audio = torch.nn.Sequential(torch.nn.Linear(da, h), torch.nn.ReLU())
        self.video = torch.nn.Sequential(torch.nn.Linear(dv, h), torch.nn.ReLU())
        self.head = torch.nn.Linear(2 * h, c)

    def features(self, xa, xv):
        return self.audio(xa), self.video(xv)

    def forward(self, xa, xv):
        return self.head(torch.cat(self.features(xa, xv), 1))


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    xa = torch.randn(n, 3, generator=g) + 2.0 * y.unsqueeze(1)  # audio: a strong modality
    xv = torch.randn(n, 4, generator=g) + 0.3 * y.unsqueeze(1)
    return xa, xv, y


def test_scale_grad():
    x = torch.randn(4, requires_grad=True)
    (scale_grad(x, torch.tensor(0.5)) * 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), 1.5))


def test_balancer_apply_scales_groups_and_head_slices():
    model = TwoModal()
    xa, xv, y = _data()
    bal = ModalityBalancer(OGMGE(alpha=0.5, noise=False),
                           {"audio": model.audio.parameters(), "video": model.video.parameters()},
                           head_slices={"audio": [(model.head.weight, slice(0, 5))],
                                        "video": [(model.head.weight, slice(5, 10))]})
    fa, fv = model.features(xa, xv)
    bal.update(linear_head_slices(model.head, [fa, fv]), y)
    torch.nn.functional.cross_entropy(model.head(torch.cat([fa, fv], 1)), y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    k = bal.apply()
    ref = OGMGE(alpha=0.5)
    ref.update(linear_head_slices(model.head, [fa.detach(), fv.detach()]), y)
    kk = ref.coefficients(0)
    assert k == {"audio": pytest.approx(kk[0].item()), "video": pytest.approx(kk[1].item())}
    assert min(k.values()) < 1.0 == max(k.values())  # exactly the dominant modality is slowed
    for n, p in model.named_parameters():
        if n.startswith("audio"):
            torch.testing.assert_close(p.grad, before[n] * k["audio"])
        elif n.startswith("video"):
            torch.testing.assert_close(p.grad, before[n] * k["video"])
    torch.testing.assert_close(model.head.weight.grad[:, :5], before["head.weight"][:, :5] * k["audio"])
    torch.testing.assert_close(model.head.weight.grad[:, 5:], before["head.weight"][:, 5:] * k["video"])
    torch.testing.assert_close(model.head.bias.grad, before["head.bias"])
    assert bal.step == 1


def test_balancer_noise_is_the_seeded_draw_with_the_pre_modulation_std():
    model = TwoModal()
    xa, xv, y = _data()
    bal = ModalityBalancer(OGMGE(alpha=0.5, noise=True),
                           {"audio": model.audio.parameters(), "video": model.video.parameters()}, seed=7)
    fa, fv = model.features(xa, xv)
    bal.update(linear_head_slices(model.head, [fa, fv]), y)
    torch.nn.functional.cross_entropy(model.head(torch.cat([fa, fv], 1)), y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    k = bal.apply()
    for i, name in enumerate(("audio", "video")):
        gen = noise_generator(7 * 131 + i, 0, torch.device("cpu"))
        for n, p in getattr(model, name).named_parameters():
            g0 = before[f"{name}.{n}"]
            noise = torch.randn(g0.shape, generator=gen) * g0.std()
            torch.testing.assert_close(p.grad, g0 * k[name] + noise)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 5000), mean=st.floats(-30, 30), scale=st.floats(1e-6, 1e3), seed=st.integers(0, 2 ** 16))
def test_gradient_stds_match_a_float64_std(n, mean, scale, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.zeros(n))
    p.grad = ((torch.randn(n, generator=g, dtype=torch.float64) + mean) * scale).float()
    ref = p.grad.double().std()
    got = gradient_stds([p])[id(p)]
    assert got.dtype == torch.float32 and got.ndim == 0
    # sum and sum of squares in float32: the variance is off by at most ~1e-5 of the second moment
    second_moment = p.grad.double().pow(2).mean()
    assert abs(got.double() ** 2 - ref ** 2) <= 1e-5 * second_moment


def test_gradient_stds_skip_missing_and_single_entries_and_stay_finite_on_constants():
    a, b, c, d = (torch.nn.Parameter(torch.zeros(s)) for s in (3, 1, 4, 1000))
    a.grad, b.grad, d.grad = torch.tensor([1.0, 2.0, 4.0]), torch.ones(1), torch.full((1000,), 0.37)
    out = gradient_stds([a, b, c, d])
    assert set(out) == {id(a), id(d)}  # b has one entry, c no gradient
    torch.testing.assert_close(out[id(a)], torch.tensor([1.0, 2.0, 4.0]).std())
    assert torch.isfinite(out[id(d)]) and 0 <= out[id(d)] <= 1e-3 * 0.37
    assert gradient_std(b) is None and gradient_std(c) is None
    torch.testing.assert_close(gradient_std(a), out[id(a)])


def test_surgery_helpers_write_combined_gradients():
    model = TwoModal(c=2)
    xa, xv, y = _data()
    uni_a, uni_v = torch.nn.Linear(5, 2), torch.nn.Linear(5, 2)
    fa, fv = model.features(xa, xv)
    ce = torch.nn.functional.cross_entropy
    loss_mm = ce(model.head(torch.cat([fa, fv], 1)), y)
    losses = {"audio": ce(uni_a(fa), y), "video": ce(uni_v(fv), y)}
    groups = {"audio": list(model.audio.parameters()), "video": list(model.video.parameters())}
    shared = list(model.head.parameters()) + list(uni_a.parameters()) + list(uni_v.parameters())
    g_mm = torch.autograd.grad(loss_mm, groups["audio"], retain_graph=True)
    g_a = torch.autograd.grad(losses["audio"], groups["audio"], retain_graph=True)
    weights = mmpareto_backward(MMPareto(), loss_mm, losses, groups, shared)
    expected, w = MMPareto().combine(list(g_mm), list(g_a))
    assert weights["audio"] == w
    for p, e in zip(groups["audio"], expected):
        torch.testing.assert_close(p.grad, e)
    assert uni_a.weight.grad is not None and model.head.weight.grad is not None
    # BalGrad
    for p in model.parameters():
        p.grad = None
    fa, fv = model.features(xa, xv)
    logits = [uni_a(fa), uni_v(fv)]
    task = ce(model.head(torch.cat([fa, fv], 1)), y)
    out = balgrad_backward(BalGrad(), task, logits, y, groups, list(model.head.parameters()))
    assert set(out) == {"audio", "video"}
    assert all(torch.isfinite(p.grad).all() for p in groups["video"])


def _shortcut_run(method: str, seed: int = 0, epochs: int = 10):
    """Train the two-tower model of the shortcut benchmark (joint or MMPareto); return (broken acc, B-probe acc)."""
    from fairret.lightning.examples import shortcut_data

    torch.manual_seed(seed)
    enc_a = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU())
    enc_b = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU())
    head, uni_a, uni_b = torch.nn.Linear(64, 2), torch.nn.Linear(32, 2), torch.nn.Linear(32, 2)
    modules = [enc_a, enc_b, head, uni_a, uni_b]
    opt = torch.optim.SGD([p for m in modules for p in m.parameters()], lr=0.05, momentum=0.9)
    groups = {"a": list(enc_a.parameters()), "b": list(enc_b.parameters())}
    shared = [p for m in (head, uni_a, uni_b) for p in m.parameters()]
    ce = torch.nn.functional.cross_entropy
    a, b, y = shortcut_data(4000, seed)
    for _ in range(epochs):
        perm = torch.randperm(4000)
        for i in range(0, 4000, 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            fa, fb = enc_a(a[idx]), enc_b(b[idx])
            loss = ce(head(torch.cat([fa, fb], 1)), y[idx])
            if method == "joint":
                loss.backward()
            else:
                mmpareto_backward(MMPareto(), loss, {"a": ce(uni_a(fa), y[idx]), "b": ce(uni_b(fb), y[idx])}, groups,
                                  shared)
            opt.step()
    ab, bb, yb = shortcut_data(4000, seed + 600, broken=True)
    with torch.no_grad():
        broken = (head(torch.cat([enc_a(ab), enc_b(bb)], 1)).argmax(1) == yb).float().mean().item()
        # B's information in the learned features: nearest class mean of the B features, means from training rows
        f, ft = enc_b(b), enc_b(bb)
        mu = torch.stack([f[y == c].mean(0) for c in (0, 1)])
        probe = (torch.cdist(ft, mu).argmin(1) == yb).float().mean().item()
    return broken, probe


@pytest.mark.parametrize("seed", [0, 1])
def test_mmpareto_fixes_the_under_fitted_weak_modality_of_the_shortcut_task(seed):
    """The benchmark's claim in small: joint training fits the shortcut and under-fits B; MMPareto learns B's
    features and follows B when the shortcut is broken (about +20 points after 10 epochs)."""
    broken_joint, probe_joint = _shortcut_run("joint", seed)
    broken_mmp, probe_mmp = _shortcut_run("MMPareto", seed)
    assert broken_mmp > broken_joint + 0.10
    assert probe_mmp > probe_joint


# --- the Lightning callback ------------------------------------------------------------------------------------------------
pl = pytest.importorskip("lightning.pytorch")


from fairret.lightning import ModalityBalance  # noqa: E402
from lightning_helpers import ModalityRecorder, MultiModal, multimodal_loader, precisions  # noqa: E402


def _cb(noise=False, **kw):
    return ModalityBalance(OGMGE(alpha=0.5, noise=noise), encoders={"audio": "audio", "video": "video"},
                           head="head", widths={"audio": 5, "video": 5}, labels=2, **kw)


def _fit(callbacks, **kw):
    base = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                accelerator="cpu", devices=1, max_steps=2)
    base.update(kw)
    model = MultiModal()
    t = pl.Trainer(callbacks=callbacks, **base)
    t.fit(model, multimodal_loader())
    return model, t


PRECISIONS = precisions()


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("accumulate", [1, 2])
def test_callback_scales_the_unscaled_step_gradients(precision, accumulate):
    """Gradients after the callback = gradients before it (unscaled, accumulated) times k_m, with k_m computed
    independently from the head inputs of every micro-batch of the step."""
    before, after = ModalityRecorder(), ModalityRecorder(record_inputs=False)
    cb = _cb()
    _fit([before, cb, after], accumulate_grad_batches=accumulate, **PRECISIONS[precision])
    assert len(before.grads) == len(after.grads) == 2
    for step in range(2):
        head = torch.nn.Linear(10, 2)
        with torch.no_grad():
            head.weight.copy_(before.heads[step][0])
            head.bias.copy_(before.heads[step][1])
        assert len(before.inputs[step]) == accumulate
        ref = OGMGE(alpha=0.5)
        for feats, y in before.inputs[step]:
            ref.update(linear_head_slices(head, [feats[:, :5], feats[:, 5:]]), y)
        k = ref.coefficients(0)
        g0, g1 = before.grads[step], after.grads[step]
        for n in g0:
            if n.startswith("audio"):
                torch.testing.assert_close(g1[n], g0[n] * k[0].item(), rtol=1e-5, atol=1e-7)
            elif n.startswith("video"):
                torch.testing.assert_close(g1[n], g0[n] * k[1].item(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g1["head.weight"][:, :5], g0["head.weight"][:, :5] * k[0].item(),
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g1["head.weight"][:, 5:], g0["head.weight"][:, 5:] * k[1].item(),
                                   rtol=1e-5, atol=1e-7)
    assert min(k.tolist()) < 1.0  # the modulation acted (on the dominant modality)


@pytest.mark.distributed
def test_callback_under_ddp_keeps_replicas_identical(tmp_path):
    rec = ModalityRecorder(outdir=str(tmp_path), record_inputs=False)
    t = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=4, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[_cb(noise=True), rec])
    t.fit(MultiModal(), multimodal_loader(n=128, batch_size=16))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for n in r0["params"]:
        assert torch.equal(r0["params"][n], r1["params"][n]), n
    assert len(r0["grads"]) == 4
    for a, b in zip(r0["grads"], r1["grads"]):
        for n in a:
            assert torch.equal(a[n], b[n])


def test_callback_checkpoint_resume_continues_exactly(tmp_path):
    def cb():
        return ModalityBalance(AGM(alpha=0.5), encoders={"audio": "audio", "video": "video"},
                               scores_attr="contributions", labels=2)

    def trainer(callbacks, epochs):
        return pl.Trainer(callbacks=callbacks, max_epochs=epochs, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)

    straight_cb, straight = cb(), MultiModal()
    trainer([straight_cb], 2).fit(straight, multimodal_loader())
    first_cb, first = cb(), MultiModal()
    t1 = trainer([first_cb], 1)
    t1.fit(first, multimodal_loader())
    t1.save_checkpoint(tmp_path / "e1.ckpt")
    resumed_cb, resumed = cb(), MultiModal()
    trainer([resumed_cb], 2).fit(resumed, multimodal_loader(), ckpt_path=str(tmp_path / "e1.ckpt"))
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert resumed_cb.balancer.step == straight_cb.balancer.step == 8
    torch.testing.assert_close(resumed_cb.balancer.rule.running, straight_cb.balancer.rule.running, rtol=0, atol=0)
    assert straight_cb.balancer.last_coefficients["audio"] != 1.0


def test_callback_configuration_errors():
    with pytest.raises(TypeError, match="OGMGE or AGM"):
        ModalityBalance(MMPareto(), encoders={"a": "a", "b": "b"}, head="h", widths={"a": 1, "b": 1})
    with pytest.raises(ValueError, match="exactly one source of statistics"):
        ModalityBalance(OGMGE(), encoders={"a": "a", "b": "b"})
    with pytest.raises(ValueError, match="`widths` must give the head's input width"):
        ModalityBalance(OGMGE(), encoders={"a": "a", "b": "b"}, head="h", widths={"a": 1})
    bad = ModalityBalance(OGMGE(), encoders={"audio": "audio", "video": "vision"}, head="head",
                          widths={"audio": 5, "video": 5}, labels=2)
    with pytest.raises(ValueError, match=r"`encoders\['video'\]`='vision' names no submodule"):
        _fit([bad])
    wrong = ModalityBalance(OGMGE(), encoders={"audio": "audio", "video": "video"}, head="head",
                            widths={"audio": 4, "video": 5}, labels=2)
    with pytest.raises(ValueError, match="adds up to 9, but the head takes 10"):
        _fit([wrong])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "callbacks").glob("modality*.yaml")),
                         ids=lambda p: p.stem)
def test_modality_yaml_runs_with_lightning_cli(path, tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from fairret.lightning.examples import ShortcutDataModule, TwoTowerClassifier

    cli = LightningCLI(TwoTowerClassifier, ShortcutDataModule, save_config_callback=None,
                       args=["fit", "--config", str(path), "--data.n=512", "--trainer.max_epochs=1",
                             "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, ModalityBalance))
    assert cb.balancer.step == cli.trainer.global_step == 8
    assert "train/modality/k_audio" in cli.trainer.callback_metrics

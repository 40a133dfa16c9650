"""GPTQ core and Fair-GPTQ shift against a float64 re-derivation and closed forms; GPTQ-v1 packing round trips."""
from __future__ import annotations

import math

import pytest
import torch

from fairret.quant import (HessianAccumulator, Quantizer, fair_gptq_quantize, fair_objective, fair_shift,
                           gptq_quantize)


def reference_gptq(W, H, bits, group_size, sym, act_order, static_groups, damp):
    """Column-by-column GPTQ without lazy blocks, written from the algorithm's statement (float64)."""
    q = Quantizer(bits, sym)
    W, H = W.double().clone(), H.double().clone()
    d_out, d_in = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H = H + damp * torch.diag(H).mean() * torch.eye(d_in, dtype=torch.float64)
    gs = d_in if group_size == -1 else group_size
    static = {g: q.params(W[:, g * gs:(g + 1) * gs]) for g in range(math.ceil(d_in / gs))}
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(d_in)
    W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    Q = torch.zeros_like(W)
    for i in range(d_in):
        if act_order and static_groups:
            scale, zero = static[int(perm[i]) // gs]
        elif i % gs == 0:
            scale, zero = q.params(W[:, i:i + gs])
        Q[:, i] = q.quantize(W[:, i:i + 1], scale, zero).squeeze(1)
        err = (W[:, i] - Q[:, i]) / U[i, i]
        W[:, i:] -= torch.outer(err, U[i, i:])
    return Q[:, torch.argsort(perm)]


def _layer(d_out=6, d_in=40, n=300, seed=0, dead=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, d_in, dtype=torch.float64)
    if dead:
        X[:, 5] = 0.0
    acc = HessianAccumulator(d_in)
    acc.add(X[:100])
    acc.add(X[100:])
    return W, acc.H, X


def test_quantizer_by_hand():
    w = torch.tensor([[-1.0, 0.5, 2.0], [0.25, 0.5, 1.0]], dtype=torch.float64)
    q = Quantizer(bits=2)
    scale, zero = q.params(w)
    # row 1 is all >= 0: zero 0 is not storable in GPTQ-v1, so zero 1 and scale max / (2^b - 2) instead of 1/3
    torch.testing.assert_close(scale.squeeze(1), torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(zero.squeeze(1), torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(q.codes(w, scale, zero), torch.tensor([[0.0, 1.0, 3.0], [1.0, 2.0, 3.0]],  # half to even
                                                                      dtype=torch.float64))
    s, z = Quantizer(bits=4, sym=True).params(w)
    assert z.flatten().tolist() == [8.0, 8.0] and s[0].item() == pytest.approx(4.0 / 15)
    with pytest.raises(ValueError, match="`bits` to be an int in \\[2, 8\\]"):
        Quantizer(bits=9)


def test_hessian_running_mean_and_mask():
    X = torch.randn(50, 4, dtype=torch.float64)
    acc = HessianAccumulator(4)
    acc.add(X[:20])
    acc.add(X[20:], mask=torch.ones(30, dtype=torch.bool))
    torch.testing.assert_close(acc.H, 2.0 / 50 * X.T @ X)
    m = HessianAccumulator(4)
    keep = torch.arange(50) % 3 != 0
    m.add(X, mask=keep)
    torch.testing.assert_close(m.H, 2.0 / keep.sum() * X[keep].T @ X[keep])


def test_inverse_cholesky_upper_without_the_inverse():
    from fairret.quant.gptq import _inverse_cholesky_upper

    W, H, _ = _layer(dead=False)
    H = H + 0.01 * H.diag().mean() * torch.eye(40, dtype=torch.float64)
    U = _inverse_cholesky_upper(H, 0.0)
    assert torch.equal(U, torch.triu(U)) and (U.diag() > 0).all()
    # the unique upper factor with a positive diagonal, against the inverse formed explicitly
    torch.testing.assert_close(U, torch.linalg.cholesky(torch.linalg.inv(H), upper=True), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(U.T @ U @ H, torch.eye(40, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("group_size", [-1, 8, 12])
@pytest.mark.parametrize("act_order,static_groups", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("bits,sym", [(4, False), (3, True), (2, False)])
def test_gptq_equals_float64_rederivation(group_size, act_order, static_groups, bits, sym):
    W, H, _ = _layer()
    res = gptq_quantize(W, H, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                        static_groups=static_groups, block_size=16)
    ref = reference_gptq(W, H, bits, group_size, sym, act_order, static_groups, 0.01)
    # equal up to rounding; the lazy-block order of floating-point operations may flip a near-tie to the adjacent
    # code, which then propagates through the error updates of that row: allow that for at most one row
    close = torch.isclose(res.weight, ref, rtol=1e-9, atol=1e-9)
    assert close.float().mean() > 0.97
    assert (~close).any(1).sum() <= 1
    # codes, scales and zeros describe the same weights
    g = res.g_idx.long()
    deq = res.scales[:, g] * (res.qweight.double() - res.zeros[:, g])
    torch.testing.assert_close(deq, res.weight, rtol=1e-12, atol=1e-12)
    assert res.qweight.min() >= 0 and res.qweight.max() <= 2 ** bits - 1
    assert torch.all(res.weight[:, 5] == 0)  # the dead column
    if group_size > 0 and not (act_order and not static_groups):
        assert torch.equal(res.g_idx.long(), torch.arange(40) // group_size)


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(8, 32, generator=g, dtype=torch.float64)
    X = torch.randn(400, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 32, generator=g, dtype=torch.float64)
    X = X + 0.1 * torch.randn(400, 32, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(32)
    acc.add(X)
    res = gptq_quantize(W, acc.H, bits=3, group_size=-1)
    q = Quantizer(3)
    s, z = q.params(W)
    rtn = q.quantize(W, s, z)
    assert ((W - res.weight) @ X.T).norm() < 0.5 * ((W - rtn) @ X.T).norm()


def test_alpha_zero_is_plain_gptq_and_shift_minimises_the_penalised_objective():
    W, H, X = _layer(dead=False)
    g = torch.Generator().manual_seed(3)
    X0, X1 = torch.randn(80, 40, generator=g, dtype=torch.float64), torch.randn(80, 40, generator=g,
                                                                                 dtype=torch.float64)
    hd = HessianAccumulator(40)
    hd.add(X0 - X1)
    plain = gptq_quantize(W, H, bits=4, group_size=8, act_order=True, static_groups=True)
    fair0 = fair_gptq_quantize(W, H, hd.H, 0.0, bits=4, group_size=8, act_order=True, static_groups=True)
    assert torch.equal(plain.weight, fair0.weight) and torch.equal(plain.qweight, fair0.qweight)
    alpha = 0.5
    Ws = fair_shift(W, H, hd.H, alpha, damp=0.0, compute_dtype=torch.float64)
    best = fair_objective(Ws, W, H, hd.H, alpha)
    for k in range(20):
        dW = torch.randn(W.shape, generator=g, dtype=torch.float64) * (10.0 ** (-k % 4))
        assert fair_objective(Ws + dW, W, H, hd.H, alpha) >= best
    # the first-order variant agrees to O(alpha^2): halving alpha quarters the difference
    def gap(a):
        return (fair_shift(W, H, hd.H, a, first_order=True, damp=0.0, compute_dtype=torch.float64)
                - fair_shift(W, H, hd.H, a, damp=0.0, compute_dtype=torch.float64)).norm()

    assert 3.5 < gap(1e-4) / gap(5e-5) < 4.5
    # the shift lowers the group-bias term
    assert (Ws @ (X0 - X1).T).norm() < (W @ (X0 - X1).T).norm()
    # the closed form against an independent float64 solve; the default float32 correction agrees closely
    Hd = H + 0.01 * H.diag().mean() * torch.eye(40, dtype=torch.float64)
    ref = W @ Hd @ torch.linalg.inv(Hd + alpha * hd.H)
    torch.testing.assert_close(fair_shift(W, H, hd.H, alpha, compute_dtype=torch.float64), ref, rtol=1e-9, atol=1e-10)
    ref1 = W - alpha * W @ hd.H @ torch.linalg.inv(Hd)
    torch.testing.assert_close(fair_shift(W, H, hd.H, alpha, first_order=True, compute_dtype=torch.float64), ref1,
                               rtol=1e-9, atol=1e-10)
    f32 = fair_shift(W, H, hd.H, alpha)
    assert f32.dtype == torch.float64
    assert (f32 - ref).abs().max() < 1e-5 * W.abs().max()


def test_fair_shift_falls_back_to_float64_when_float32_factorisation_fails():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    eig = torch.ones(12, dtype=torch.float64)
    eig[-3:] = 1e-12  # three near-null directions: positive definite in float64, not after rounding to float32
    H = Q @ torch.diag(eig) @ Q.T
    D = torch.randn(3, 12, generator=g, dtype=torch.float64)
    H_delta = D.T @ D * 1e-14  # positive semi-definite, too small to lift them
    assert torch.linalg.cholesky_ex((H + 0.1 * H_delta).float())[1] > 0  # the float32 path does fail here
    W = torch.randn(4, 12, generator=g, dtype=torch.float64)
    got = fair_shift(W, H, H_delta, 0.1, damp=0.0)
    assert torch.isfinite(got).all()
    assert torch.equal(got, fair_shift(W, H, H_delta, 0.1, damp=0.0, compute_dtype=torch.float64))
    assert not torch.equal(got, W)  # a correction was applied


def test_bad_arguments():
    W, H, _ = _layer()
    with pytest.raises(ValueError, match="`group_size` to be -1 or a positive int"):
        gptq_quantize(W, H, group_size=0)
    with pytest.raises(ValueError, match="Expected `W` \\(d_out, d_in\\) and `H` \\(d_in, d_in\\)"):
        gptq_quantize(W, H[:3, :3])
    with pytest.raises(ValueError, match="`alpha` to be a finite number >= 0"):
        fair_shift(W, H, H, -1.0)
    with pytest.raises(ValueError, match="`compute_dtype` to be torch.float32 or torch.float64"):
        fair_shift(W, H, H, 0.1, compute_dtype=torch.float16)
    with pytest.raises(ValueError, match="not positive definite"):
        fair_shift(W, H, -10.0 * H, 1.0)


# --- GPTQ-v1 tensors (the readers of other tools: tests/test_quant_interop.py) ----------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    from fairret.quant.export import QuantLinear, pack_layer, unpack_layer

    W, H, _ = _layer(d_out=64, d_in=64)
    res = gptq_quantize(W, H, bits=bits, group_size=16, act_order=True)
    packed = pack_layer(res)
    assert packed["qweight"].shape == (64 * bits // 32, 64) and packed["qweight"].dtype == torch.int32
    assert packed["qzeros"].shape == (4, 64 * bits // 32) and packed["scales"].shape == (4, 64)
    codes, zeros, scales, g_idx = unpack_layer(packed, bits)
    assert torch.equal(codes, res.qweight) and torch.equal(g_idx, res.g_idx)
    assert torch.equal(zeros.long(), res.zeros.round().long())
    assert torch.equal(scales, res.scales.to(torch.float16))
    lin = QuantLinear(packed, bits)
    expected = res.scales.to(torch.float16).float()[:, res.g_idx.long()] * (
        res.qweight.float() - res.zeros.float()[:, res.g_idx.long()])
    torch.testing.assert_close(lin.weight, expected, rtol=0, atol=0)


def test_export_refuses_unpackable_bits():
    from fairret.quant.export import pack_layer

    W, H, _ = _layer()
    with pytest.raises(ValueError, match="GPTQ-v1 checkpoints hold \\(2, 3, 4, 8\\)-bit codes, not 5"):
        pack_layer(gptq_quantize(W, H, bits=5))
    # 3-bit codes fill whole 32-bit words 32 at a time: d_in = 40 (and d_out = 6) cannot be packed
    with pytest.raises(ValueError, match=r"at 3 bits GPTQ-v1 packs each dimension in whole 32-bit words \(a multiple "
                                         r"of 32 codes\), but d_in = 40 and d_out = 6"):
        pack_layer(gptq_quantize(W, H, bits=3))


# --- pairs ---------------------------------------------------------------------------------------------------------------
def test_pair_delta_uses_only_positions_real_in_both():
    from fairret.quant.pairs import PairDeltaAccumulator

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    m0 = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    m1 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    acc = PairDeltaAccumulator(3)
    acc.add(x0, x1, m0, m1)
    keep = (m0 & m1).bool()
    d = (x0 - x1)[keep].double()
    assert acc.n == 5
    torch.testing.assert_close(acc.H, 2.0 / 5 * d.T @ d)
    # padded positions never enter: changing them changes nothing
    x0b = x0.clone()
    x0b[~keep] = 1e6
    acc2 = PairDeltaAccumulator(3)
    acc2.add(x0b, x1, m0, m1)
    torch.testing.assert_close(acc2.H, acc.H)


def test_token_alignment_pairs_corresponding_tokens_and_spans():
    from fairret.quant.pairs import PairDeltaAccumulator, align_pairs

    # pair 0: same length, one differing token at 2; pair 1: a 2-token word against a 1-token word, right padding;
    # pair 2: left padding on one side only
    ids0 = torch.tensor([[1, 5, 7, 9, 2, 0], [1, 5, 8, 8, 9, 2], [0, 1, 4, 6, 2, 0]])
    ids1 = torch.tensor([[1, 5, 3, 9, 2, 0], [1, 5, 3, 9, 2, 0], [1, 4, 7, 2, 0, 0]])
    m0 = (ids0 != 0).long()
    m1 = (ids1 != 0).long()
    aligned, spans = align_pairs(ids0, ids1, m0, m1)
    got = sorted(map(tuple, aligned.tolist()))
    want = sorted([(0, 0, 0), (0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4),
                   (1, 0, 0), (1, 1, 1), (1, 4, 3), (1, 5, 4),
                   (2, 1, 0), (2, 2, 1), (2, 3, 2), (2, 4, 3)])
    assert got == want
    assert spans.tolist() == [[1, 2, 4, 2, 3]]
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    acc = PairDeltaAccumulator(4)
    acc.add_aligned(x0, x1, aligned, spans)
    rows = [x0[b, t0] - x1[b, t1] for b, t0, t1 in aligned.tolist()] + [x0[1, 2:4].mean(0) - x1[1, 2:3].mean(0)]
    d = torch.stack(rows).double()
    assert acc.n == 14
    torch.testing.assert_close(acc.H, 2.0 / 14 * d.T @ d)
    with pytest.raises(ValueError, match="of one shape \\(B, T\\)"):
        align_pairs(ids0, ids1[:2])
    with pytest.raises(ValueError, match="No aligned position or differing span"):
        acc.add_aligned(x0, x1, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long))


@pytest.mark.parametrize("with_alignment", [True, False])
def test_pair_hessians_equal_separate_h_and_h_delta(with_alignment):
    """The shared sum of the differences' outer products gives the H of every real token and the H_delta of the
    pairs, including unaligned span tokens, padding, unpaired rows, a second batch and a batch without pairs."""
    from fairret.quant.pairs import PairDeltaAccumulator, PairHessians, align_pairs

    g = torch.Generator().manual_seed(3)
    ids0 = torch.tensor([[1, 5, 7, 9, 2, 0], [1, 5, 8, 8, 9, 2]])
    ids1 = torch.tensor([[1, 5, 3, 9, 2, 0], [1, 5, 3, 9, 2, 0]])
    extra = torch.tensor([[1, 6, 6, 2, 0, 0]])  # an unpaired sentence in the same batch
    mask = torch.cat([ids0, ids1, extra]).ne(0)
    aligned, spans = align_pairs(ids0, ids1, mask[:2], mask[2:4]) if with_alignment else (None, None)
    acc = PairHessians(4)
    assert acc.H.abs().sum() == 0 and acc.H_delta.abs().sum() == 0
    h_ref, hd_ref = HessianAccumulator(4), PairDeltaAccumulator(4)
    xs = []
    for _ in range(2):
        x = 3 * torch.randn(5, 6, 4, generator=g) + 1
        xs.append(x)
        acc.add_batch(x, mask, 2, aligned, spans)
        h_ref.add(x, mask)
        if with_alignment:
            hd_ref.add_aligned(x[:2], x[2:4], aligned, spans)
        else:
            hd_ref.add(x[:2], x[2:4], mask[:2], mask[2:4])
        assert acc.n == h_ref.n
    x = torch.randn(5, 6, 4, generator=g)
    acc.add(x, mask)
    h_ref.add(x, mask)
    torch.testing.assert_close(acc.H, h_ref.H, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.H_delta, hd_ref.H, rtol=1e-12, atol=1e-12)
    assert acc.n == 3 * mask.sum().item()
    # a float64 brute force of both statistics, independent of the accumulators
    real = torch.cat([xb.double()[mask] for xb in xs + [x]])
    torch.testing.assert_close(acc.H, 2.0 / len(real) * real.T @ real, rtol=1e-12, atol=1e-12)
    if not with_alignment:
        both = mask[:2] & mask[2:4]
        dlt = torch.cat([(xb[:2].double() - xb[2:4].double())[both] for xb in xs])
        torch.testing.assert_close(acc.H_delta, 2.0 / len(dlt) * dlt.T @ dlt, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="2 \\* pairs <= B"):
        acc.add_batch(x, mask, 3)
    with pytest.raises(ValueError, match="`mask` \\(B, T\\)"):
        acc.add_batch(x, mask[:, :4], 2)
    if with_alignment:
        with pytest.raises(ValueError, match="`aligned` to pair real tokens only"):
            acc.add_batch(x, mask, 2, torch.tensor([[0, 5, 5]]), spans)


def test_bad_pairs_give_clear_errors():
    from fairret.quant.pairs import PairDeltaAccumulator, SentencePair, check_pairs, split_pairs

    assert check_pairs([("a man cried", "a woman cried", "gender")])[0] == SentencePair("a man cried",
                                                                                         "a woman cried", "gender")
    with pytest.raises(ValueError, match="at least one .* pair, but got none"):
        check_pairs([])
    with pytest.raises(ValueError, match="Pair 1 has an empty or non-string anti_stereotype"):
        check_pairs([("x", "y"), ("x", "  ")])
    with pytest.raises(ValueError, match="Pair 0 has identical sentences"):
        check_pairs([("same", "same")])
    with pytest.raises(ValueError, match="Pair 0 must be a SentencePair"):
        check_pairs(["just one sentence"])
    acc = PairDeltaAccumulator(3)
    with pytest.raises(ValueError, match="same shape \\(pad both to one length\\)"):
        acc.add(torch.zeros(2, 5, 3), torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="same shape"):  # an unpaired batch: different numbers of sentences
        acc.add(torch.zeros(3, 5, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="No position is a real token in both"):
        acc.add(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.tensor([[1, 0]]), torch.tensor([[0, 1]]))
    cal, ev = split_pairs([(f"s{i}", f"a{i}") for i in range(10)], 0.5, seed=1)
    assert len(cal) == len(ev) == 5 and not set(cal) & set(ev)

